"""ConnectFunction inside Connect's 8-second limit when AWS is not answering: a failed read is paced, and a
request to a server that never answers gives up in time. AWS is the outside world here: botocore's Stubber,
or an HTTP server on 127.0.0.1 that stops answering."""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from botocore.exceptions import BotoCoreError, ClientError
from botocore.stub import Stubber

from tts_stream import config, engines, secrets, streams

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


class Loopback(ThreadingHTTPServer):
    """An AWS endpoint on 127.0.0.1, serving on a thread of its own, counting requests."""

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        self.requests = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self):
        self.shutdown()
        self.server_close()


class Counting(BaseHTTPRequestHandler):
    """Reads each request, counts it, and leaves the answer to `respond`."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests += 1
        self.respond()

    def log_message(self, *args):
        pass


def answer_json(handler: BaseHTTPRequestHandler, payload: dict):
    body = json.dumps(payload).encode()
    try:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/x-amz-json-1.0")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    except OSError:
        pass  # the client gave up first


class DynamoThatStalls(Loopback):
    """DynamoDB that answers every GetItem with a stream still waiting for part 2, until `answer_for_s` after its
    first request; from then on it takes requests and never answers."""

    def __init__(self, answer_for_s: float):
        self.answer_for_s, self.first, self.stalled = answer_for_s, None, 0
        self.release = threading.Event()
        super().__init__(_Stalling)


class _Stalling(Counting):
    server: DynamoThatStalls

    def respond(self):
        now = time.monotonic()
        self.server.first = self.server.first or now
        if now - self.server.first > self.server.answer_for_s:
            self.server.stalled += 1
            self.server.release.wait(30)  # a request that never gets its answer
            return
        ms = str(time.time_ns() // 1_000_000)
        answer_json(self, {"Item": {"stream_id": {"S": STREAM}, "status": {"S": "streaming"}, "total": {"N": "3"},
                                    "ready": {"M": {"0": {"N": ms}, "1": {"N": ms}}}, "keys": {"M": {}},
                                    "created_ms": {"N": ms}}})


@pytest.fixture
def aws_at(monkeypatch):
    """Points every client made from here on at a loopback endpoint."""
    for name, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "x"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    return lambda url: monkeypatch.setenv("AWS_ENDPOINT_URL", url)


@pytest.fixture
def stalling_dynamodb(aws_at):
    servers = []

    def start(answer_for_s):
        server = DynamoThatStalls(answer_for_s)
        servers.append(server)
        aws_at(server.url)
        return server

    yield start
    for server in servers:
        server.release.set()
        server.stop()


@pytest.mark.parametrize("remaining_ms, answer_for_s, stalled", [(8000, 3.0, 2), (6000, 3.3, 0)],
                         ids=["stall-at-the-end-of-the-wait", "invocation-started-late"])
def test_dynamodb_stalling_during_the_longest_wait_still_lets_the_reply_reach_connect_in_time(
        stalling_dynamodb, remaining_ms, answer_for_s, stalled):
    # Given ConnectFunction's own clients, the longest batch wait the template allows, and a DynamoDB that stops
    # answering part way through it (a dead pooled connection)
    server = stalling_dynamodb(answer_for_s)
    started = time.monotonic()
    reply = streams.handle(streams.aws_clients(), settings(BATCH_WAIT_MS="3500"), EVENT, remaining_ms=remaining_ms)
    elapsed = time.monotonic() - started
    # Then the function replied inside its deadline (the invocation's time less the 500 ms kept for the reply):
    # a read that met the stall was sent twice, no more, and its "ask again" paced up to the deadline; and a wait
    # left room for such a read, so an invocation that began late stopped polling before the stall could matter.
    # botocore's defaults (60 s per read, up to 10 tries) would have run it out of time, the caller into the apology
    assert server.stalled == stalled
    assert reply["Final"] == "false" and reply["NextIndex"] == "2"
    assert elapsed < (remaining_ms - 500) / 1000 + 0.3


def test_part_0s_cache_entry_is_written_before_the_reply_goes_and_a_failed_one_is_only_logged():
    # Lambda freezes the environment once the reply is sent: a write still under way then may never happen
    done = []
    wait = streams._index_aside(lambda: (time.sleep(0.2), done.append("entry")))
    wait()
    assert done == ["entry"]

    def fails():
        raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException"}}, "BatchWriteItem")

    streams._index_aside(fails)()  # a lost entry only means a later stream speaks the part again



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
        else:  # the stream is ended instead (here it is not found: nothing to fail)
            ddb_stub.add_response("get_item", {})
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


class SlowService(Loopback):
    """Step Functions answering each request after `delay_s`."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        super().__init__(_Slow)


class _Slow(Counting):
    server: SlowService

    def respond(self):
        time.sleep(self.server.delay_s)
        answer_json(self, {"executionArn": "arn:aws:states:us-east-1:1:execution:s:x", "startDate": 0})


