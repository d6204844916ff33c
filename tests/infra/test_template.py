"""The template and the state machine as AWS will read them: SAM's own validator and build, cfn-lint with
serverless rules, a State Language linter on the substituted ASL, and the properties the design relies on."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localcloud import template as cfn

ROOT = Path(__file__).resolve().parents[2]
SAM_BIN = Path(os.environ.get("SAM_VENV", ROOT / ".venv-sam")) / "bin"


def _tool(name):
    path = SAM_BIN / name
    assert path.exists(), f"{path} is missing: run `make setup` (SAM CLI lives in its own venv, it pins boto3)"
    return str(path)


def _run(*args, timeout=600):
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def template():
    loaded = cfn.load(ROOT / "template.yaml")
    for logical_id, resource in loaded.body["Resources"].items():
        arn = f"arn:aws:lambda:us-east-1:123456789012:function:{logical_id}"
        loaded.physical[logical_id] = {"Ref": logical_id, "Arn": arn}
    return loaded


def test_sam_validates_the_template_with_lint():
    result = _run(_tool("sam"), "validate", "--lint", "--template", "template.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_with_serverless_rules_has_no_findings():
    result = _run(_tool("cfn-lint"), "template.yaml", "-a", "cfn_lint_serverless.rules")
    assert result.returncode == 0, result.stdout + result.stderr


def test_sam_builds_every_function_for_arm64(tmp_path):
    result = _run(_tool("sam"), "build", "--build-dir", str(tmp_path / "build"), "--cache-dir",
                  str(tmp_path / "cache"), "--template", "template.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    built = tmp_path / "build" / "SynthesizeFunction"
    library = built / "espeakng_loader" / "libespeak-ng.so"
    assert library.exists()
    assert b"\xb7\x00" == library.read_bytes()[18:20], "libespeak-ng.so is not an aarch64 build"  # e_machine 183


def test_the_state_machine_passes_the_state_language_linter(template, tmp_path):
    machine = template.resolve(template.body["Resources"]["SynthesisStateMachine"]["Properties"])
    definition = (ROOT / machine["DefinitionUri"]).read_text()
    for key, value in machine["DefinitionSubstitutions"].items():
        definition = definition.replace("${" + key + "}", value)
    assert "${" not in definition, "a substitution in the ASL has no value in DefinitionSubstitutions"
    path = tmp_path / "synthesize.json"
    path.write_text(definition)
    statelint = shutil.which("statelint", path=str(Path(sys.executable).parent))
    result = _run(statelint, str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_audio_bucket_is_private_encrypted_for_connect_and_expires_parts(template):
    bucket = template.body["Resources"]["AudioBucket"]["Properties"]
    encryption = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert encryption == {"SSEAlgorithm": "AES256"}  # Connect cannot read AWS-managed-KMS objects
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    rule = bucket["LifecycleConfiguration"]["Rules"][0]
    assert rule["Prefix"] == "streams/" and rule["Status"] == "Enabled"
    assert template.resolve(rule["ExpirationInDays"]) == "1"


def test_the_bucket_policy_denies_plain_http_and_grants_connect_only_its_instance():
    with_instance = cfn.load(ROOT / "template.yaml", {
        "ConnectInstanceArn": "arn:aws:connect:us-east-1:123456789012:instance/11111111-2222-3333-4444-555555555555"})
    with_instance.physical["AudioBucket"] = {"Ref": "bucket", "Arn": "arn:aws:s3:::bucket"}
    statements = with_instance.resolve(
        with_instance.body["Resources"]["AudioBucketPolicy"]["Properties"]["PolicyDocument"])["Statement"]
    deny = next(s for s in statements if s["Sid"] == "DenyInsecureTransport")
    assert deny["Effect"] == "Deny" and deny["Condition"]["Bool"]["aws:SecureTransport"] == "false"
    grant = next(s for s in statements if s["Sid"] == "ConnectPlaysParts")
    assert grant["Principal"] == {"Service": "connect.amazonaws.com"}
    assert grant["Condition"]["ArnEquals"]["aws:SourceArn"].endswith("instance/11111111-2222-3333-4444-555555555555")

    without = cfn.load(ROOT / "template.yaml")
    without.physical["AudioBucket"] = {"Ref": "bucket", "Arn": "arn:aws:s3:::bucket"}
    statements = without.resolve(without.body["Resources"]["AudioBucketPolicy"]["Properties"]["PolicyDocument"])
    assert [s["Sid"] for s in statements["Statement"]] == ["DenyInsecureTransport"]


def test_the_manifest_table_is_on_demand_with_ttl(template):
    table = template.body["Resources"]["ManifestTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


EVERY_OPTION = {
    "ConnectInstanceArn": "arn:aws:connect:us-east-1:123456789012:instance/11111111-2222-3333-4444-555555555555",
    "PromptUrlMode": "presigned",
    "ChatAuthSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:chat-token-AbCdEf",
    "ChatBackend": "bedrock",
    "TtsEngine": "polly",
    "TtsAuthSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:tts-token-AbCdEf",
    "BedrockModelId": "anthropic.claude-3-haiku-20240307-v1:0",
}


@pytest.mark.parametrize("overrides", [{}, EVERY_OPTION], ids=["defaults", "every-option"])
def test_function_policies_name_actions_and_resources_without_wildcards(overrides):
    loaded = cfn.load(ROOT / "template.yaml", overrides)
    for logical_id in loaded.body["Resources"]:
        loaded.physical[logical_id] = {"Ref": logical_id, "Arn": f"arn:aws:x:us-east-1:123456789012:{logical_id}"}
    for logical_id, resource in loaded.resources("AWS::Serverless::Function").items():
        for policy in loaded.resolve(resource["Properties"].get("Policies", [])):
            for statement in policy["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert all("*" not in action for action in actions), logical_id
                if actions == ["polly:SynthesizeSpeech"]:
                    continue  # the one documented exception: SynthesizeSpeech takes no resource but "*"
                resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                assert all(r != "*" and not r.endswith(":*") for r in resources), logical_id


PROFILE = "us.anthropic.claude-3-5-haiku-20241022-v1:0"


@pytest.mark.parametrize("model_id", [EVERY_OPTION["BedrockModelId"], PROFILE], ids=["model", "inference-profile"])
def test_the_chat_function_may_invoke_its_bedrock_model_or_profile_and_other_regions_only_through_it(model_id):
    # Given ChatBackend=bedrock with a foundation model id or a cross-Region inference profile id
    loaded = cfn.load(ROOT / "template.yaml", {**EVERY_OPTION, "BedrockModelId": model_id})
    for logical_id in loaded.body["Resources"]:
        loaded.physical[logical_id] = {"Ref": logical_id, "Arn": f"arn:aws:x:us-east-1:123456789012:{logical_id}"}
    policies = loaded.resolve(loaded.body["Resources"]["ChatFunction"]["Properties"]["Policies"])
    bedrock = [s for p in policies for s in p["Statement"] if s["Action"] == "bedrock:InvokeModel"]
    # Then the function may invoke that id as a model or as a profile in its own Region
    direct, routed = (s for s in bedrock if "Condition" not in s), (s for s in bedrock if "Condition" in s)
    profile_arn = f"arn:aws:bedrock:{cfn.REGION}:{cfn.ACCOUNT_ID}:inference-profile/{model_id}"
    assert next(direct)["Resource"] == [f"arn:aws:bedrock:{cfn.REGION}::foundation-model/{model_id}", profile_arn]
    # and the models the profile routes to, in any Region, only through that profile
    assert next(routed) == {"Effect": "Allow", "Action": "bedrock:InvokeModel",
                            "Resource": "arn:aws:bedrock:*::foundation-model/*",
                            "Condition": {"StringEquals": {"bedrock:InferenceProfileArn": profile_arn}}}
    assert len(bedrock) == 2


def test_the_workflow_does_not_log_the_callers_words_by_default(template):
    logging = template.resolve(template.body["Resources"]["SynthesisStateMachine"]["Properties"]["Logging"])
    assert logging["IncludeExecutionData"] is False
    machine = template.body["Resources"]["SynthesisStateMachine"]["Properties"]
    assert machine["Type"] == "EXPRESS"
    json.loads((ROOT / machine["DefinitionUri"]).read_text())


# botocore's service names where IAM's prefix differs
_IAM_PREFIX = {"stepfunctions": "states", "bedrock-runtime": "bedrock"}


def test_every_aws_call_a_function_made_in_the_test_run_is_allowed_by_its_policy(cloud):
    """localcloud does not enforce IAM, so this checks what it saw: each operation a function called (in
    this session's runs; this test runs after the integration tests) is an action its policy allows."""
    from localcloud import runs

    runs.run_call(cloud, "Policies must allow what the code does. Every call is checked.", speed=50)
    loaded = cfn.load(ROOT / "template.yaml", EVERY_OPTION)
    for logical_id in loaded.body["Resources"]:
        loaded.physical[logical_id] = {"Ref": logical_id, "Arn": f"arn:aws:x:us-east-1:123456789012:{logical_id}"}
    assert cloud.aws_calls.by_function, "no function made an AWS call in this session"
    for logical_id, operations in cloud.aws_calls.by_function.items():
        policies = loaded.resolve(loaded.body["Resources"][logical_id]["Properties"].get("Policies", []))
        allowed = {a for p in policies for st in p["Statement"]
                   for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])}
        needed = {_iam_action(op) for op in operations}
        assert needed <= allowed, f"{logical_id} calls {sorted(needed - allowed)} but its policy does not allow it"
        # An action allowed on one table is not allowed on another: each table a call named must be granted
        tables = {cloud.physical(t): t for t, r in loaded.body["Resources"].items() if r["Type"] == "AWS::DynamoDB::Table"}
        for operation, table in cloud.aws_calls.tables_by_function.get(logical_id, ()):
            arn = loaded.physical[tables[table]]["Arn"]
            assert any(_iam_action(operation) in _listed(st["Action"]) and arn in _listed(st["Resource"])
                       for p in policies for st in p["Statement"]), \
                f"{logical_id} calls {_iam_action(operation)} on {tables[table]} but its policy does not allow it there"


