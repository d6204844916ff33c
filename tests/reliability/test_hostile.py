"""Hostile input at every entry point, through the real path: ConnectFunction as Connect invokes it, the state
machine as StartExecution starts it, SynthesizeFunction as a Map item reaches it, and the chatbot's reply as the
workflow receives it. Each gets a clear error (or is spoken as plain text) and nothing is written outside its
own stream: the whole bucket and the manifest table are compared before and after.
"""

import json
import time
import uuid

import pytest

from localcloud import runs
from localcloud.cloud import FunctionError
from tests.reliability.checks import CACHE_PREFIX, bucket_keys, read_manifest, store_is_sound
from tts_stream import conversation, pipeline
from tts_stream.config import load as load_settings
from tts_stream.errors import InvalidInput

CONNECT_REPLY_MAX_BYTES = 32 * 1024
MARKUP = ('<speak><audio src="https://evil.example/x.mp3"/>Your balance is <break time="10s"/>42 dollars.</speak> '
          '&lt;b&gt; ${jndi:ldap://evil/a} {{7*7}}. Thanks.')


def connect_event(contact=None, **params):
    return {"Name": "ContactFlowEvent", "Details": {
        "ContactData": {"Attributes": {}, "Channel": "VOICE", "ContactId": contact or str(uuid.uuid4()),
                        "InstanceARN": "arn:aws:connect:us-east-1:123456789012:instance/abc"},
        "Parameters": params}}


def manifest_ids(cloud) -> set[str]:
    ddb = cloud.client("dynamodb")
    ids: set[str] = set()
    for page in ddb.get_paginator("scan").paginate(TableName=cloud.physical("ManifestTable"),
                                                   ProjectionExpression="stream_id"):
        ids.update(item["stream_id"]["S"] for item in page["Items"])
    return ids


class Store:
    """The whole bucket and the manifest table's stream ids, before and after one hostile request."""

    def __init__(self, cloud):
        self.cloud = cloud
        runs.wait_for_executions(cloud)  # nothing of an earlier test is still writing
        self.keys, self.streams = bucket_keys(cloud), manifest_ids(cloud)

    def written(self) -> tuple[set[str], set[str]]:
        runs.wait_for_executions(self.cloud)
        return bucket_keys(self.cloud) - self.keys, manifest_ids(self.cloud) - self.streams

    def assert_nothing_written(self):
        keys, streams = self.written()
        assert keys == set() and streams == set(), (keys, streams)

    def assert_only_under(self, stream_id):
        keys, streams = self.written()
        assert streams <= {stream_id}, streams
        assert all(k.startswith(f"streams/{stream_id}/") or k.startswith(CACHE_PREFIX) for k in keys), keys
        return keys


# -- ConnectFunction ------------------------------------------------------------------------------------------

