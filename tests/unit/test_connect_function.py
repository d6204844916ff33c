"""ConnectFunction inside Connect's 8-second limit when AWS is not answering: a failed read is paced, and a
request to a server that never answers gives up in time. AWS is the outside world here: botocore's Stubber,
or an HTTP server on 127.0.0.1 that stops answering."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from tts_stream import config, streams

STREAM = "contact-1-abcdef012345"
EVENT = {"Name": "ContactFlowEvent", "Details": {
    "ContactData": {"ContactId": "contact-1"},
    "Parameters": {"Action": "get_next_batch", "StreamId": STREAM, "NextIndex": "2", "BatchSize": "5"}}}


def settings(**env):
    return config.load({"TABLE_NAME": "manifest", "BUCKET_NAME": "audio", **env})


class Clock:
    """Connect's invocation on a clock of our own: time passes only when the function sleeps."""

    def __init__(self):
        self.ms, self.slept = 1_000_000, []

    def now_ms(self):
        return self.ms

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.ms += int(seconds * 1000)


def test_a_failed_read_is_answered_after_the_batch_wait_not_at_once():
    # Given DynamoDB refusing the manifest read (throttled, after the SDK's own retries)
    ddb = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    clock = Clock()
    with Stubber(ddb) as stub:
        stub.add_client_error("get_item", "ProvisionedThroughputExceededException", http_status_code=400)
        reply = streams.handle(streams.Clients(ddb, None, None), settings(BATCH_WAIT_MS="1500"), EVENT,
                               remaining_ms=8000, clock=clock)
        stub.assert_no_pending_responses()
    # Then the flow is told to ask again from the same place, but only once the batch wait has passed: a
    # failure that lasts costs a request every BatchWaitMs, not one as fast as Connect can loop
    assert reply["Final"] == "false" and reply["NextIndex"] == "2" and "ask again" in reply["Error"]
    assert clock.slept == [1.5]


def test_the_pause_never_runs_past_connects_deadline():
    ddb = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    clock = Clock()
    with Stubber(ddb) as stub:
        stub.add_client_error("get_item", "ThrottlingException", http_status_code=400)
        streams.handle(streams.Clients(ddb, None, None), settings(BATCH_WAIT_MS="5000"), EVENT,
                       remaining_ms=2000, clock=clock)
    # 2,000 ms left, less the 500 ms kept for the reply
    assert clock.slept == [1.5]


class DynamoThatStalls(ThreadingHTTPServer):
    """DynamoDB on 127.0.0.1 that answers every GetItem with a stream still waiting for part 2, until
    `answer_for_s` after its first request; from then on it takes requests and never answers."""

    def __init__(self, answer_for_s: float):
        super().__init__(("127.0.0.1", 0), _Stalling)
        self.answer_for_s, self.first, self.requests = answer_for_s, None, 0
        self.release = threading.Event()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Stalling(BaseHTTPRequestHandler):
    server: DynamoThatStalls

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests += 1
        now = time.monotonic()
        self.server.first = self.server.first or now
        if now - self.server.first > self.server.answer_for_s:
            self.server.release.wait(30)  # a request that never gets its answer
            return
        ms = str(time.time_ns() // 1_000_000)
        item = {"stream_id": {"S": STREAM}, "status": {"S": "streaming"}, "total": {"N": "3"},
                "ready": {"M": {"0": {"N": ms}, "1": {"N": ms}}}, "keys": {"M": {}}, "created_ms": {"N": ms}}
        body = json.dumps({"Item": item}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stalling_dynamodb(monkeypatch):
    server = DynamoThatStalls(answer_for_s=3.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    for name, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "x"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def test_dynamodb_stalling_at_the_end_of_the_longest_wait_still_lets_the_reply_reach_connect_in_time(
        stalling_dynamodb):
    # Given ConnectFunction's own clients, the longest batch wait the template allows, and a DynamoDB that stops
    # answering 3 s into it (a dead pooled connection, just as the wait is ending)
    started = time.monotonic()
    reply = streams.handle(streams.aws_clients(), settings(BATCH_WAIT_MS="3500"), EVENT, remaining_ms=8000)
    elapsed = time.monotonic() - started
    # Then the function gave up on that read (two tries), paced its "ask again" up to its own deadline (8 s less
    # the 500 ms kept for the reply) and replied inside Connect's 8 s; botocore's defaults (60 s per read, up to 10
    # tries) would have run it out of time, and the caller into the apology
    assert stalling_dynamodb.requests >= 3
    assert reply["Final"] == "false" and reply["NextIndex"] == "2" and "ask again" in reply["Error"]
    assert elapsed < 7.8


@pytest.mark.parametrize("workflow_input, code, status, kept", [
    ({"stream_id": STREAM, "text": "Hello."}, "ThrottlingException", 400, True),
    ({"stream_id": STREAM, "text": "Hello."}, "InternalFailure", 500, True),
    ({"stream_id": STREAM, "question": "Hello?", "contact_id": "c", "turn": 1}, "ThrottlingException", 400, True),
    ({"stream_id": STREAM, "question": "Hello?", "contact_id": "c", "turn": 1}, "InternalFailure", 500, False),
    ({"stream_id": STREAM, "text": "Hello."}, "AccessDeniedException", 400, False),
], ids=["answer-throttled", "answer-5xx", "turn-throttled", "turn-5xx", "access-denied"])
def test_a_failed_start_is_kept_only_when_a_second_start_cannot_do_harm(workflow_input, code, status, kept):
    # Given StartExecution failing with this error
    keys = {"region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    sfn, ddb = boto3.client("stepfunctions", **keys), boto3.client("dynamodb", **keys)
    with Stubber(sfn) as sfn_stub, Stubber(ddb) as ddb_stub:
        sfn_stub.add_client_error("start_execution", code, http_status_code=status)
        if kept:
            ddb_stub.add_response("update_item", {})
        clients = streams.Clients(ddb, None, sfn)
        if kept:
            streams._start_or_keep(clients, settings(STATE_MACHINE_ARN="arn:aws:states:us-east-1:1:stateMachine:s"),
                                   STREAM, workflow_input)
        else:
            # A chat turn after a 5xx may have started (Express does not deduplicate names): a second start would
            # ask the chatbot again, so the caller hears the apology instead; and nothing mends access denied
            with pytest.raises(ClientError):
                streams._start_or_keep(clients, settings(STATE_MACHINE_ARN="arn:aws:states:us-east-1:1:stateMachine:s"),
                                       STREAM, workflow_input)
        ddb_stub.assert_no_pending_responses()