def _iam_action(operation: str) -> str:
    service, name = operation.split(".")
    return f"{_IAM_PREFIX.get(service, service)}:{name}"


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def test_only_the_configured_connect_instance_may_invoke_the_connect_function():
    instance = "arn:aws:connect:us-east-1:123456789012:instance/11111111-2222-3333-4444-555555555555"
    loaded = cfn.load(ROOT / "template.yaml", {"ConnectInstanceArn": instance})
    loaded.physical["ConnectFunction"] = {"Ref": "fn", "Arn": "arn:aws:lambda:us-east-1:123456789012:function:fn"}
    permission = loaded.body["Resources"]["ConnectInvokePermission"]
    resolved = loaded.resolve(permission["Properties"])
    assert resolved["Principal"] == "connect.amazonaws.com" and resolved["SourceArn"] == instance
    assert permission["Condition"] == "HasConnectInstance"
    functions = loaded.resources("AWS::Serverless::Function")
    assert not any("Events" in f["Properties"] for f in functions.values()), "no other trigger may invoke them"


@pytest.mark.parametrize("name, value, says", [
    ("StartWaitMs", "5000", "greater than its MaxValue 3500"),
    ("BatchWaitMs", "100", "less than its MinValue 500"),
    ("StartWaitMs", "soon", "is not a number"),
    ("TtsAuthSecretArn", "ssm:/tts/token", "does not match its AllowedPattern"),
    ("PromptUrlMode", "signed", "is not allowed"),
    ("ManifestTtlHours", "48", "greater than its MaxValue 24"),  # it would hand out parts already deleted
])
def test_the_local_cloud_refuses_a_parameter_value_cloudformation_would_refuse(name, value, says):
    # A value rehearsed with localcloud must not be the one that fails `sam deploy`
    with pytest.raises(ValueError, match=says):
        cfn.load(ROOT / "template.yaml", {name: value})