CONNECT_CASES = [
    # id, parameters (or a whole event), status, what the Error says
    ("no-details", {"Name": "ContactFlowEvent"}, "error", "Details is missing"),
    ("parameters-a-list", {"Details": {"Parameters": ["Action", "start_stream"]}}, "error", "Parameters must be a map"),
    ("action-missing", {"Text": "Hello."}, "error", "Action None is not known"),
    ("action-a-number", {"Action": 7}, "error", "Action 7 is not known"),
    ("text-missing", {"Action": "start_stream", "BatchSize": "5"}, "error", "text is missing"),
    ("text-a-number", {"Action": "start_stream", "Text": 42, "BatchSize": "5"}, "error", "text is missing"),
    ("text-a-map", {"Action": "start_stream", "Text": {"S": "x"}, "BatchSize": "5"}, "error", "text is missing"),
    ("text-huge", {"Action": "start_stream", "Text": "word " * 4001, "BatchSize": "5"}, "error",
     "the most a stream takes"),
    ("text-enormous", {"Action": "start_stream", "Text": "x" * 1_000_000, "BatchSize": "5"}, "error",
     "1000000 characters"),
    ("text-nul", {"Action": "start_stream", "Text": "Hello\x00world.", "BatchSize": "5"}, "error",
     "control characters"),
    ("text-terminal-escape", {"Action": "start_stream", "Text": "\x1b[2JHello.", "BatchSize": "5"}, "error",
     "control characters"),
    ("text-c1-control", {"Action": "start_stream", "Text": "Your order\x9b has shipped.", "BatchSize": "5"}, "error",
     "control characters"),
    ("text-lone-surrogate", {"Action": "start_stream", "Text": "Hello \ud800.", "BatchSize": "5"}, "error",
     "lone surrogate"),
    ("voice-injection", {"Action": "start_stream", "Text": "Hello.", "Voice": "en-us; rm -rf /", "BatchSize": "5"},
     "error", "is not a voice name"),
    ("voice-path", {"Action": "start_stream", "Text": "Hello.", "Voice": "../../etc/passwd", "BatchSize": "5"},
     "error", "is not a voice name"),
    ("voice-trailing-newline", {"Action": "start_stream", "Text": "Hello.", "Voice": "en-us\n", "BatchSize": "5"},
     "error", "is not a voice name"),
    ("language-unknown", {"Action": "start_stream", "Text": "Hello.", "Language": "xx", "BatchSize": "5"}, "error",
     "language 'xx' is not supported"),
    *[(f"stream-id-{name}", {"Action": "start_stream", "Text": "Hello.", "StreamId": value, "BatchSize": "5"},
       "error", "is not valid")
      for name, value in [("dotdot", "../other"), ("slash", "a/b"), ("prefix", "streams/../../x"),
                          ("encoded", "%2e%2e%2fx"), ("long", "x" * 65), ("unicode", "스트림"), ("space", "a b"),
                          ("leading-dash", "-x"), ("trailing-newline", "demo-order\n")]],
    *[(f"next-stream-id-{name}", {"Action": "get_next_batch", "StreamId": value, "NextIndex": "0", "BatchSize": "5"},
       "error", "is not valid")
      for name, value in [("dotdot", "../other"), ("slash", "a/b"), ("empty", ""), ("number", 5),
                          ("trailing-newline", "some-stream\n")]],
    *[(f"next-index-{name}", {"Action": "get_next_batch", "StreamId": "some-stream", "NextIndex": value,
                              "BatchSize": "5"}, "error", "NextIndex must be")
      for name, value in [("negative", "-1"), ("enormous", "9" * 30), ("float", "1.5"), ("exponent", "1e3"),
                          ("hex", "0x10"), ("arabic-digit", "٣"), ("empty", ""), ("a-list", [1])]],
    *[(f"batch-size-{name}", {"Action": "get_next_batch", "StreamId": "some-stream", "NextIndex": "0",
                              "BatchSize": value}, "error", "BatchSize must be")
      for name, value in [("zero", "0"), ("negative", "-5"), ("enormous", "9" * 30), ("word", "ten"),
                          ("boolean", True)]],
    ("next-index-past-the-end", None, "error", "past the end"),
    ("unknown-stream", {"Action": "get_next_batch", "StreamId": "never-started-x", "NextIndex": "0",
                        "BatchSize": "5"}, "not_found", "does not exist"),
    ("stop-unknown-stream", {"Action": "stop", "StreamId": "never-started-y"}, "not_found", "does not exist"),
]


@pytest.mark.parametrize("case, params, status, message", CONNECT_CASES, ids=[c[0] for c in CONNECT_CASES])
def test_connect_function_answers_hostile_requests_with_a_clear_error(cloud, case, params, status, message):
    if case == "next-index-past-the-end":  # a real, finished stream of a few parts, asked for part 999999
        stream_id = f"hostile-{uuid.uuid4().hex[:12]}"
        runs.run_stream(cloud, "One part here. Another part there.", stream_id=stream_id)
        params = {"Action": "get_next_batch", "StreamId": stream_id, "NextIndex": "999999", "BatchSize": "5"}
    store = Store(cloud)
    event = params if "Details" in params or "Name" in params else connect_event(**params)

    reply = cloud.invoke("ConnectFunction", event)

    assert reply["Status"] == status and message in reply["Error"], reply
    assert reply["Final"] == "true" and reply["Count"] == "0"
    assert all(isinstance(v, str) for v in reply.values())
    assert len(json.dumps(reply).encode()) < CONNECT_REPLY_MAX_BYTES
    store.assert_nothing_written()


