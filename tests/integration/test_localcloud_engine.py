"""How the local cloud runs moto's Step Functions engine: what it changes must not change what an execution does."""

import json
import uuid

import pytest


def _definition() -> str:
    # A definition no other test uses, so nothing parsed it before this test
    return json.dumps({"Comment": uuid.uuid4().hex, "StartAt": "Echo",
                       "States": {"Echo": {"Type": "Pass", "End": True}}})


def test_a_definition_is_parsed_once_and_each_execution_gets_components_of_its_own(cloud):
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    # Given a definition parsed once
    definition = _definition()
    program, tree = AmazonStateLanguageParser.parse(definition)

    # When it is parsed again
    again, same_tree = AmazonStateLanguageParser.parse(definition)

    # Then the syntax tree is kept, but the evaluation components (which hold an execution's state) are new
    assert same_tree is tree
    assert again is not program
    assert type(again) is type(program)


def test_a_definition_that_does_not_parse_is_refused_every_time(cloud):
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser, ASLParserException

    broken = _definition()[:-3]
    for _ in range(2):
        with pytest.raises(ASLParserException):
            AmazonStateLanguageParser.parse(broken)


def test_executions_of_one_kept_definition_run_at_once_with_their_own_input(cloud):
    # Given a state machine whose definition the engine parses once
    sfn = cloud.client("stepfunctions")
    arn = sfn.create_state_machine(name=f"echo-{uuid.uuid4().hex[:8]}", definition=_definition(),
                                   roleArn=f"arn:aws:iam::{'1' * 12}:role/echo", type="STANDARD")["stateMachineArn"]

    # When several executions start together
    runs = {n: sfn.start_execution(stateMachineArn=arn, name=f"run-{n}", input=json.dumps({"n": n}))["executionArn"]
            for n in range(8)}

    # Then each ends with its own input
    for n, execution in runs.items():
        result = cloud.wait_execution(execution, 30)
        assert result["status"] == "SUCCEEDED", result
        assert json.loads(result["output"]) == {"n": n}