def test_a_start_execution_that_answers_slowly_is_sent_once_never_twice():
    # Given Step Functions answering later than ConnectFunction's read timeout
    server = SlowService(delay_s=1.3)
    try:
        sfn = boto3.client("stepfunctions", region_name="us-east-1", endpoint_url=server.url,
                           aws_access_key_id="x", aws_secret_access_key="x", config=streams.START_CONFIG)
        # When ConnectFunction's client starts an execution, it gives up without sending it again: an Express
        # execution is not deduplicated by name, and a second one would speak the answer (or ask the bot) twice
        with pytest.raises(BotoCoreError):
            sfn.start_execution(stateMachineArn="arn:aws:states:us-east-1:1:stateMachine:s", name="n", input="{}")
        assert server.requests == 1
    finally:
        server.stop()


def test_a_chat_start_sent_but_unanswered_leaves_the_turn_to_the_execution_that_probably_runs():
    # Given a chat turn whose StartExecution was sent and got no answer in time (it is probably running)
    server = SlowService(delay_s=1.3)
    keys = {"region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    sfn = boto3.client("stepfunctions", endpoint_url=server.url, config=streams.START_CONFIG, **keys)
    ddb = boto3.client("dynamodb", **keys)
    manifest_calls = []

    def record(model, **_):
        manifest_calls.append(model.name)
        return {}  # answered here: nothing leaves the machine

    ddb.meta.events.register("before-call.dynamodb", record)
    turn = {"stream_id": STREAM, "question": "Hello?", "contact_id": "c", "turn": 1}
    try:
        # When the start fails that way, the caller is told (the apology) ...
        with pytest.raises(BotoCoreError):
            streams._start_or_keep(streams.Clients(ddb, None, sfn),
                                   settings(STATE_MACHINE_ARN="arn:aws:states:us-east-1:1:stateMachine:s"), STREAM, turn)
    finally:
        server.stop()
    # ... but neither kept (a second start would ask the bot again) nor failed: the running execution's answer
    # stays for a retry of the turn
    assert manifest_calls == []


class ThrottlingWithRetryAfter(Loopback):
    """A service throttling its first request and asking for a 3 s wait (x-amz-retry-after, in ms), then answering."""

    def __init__(self):
        self.arrived = []
        super().__init__(_RetryAfter)


class _RetryAfter(Counting):
    server: ThrottlingWithRetryAfter

    def respond(self):
        self.server.arrived.append(time.monotonic())
        if self.server.requests > 1:
            answer_json(self, {})
            return
        body = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException",
                           "message": "Rate exceeded"}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("x-amz-retry-after", "3000")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _get_item(ddb):
    ddb.get_item(TableName="t", Key={"k": {"S": "v"}})


@pytest.fixture
def own_client_caches():
    """The process-wide clients of the workflow functions, made afresh for the loopback endpoint, and forgotten
    afterwards so no later test sends to it. The workflow's handler module is forgotten too unless it was already
    loaded: imported here, without the template's environment, its metrics would have no namespace."""
    loaded = "workflow" in sys.modules
    caches = (secrets._clients, engines._polly_clients)
    for cache in caches:
        cache.clear()
    yield
    for cache in caches:
        cache.clear()
    if loaded:
        sys.modules["workflow"]._clients.clear()
    else:
        sys.modules.pop("workflow", None)


def _workflow_client():
    import workflow

    workflow._clients.clear()
    return workflow._client("dynamodb")


@pytest.mark.parametrize("make_client, send, bounded", [
    (lambda: boto3.client("dynamodb", config=streams.CLIENT_CONFIG), _get_item, False),
    (lambda: streams.aws_clients().ddb, _get_item, True),
    (_workflow_client, _get_item, True),
    (lambda: secrets._client("secretsmanager", "us-east-1"), lambda client: client.get_secret_value(SecretId="s"),
     True),
    (lambda: engines._shared_polly_client("us-east-1"),
     lambda client: client.synthesize_speech(Text="Hi.", OutputFormat="pcm", VoiceId="Joanna"), True),
], ids=["botocore-alone", "connect-function", "workflow-functions", "secrets", "polly"])
def test_a_service_asking_for_a_long_wait_is_retried_within_our_own_backoff(aws_at, own_client_caches, make_client,
                                                                          send, bounded):
    # Given a service throttling a request and asking, through x-amz-retry-after, for a 3 s wait before the next try
    server = ThrottlingWithRetryAfter()
    aws_at(server.url)
    try:
        # When a client sends it
        send(make_client())
        waited_s = server.arrived[1] - server.arrived[0]
    finally:
        server.stop()
    # Then our clients try again after standard mode's throttling backoff (at most 1 s before the first resend),
    # the wait every budget counts on (ConnectFunction's 4 s per request inside Connect's 8 s, the workflow
    # functions' 30 s), where botocore alone (1.44 and newer, as the Lambda runtime may carry) waits as asked
    assert server.requests == 2
    assert (waited_s < 2.5) == bounded, waited_s