def test_markup_in_the_answer_is_spoken_as_text_inside_its_own_stream(cloud):
    store = Store(cloud)
    reply = cloud.invoke("ConnectFunction", connect_event(Action="start_stream", Text=MARKUP, BatchSize="5"))
    assert reply["Status"] in ("streaming", "complete"), reply

    store.assert_only_under(reply["StreamId"])
    store_is_sound(cloud, reply["StreamId"], store.keys)
    found = read_manifest(cloud, reply["StreamId"])
    assert found.status == "complete" and sorted(found.ready) == list(range(found.total))
    # The markup is in the parts' text as the caller's answer had it, an HTML entity read as its character: the
    # engine gets plain text (never SSML) and reads it out, nothing interprets it
    assert "".join(found.texts) == MARKUP.replace("&lt;b&gt;", "<b>")
    assert '<audio src="https://evil.example/x.mp3"/>' in "".join(found.texts)


# -- the state machine ----------------------------------------------------------------------------------------

WORKFLOW_CASES = [
    ("not-an-object", ["text"], "States.Runtime", ""),
    ("empty", {}, "InvalidInput", "is not valid"),
    ("text-missing", {"stream_id": "wf-no-text"}, "InvalidInput", "text is missing"),
    ("text-a-list", {"stream_id": "wf-text-list", "text": ["Hello."]}, "InvalidInput", "text is missing"),
    ("text-huge", {"stream_id": "wf-huge", "text": "x" * 20_001}, "InvalidInput", "the most a stream takes"),
    ("text-control", {"stream_id": "wf-control", "text": "Bell\x07 here."}, "InvalidInput", "control characters"),
    ("text-only-struck-out", {"stream_id": "wf-markdown", "text": "~~all of it struck out~~"}, "InvalidInput",
     "nothing to speak"),
    ("stream-id-a-number", {"stream_id": 12, "text": "Hello."}, "InvalidInput", "is not valid"),
    ("stream-id-dotdot", {"stream_id": "../../x", "text": "Hello."}, "InvalidInput", "is not valid"),
    ("stream-id-slash", {"stream_id": "a/b", "text": "Hello."}, "InvalidInput", "is not valid"),
    ("voice-a-map", {"stream_id": "wf-voice", "text": "Hello.", "voice": {"a": 1}}, "InvalidInput", "voice"),
    ("language-a-list", {"stream_id": "wf-lang", "text": "Hello.", "language": ["en"]}, "InvalidInput", "language"),
    ("input-hash-not-hex", {"stream_id": "wf-hash", "text": "Hello.", "input_hash": "../x"}, "InvalidInput",
     "input_hash must be 64 hex"),
    pytest.param("input-hash-a-number", {"stream_id": "wf-hash-n", "text": "Hello.", "input_hash": 5}, "InvalidInput",
                 "input_hash", id="input-hash-a-number"),
    ("question-without-contact", {"stream_id": "wf-question", "question": "Where is my order?"}, "InvalidInput",
     "is not valid"),
    ("first-part-of-an-unplanned-stream", {"stream_id": "wf-first", "text": "Hello there. Goodbye now.",
                                           "first_part": "inline"}, "InvalidInput", "is not planned"),
]


@pytest.mark.parametrize("case, payload, error, message",
                         [c if hasattr(c, "marks") else pytest.param(*c, id=c[0]) for c in WORKFLOW_CASES])
def test_the_workflow_rejects_hostile_input_with_a_clear_error(cloud, case, payload, error, message):
    store = Store(cloud)
    if isinstance(payload, dict) and str(payload.get("stream_id")).startswith("wf"):  # a fresh id per run
        payload = {**payload, "stream_id": f"{payload['stream_id']}-{uuid.uuid4().hex[:8]}"}

    execution = cloud.wait_execution(cloud.client("stepfunctions").start_execution(
        stateMachineArn=cloud.physical("SynthesisStateMachine"), name=f"hostile-{uuid.uuid4().hex}",
        input=json.dumps(payload))["executionArn"])

    assert execution["status"] == "FAILED", execution
    assert execution.get("error") == error, execution
    if message:
        assert message in json.loads(execution["cause"])["errorMessage"]
    store.assert_nothing_written()


