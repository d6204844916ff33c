"""How the local cloud runs moto's Step Functions engine: what it changes must not change what an execution does."""

import json
import uuid

from moto.stepfunctions.parser.asl.antlr.runtime.ASLParser import ASLParser
from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser


def _definition(states: dict | None = None, start: str = "Echo") -> str:
    # A definition no other test uses, so nothing parsed it before this test
    return json.dumps({"Comment": uuid.uuid4().hex, "StartAt": start,
                       "States": states or {"Echo": {"Type": "Pass", "End": True}}})


def test_a_definition_is_parsed_once_and_each_execution_gets_components_of_its_own(cloud):
    # Given a definition parsed once
    definition = _definition()
    program, tree = AmazonStateLanguageParser.parse(definition)

    # When it is parsed again
    again, same_tree = AmazonStateLanguageParser.parse(definition)

    # Then the syntax tree is kept, but the evaluation components (which hold an execution's state) are new
    assert same_tree is tree
    assert again is not program
    assert type(again) is type(program)


def test_executions_of_a_kept_definition_run_at_once_each_with_its_own_items(cloud, monkeypatch):
    # Given a state machine with a Map whose iterations wait a second (so executions overlap), created once
    sfn = cloud.client("stepfunctions")
    definition = _definition({"Each": {
        "Type": "Map", "ItemsPath": "$.items", "End": True,
        "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}, "StartAt": "Hold", "States": {
            "Hold": {"Type": "Wait", "Seconds": 1, "Next": "Echo"},
            "Echo": {"Type": "Pass", "End": True}}}}}, start="Each")
    arn = sfn.create_state_machine(name=f"echo-{uuid.uuid4().hex[:8]}", definition=definition,
                                   roleArn=f"arn:aws:iam::{'1' * 12}:role/echo", type="STANDARD")["stateMachineArn"]
    parses = []
    parse = ASLParser.state_machine
    monkeypatch.setattr(ASLParser, "state_machine", lambda self: parses.append(1) or parse(self))

    # When eight executions start together
    runs = {n: sfn.start_execution(stateMachineArn=arn, name=f"run-{n}",
                                   input=json.dumps({"items": [n, 10 * n, 100 * n]}))["executionArn"]
            for n in range(8)}

    # Then each ends with its own items, in order, and none of them parsed the definition again
    for n, execution in runs.items():
        result = cloud.wait_execution(execution, 60)
        assert result["status"] == "SUCCEEDED", result
        assert json.loads(result["output"]) == [n, 10 * n, 100 * n]
    assert parses == []