def test_every_parameters_default_meets_its_own_constraints():
    body = cfn.load(ROOT / "template.yaml").body
    for name, spec in body["Parameters"].items():
        cfn.check_parameter(name, spec, str(spec.get("Default", "")))


def test_the_workflow_alarm_counts_timed_out_executions_too(template):
    # An Express run cut off at 5 minutes reaches no Catch, so no StreamsFailed: only ExecutionsTimedOut sees it
    alarm = template.body["Resources"]["WorkflowFailuresAlarm"]["Properties"]
    watched = {m["MetricStat"]["Metric"]["MetricName"]: m["MetricStat"]["Metric"]["Dimensions"][0]["Value"]
               for m in alarm["Metrics"] if "MetricStat" in m}
    assert set(watched) == {"ExecutionsFailed", "ExecutionsTimedOut"}
    assert all(value == {"Ref": "SynthesisStateMachine"} for value in watched.values())
    total = next(m for m in alarm["Metrics"] if m.get("ReturnData"))
    assert total["Expression"] == "FILL(failed, 0) + FILL(timedOut, 0)"


def test_the_tts_timeouts_cannot_outlast_the_synthesize_function(template):
    # A part the server answers too slowly must end in our RetryableError, which the Map retries at once; a
    # Lambda timeout (Sandbox.Timedout) is retried too, but only after the function's whole timeout
    params = template.body["Parameters"]
    longest_s = (params["TtsConnectTimeoutMs"]["MaxValue"] + params["TtsReadTimeoutMs"]["MaxValue"]) / 1000
    timeout = template.body["Resources"]["SynthesizeFunction"]["Properties"].get(
        "Timeout", template.body["Globals"]["Function"]["Timeout"])
    assert longest_s < timeout