def test_extra_fields_in_the_workflow_input_cannot_redirect_writes(cloud):
    stream_id = f"wf-extra-{uuid.uuid4().hex[:8]}"
    store = Store(cloud)
    payload = {"stream_id": stream_id, "text": "Only this stream. Nothing else.", "bucket": "someone-elses-bucket",
               "key": "../../etc/x.wav", "max_concurrency": 100000, "total": 1,
               "parts": [{"stream_id": "victim", "index": 0, "text": "Injected.", "engine": "espeak",
                          "voice": "en-us"}]}
    execution = cloud.wait_execution(cloud.start_execution("SynthesisStateMachine", payload))
    assert execution["status"] == "SUCCEEDED"
    keys = store.assert_only_under(stream_id)
    assert read_manifest(cloud, stream_id).status == "complete"
    assert read_manifest(cloud, "victim") is None and not any("victim" in k for k in keys)


# -- a Map item (SynthesizeFunction) ---------------------------------------------------------------------------

PART = {"stream_id": "map-item", "index": 0, "text": "Hello.", "engine": "espeak", "voice": "en-us", "language": "en"}
MAP_CASES = [
    ("index-negative", {"index": -1}, "InvalidInput"),
    ("index-too-big", {"index": 10_000}, "InvalidInput"),
    ("index-a-string", {"index": "0"}, "InvalidInput"),
    ("index-a-boolean", {"index": True}, "InvalidInput"),
    ("stream-id-dotdot", {"stream_id": "../x"}, "InvalidInput"),
    ("stream-id-missing", {"stream_id": None}, "InvalidInput"),
    ("text-empty", {"text": "  "}, "InvalidInput"),
    ("text-a-number", {"text": 5}, "InvalidInput"),
    ("engine-unknown", {"engine": "../../bin/sh"}, "InvalidInput"),
    ("voice-path", {"voice": "../../etc/passwd"}, "PermanentSynthesisError"),
    ("text-nul", {"text": "a\x00b"}, "PermanentSynthesisError"),
    # Filed under another text's key, its audio would play to every later stream saying that text.
    ("cache-key-of-another-text", {"cache_key": "0" * 64}, "InvalidInput"),
]


@pytest.mark.parametrize("case, change, error", MAP_CASES, ids=[c[0] for c in MAP_CASES])
def test_a_hostile_map_item_fails_before_writing_anything(cloud, case, change, error):
    store = Store(cloud)
    with pytest.raises(FunctionError) as raised:
        cloud.invoke("SynthesizeFunction", {**PART, "stream_id": f"map-{uuid.uuid4().hex[:8]}", **change})
    assert raised.value.payload["errorType"] == error, raised.value.payload
    store.assert_nothing_written()


# -- the chatbot's reply ---------------------------------------------------------------------------------------

class Bot:
    def __init__(self, answer):
        self.answer = answer

    def ask(self, question, history, **kwargs):
        return self.answer



@pytest.mark.parametrize("answer", [
    "Your order shipped. It arrives Friday.",
    MARKUP,
    "x" * 30_000,
    "Ding\x07 dong.",
    "\x1b[2JCleared screen.",
    "Cut\x00 short.",
    "Lone \ud800 surrogate.",
    "Windows\x92 quote.",
    "---",
    "~~All of it struck out.~~",
], ids=["plain", "markup", "too-long", "bell", "terminal-escape", "nul", "lone-surrogate", "c1-control",
        "only-a-rule", "only-struck-out"])
def test_whatever_the_chatbot_answers_the_turn_has_something_to_speak(cloud, answer):
    ddb, settings = cloud.client("dynamodb"), load_settings()
    contact = str(uuid.uuid4())
    event = {"stream_id": f"{contact}-t1", "contact_id": contact, "turn": 1, "question": "Where is my order?"}
    asked = pipeline.ask_chatbot(ddb, settings, event, now_ms=time.time_ns() // 1_000_000, backend=Bot(answer))
    try:
        pipeline.check_stream_request({"stream_id": asked["stream_id"], "text": asked["text"]}, settings)
        pipeline.part_texts(settings, asked["text"])  # what Plan splits: something to speak
    except InvalidInput as error:
        raise AssertionError(f"the turn cannot be spoken: {error}") from error
    # An answer turned into the apology is not remembered as what the bot said
    remembered = conversation.history(ddb, settings.conversation_table, contact, before_turn=2)
    assert [e.answer for e in remembered.values()] == ([] if asked["chat_error"] else [asked["text"]])
