"""ConnectFunction inside Connect's 8-second limit when AWS is not answering: a failed read is paced, and a
request to a server that never answers gives up in time. AWS is the outside world here: botocore's Stubber,
or a socket on 127.0.0.1 that accepts and never replies."""

import socket
import threading
import time

import boto3
import pytest
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


@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and reads requests but never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_dynamodb_that_never_answers_still_lets_the_reply_reach_connect_in_time(silent_server):
    # Given ConnectFunction's own client settings, and a DynamoDB endpoint that takes the request and never answers
    # (what a dead pooled connection looks like)
    ddb = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=silent_server, aws_access_key_id="x",
                       aws_secret_access_key="x", config=streams.CLIENT_CONFIG)
    started = time.monotonic()
    reply = streams.handle(streams.Clients(ddb, None, None), settings(BATCH_WAIT_MS="500"), EVENT,
                           remaining_ms=8000)
    elapsed = time.monotonic() - started
    # Then the function gives up on the request and replies "ask again" well inside Connect's 8 s, where
    # botocore's defaults (60 s per read) would have run the function out of time and the caller into the apology
    assert reply["Final"] == "false" and "ask again" in reply["Error"]
    assert elapsed < 7.5