def _tasks(states):
    for name, state in states.items():
        if state["Type"] == "Task":
            yield name, state
        if "ItemProcessor" in state:
            yield from _tasks(state["ItemProcessor"]["States"])


def test_a_step_whose_function_timed_out_is_tried_again_except_asking_the_chatbot():
    # A function that timed out (a request that stalled) or died is tried again like a Lambda service error;
    # AskChatbot is not: the bot may have answered already, and a second ask costs another answer
    definition = json.loads((ROOT / "statemachines" / "synthesize.asl.json").read_text())
    died = {"Sandbox.Timedout", "Lambda.Unknown", "Lambda.ClientExecutionTimeoutException"}
    retried = {name: {error for retry in state.get("Retry", []) for error in retry["ErrorEquals"]}
               for name, state in _tasks(definition["States"])}
    assert set(retried) == {"AskChatbot", "Plan", "SynthesizePart", "RecordPartFailure", "Finish", "RecordRejection"}
    for name, errors in retried.items():
        assert (died <= errors) == (name != "AskChatbot"), name
        assert "Lambda.ServiceException" in errors and "RetryableError" in errors
    # once: a function that times out again would keep the caller waiting 30 s a try, past Express's 5 minutes
    for name, state in _tasks(definition["States"]):
        for retry in state.get("Retry", []):
            if "Sandbox.Timedout" in retry["ErrorEquals"]:
                assert retry["MaxAttempts"] == 1, name


def _worst_request_s() -> float:
    """The longest one AWS request of a workflow function can take before it gives up."""
    from tts_stream.config import WORKFLOW_CLIENT_CONFIG as config

    attempts = config.retries["total_max_attempts"]
    backoff_s = sum(min(2 ** i, 20) for i in range(attempts - 1))  # standard mode's throttling backoff, at most
    return attempts * (config.connect_timeout + config.read_timeout) + backoff_s


def test_the_workflow_functions_aws_requests_give_up_before_the_functions_time_out(template):
    # botocore's defaults wait 60 s for an answer: a stalled S3 or DynamoDB request would time the function out
    assert _worst_request_s() < template.body["Globals"]["Function"]["Timeout"]


def test_a_chat_turn_gives_up_on_everything_before_its_function_times_out(template):
    # The auth secret and the history read, the bot at the longest ChatTimeoutMs (after connecting), the history
    # write: a ChatFunction that timed out would fail the turn (AskChatbot is not retried) instead of apologising
    from tts_stream.chat import CONNECT_S

    bot_s = template.body["Parameters"]["ChatTimeoutMs"]["MaxValue"] / 1000 + CONNECT_S
    timeout = template.body["Resources"]["ChatFunction"]["Properties"]["Timeout"]
    assert 3 * _worst_request_s() + bot_s < timeout


class _Reads(dict):
    """An environment that remembers every name asked of it."""

    def __init__(self, values):
        super().__init__(values)
        self.asked = set()

    def get(self, name, default=None):
        self.asked.add(name)
        return super().get(name, default)


def test_every_setting_the_template_gives_a_function_is_read_and_defaults_to_the_templates_value(template):
    # Code run without the template's environment (the bench, unit tests, a `sam local invoke` given only some
    # variables) must behave as deployed, and a variable the code never reads is a setting that does nothing
    from tts_stream import config

    resources = {"table_name", "bucket_name", "state_machine_arn", "cache_table", "conversation_table"}
    for logical_id in template.resources("AWS::Serverless::Function"):
        variables = template.function_properties(logical_id).get("Environment", {}).get("Variables", {})
        env = _Reads(template.resolve(variables))
        deployed, bare = config.load(env), config.load({})

        assert {name for name in env if not name.startswith("POWERTOOLS_")} <= env.asked, logical_id
        assert {f.name for f in dataclasses.fields(config.Settings)
                if getattr(deployed, f.name) != getattr(bare, f.name)} <= resources, logical_id
