"""The localcloud commands a user runs: `start` serves an endpoint that plain boto3 uses, `invoke` is the
`sam local invoke` of this project, `stream` runs one stream, `call` runs a phone call through a flow, and `flow`
prints an importable flow."""

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest

from tests.loopback import free_port

ROOT = Path(__file__).resolve().parents[2]


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "localcloud", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def served():
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "localcloud", "start", "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = []
        for line in server.stdout:
            lines.append(line)
            if "endpoint ready" in line:
                break
        resources = json.loads("".join(lines[:-1]))["resources"]
        yield f"http://127.0.0.1:{port}", resources
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_start_serves_the_template_to_plain_boto3(served):
    endpoint, resources = served
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                    region_name="us-east-1")
    sfn = session.client("stepfunctions", endpoint_url=endpoint)
    s3 = session.client("s3", endpoint_url=endpoint)
    lam = session.client("lambda", endpoint_url=endpoint)

    stream_id = f"cli-{uuid.uuid4().hex[:8]}"
    arn = sfn.start_execution(stateMachineArn=resources["SynthesisStateMachine"]["Arn"], name=stream_id,
                              input=json.dumps({"stream_id": stream_id, "text": "Served locally. It works."}))["executionArn"]
    deadline = time.monotonic() + 60
    while sfn.describe_execution(executionArn=arn)["status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sfn.describe_execution(executionArn=arn)["status"] == "SUCCEEDED"

    event = json.loads((ROOT / "events" / "connect-get-next-batch.json").read_text())
    event["Details"]["Parameters"]["StreamId"] = stream_id
    reply = json.loads(lam.invoke(FunctionName=resources["ConnectFunction"]["Ref"],
                                  Payload=json.dumps(event))["Payload"].read())
    assert reply["Status"] == "complete" and reply["Final"] == "true" and int(reply["Count"]) >= 1
    bucket = resources["AudioBucket"]["Ref"]
    for i in range(int(reply["Count"])):
        key = reply[f"Part{i}Url"].split(".amazonaws.com/", 1)[1]
        assert key.startswith("cache/")  # new parts go to the prompt cache's content-addressed keys
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read()[:4] == b"RIFF"


def test_invoke_runs_a_function_with_an_event_file():
    done = run("invoke", "ConnectFunction", "--event", "events/connect-start-stream.json")
    assert done.returncode == 0, done.stderr[-2000:]
    reply = json.loads(done.stdout)
    assert reply["StreamId"] == "demo-order-status" and reply["Part0Url"].endswith(".wav") and reply["Count"] == "1"


def test_invoke_names_an_unknown_function():
    done = run("invoke", "NoSuchFunction", "--event", "events/connect-start-stream.json")
    assert done.returncode == 2 and "NoSuchFunction is not a function or state machine in template.yaml" in done.stderr


def test_stream_saves_the_parts_and_prints_the_manifest(tmp_path):
    done = run("stream", "--text", "Hello from the command line. 안녕하세요.", "--out", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["status"] == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"part{i:04d}.wav" for i in range(report["total"])]


def test_call_speaks_the_flows_prompts_in_the_contacts_language(tmp_path):
    done = run("call", "--question", "환불은 어떻게 하나요?", "--question", "안녕히 계세요", "--language", "ko-KR",
               "--speed", "40", "--out", str(tmp_path / "call.wav"), "--json")

    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["messages"] == ["안녕하세요! 무엇이 궁금하신가요? 제가 답하는 동안 1번을 누르시면 멈출게요.",
                                  "더 궁금하신 게 있으신가요?", "전화해 주셔서 감사합니다. 안녕히 계세요."]
    assert [t["question"] for t in report["turns"]] == ["환불은 어떻게 하나요?"]
    assert report["turns"][0]["status"] == "complete" and report["ended_by"] == "EndCall"


def test_call_refuses_a_language_the_local_bot_has_no_locale_for():
    done = run("call", "--question", "こんにちは", "--language", "ja-JP")
    assert done.returncode == 2 and "invalid choice: 'ja-JP'" in done.stderr


def test_parameter_overrides_are_checked_against_the_template():
    done = run("stream", "--text", "Hi.", "--parameter-overrides", "NoSuchParameter=1")
    assert done.returncode == 2 and "NoSuchParameter is not declared" in done.stderr
    done = run("stream", "--text", "Hi.", "--parameter-overrides", "PromptUrlMode=carrier-pigeon")
    assert done.returncode == 2 and "is not allowed" in done.stderr


def test_flow_prints_the_contact_flow_with_the_given_function_arn():
    arn = "arn:aws:lambda:eu-west-2:111122223333:function:my-connect-fn"
    done = run("flow", "--function-arn", arn)
    assert done.returncode == 0, done.stderr
    flow = json.loads(done.stdout)
    lambdas = [a for a in flow["Actions"] if a["Type"] == "InvokeLambdaFunction"]
    assert lambdas and all(a["Parameters"]["LambdaFunctionARN"] == arn for a in lambdas)


def test_invoke_sends_several_events_in_turn_to_one_local_cloud():
    # start_stream, then get_next_batch of the same stream: the second sees what the first made
    done = run("invoke", "ConnectFunction", "--event", "events/connect-start-stream.json",
               "--event", "events/connect-get-next-batch.json")
    assert done.returncode == 0, done.stderr[-2000:]
    decoder, text, replies = json.JSONDecoder(), done.stdout.strip(), []
    while text:
        reply, end = decoder.raw_decode(text)
        replies.append(reply)
        text = text[end:].strip()
    started, batch = replies
    assert started["StreamId"] == batch["StreamId"] == "demo-order-status"
    assert batch["Status"] == "complete" and batch["Final"] == "true" and batch["Count"] != "0"


def test_invoke_runs_the_state_machine_with_a_workflow_event():
    done = run("invoke", "SynthesisStateMachine", "--event", "events/workflow-start.json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["status"] == "SUCCEEDED" and result["output"]["status"] == "complete"
