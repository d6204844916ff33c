"""Hostile input, generated: whatever event reaches an entry point, its parser answers with a clear error or a
well-formed reply, and never raises anything else. Runs against the local cloud's real DynamoDB and S3 (moto); the
workflow is never started (a recording stand-in takes StartExecution) and waits run on a virtual clock."""

import dataclasses
import json
import string
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tts_stream import batches, manifest, pipeline, streams
from tts_stream.config import STREAM_ID_PATTERN
from tts_stream.config import load as load_settings
from tts_stream.errors import InvalidInput, StreamConflict

STATUSES = {"streaming", "complete", "failed", "cancelled", "not_found", "error"}
CONNECT_REPLY_MAX_BYTES = 32 * 1024
EXAMPLES = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.large_base_example, HealthCheck.data_too_large])

# Strings a caller, a chatbot or a broken flow could send: markup, escapes, paths, control characters, lone
# surrogates, other scripts' digits, and sizes around and far beyond every limit.
HOSTILE = [
    "", " ", "\t\n", "0", "-1", "1e9", "0x10", "٣", "１２", "99999999999999999999", "true", "null", "None", "[]",
    "{}",
    "../x", "../../etc/passwd", "a/b", "/", "streams/../../x", "%2e%2e%2fx", "x" * 65, "x" * 64, "ストリーム",
    "<speak><audio src='https://evil.example/a.mp3'/></speak>", "<break time=\"10s\"/>", "${jndi:ldap://x/a}",
    "{{7*7}}", "%s%n%x", "'; DROP TABLE streams; --", "\x00", "\x1b[31mred", "line\rfeed", "\ud800", "a\udfffb",
    "\u202eevil", "\ufeffbom", "🙂" * 10, "start_stream", "get_next_batch", "chat_and_stream", "stop",
    "en", "ko", "fr", "auto", "en-us", "Hello. How are you?", "x" * 20_001, "word " * 10_000,
]
text = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=200),
                 st.text(alphabet=st.characters(codec=None, categories=None, exclude_categories=()), max_size=50),
                 st.integers(0, 100).map(lambda n: "x" * (n * 1000)))
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), text)
json_like = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                         max_leaves=12)
PARAMETER_NAMES = ["Action", "Text", "StreamId", "NextIndex", "BatchSize", "Voice", "Language", "Question",
                   "PreviousTurn"]
valid_parameters = st.one_of(
    st.fixed_dictionaries({"Action": st.just("start_stream"), "Text": st.sampled_from(
        ["Hello there. How can I help?", "<speak>Markup.</speak> More."]), "BatchSize": st.just("5")}),
    st.fixed_dictionaries({"Action": st.sampled_from(["get_next_batch", "stop"]), "NextIndex": st.just("0"),
                           "BatchSize": st.just("5"), "StreamId": st.uuids().map(str)}),
    st.fixed_dictionaries({"Action": st.just("chat_and_stream"), "Question": st.just("Where is my order?"),
                           "PreviousTurn": st.just("0"), "BatchSize": st.just("5")}),
)
almost_valid_parameters = valid_parameters.flatmap(lambda params: st.sampled_from(PARAMETER_NAMES).flatmap(
    lambda field: st.one_of(text, json_like).map(lambda value: {**params, field: value})))
parameters = st.one_of(
    almost_valid_parameters,
    st.dictionaries(st.sampled_from(PARAMETER_NAMES) | text, st.one_of(text, json_like), max_size=8),
    st.fixed_dictionaries({"Action": st.sampled_from(streams.ACTIONS)},
                          optional={name: st.one_of(text, json_like) for name in PARAMETER_NAMES[1:]}),
    json_like,
)
contact_data = st.one_of(st.fixed_dictionaries({"ContactId": st.one_of(st.uuids().map(str), text, json_like)}),
                         json_like)
connect_event = st.one_of(
    st.fixed_dictionaries({"Name": st.just("ContactFlowEvent"),
                           "Details": st.fixed_dictionaries({"ContactData": contact_data, "Parameters": parameters})}),
    st.fixed_dictionaries({"Details": json_like}),
    json_like,
)
valid_id = st.from_regex(STREAM_ID_PATTERN, fullmatch=True)
valid_text = st.sampled_from(["Hello there. How can I help you today?", "안녕하세요. 무엇을 도와드릴까요?",
                              "<speak>Markup is read out.</speak> Then more.", "One. Two. Three. Four."])
hostile = st.one_of(text, json_like)
# Valid but for one field, so that every check after the first is reached too.
almost_valid_request = st.fixed_dictionaries(
    {"stream_id": valid_id.map(lambda s: "p" + s[:63]), "text": valid_text},
    optional={"voice": st.sampled_from(["en-us", "ko"]), "language": st.sampled_from(["auto", "en", "ko"])},
).flatmap(lambda request: st.sampled_from(["stream_id", "text", "voice", "language", "input_hash"]).flatmap(
    lambda field: (text if field == "input_hash" else hostile).map(lambda value: {**request, field: value})))
stream_request = st.one_of(
    almost_valid_request,
    st.fixed_dictionaries({}, optional={"stream_id": st.one_of(text, json_like), "text": st.one_of(text, json_like),
                                        "voice": st.one_of(text, json_like), "language": st.one_of(text, json_like),
                                        "input_hash": text}),
    json_like,
)


class VirtualClock:
    """Waiting costs no time: sleep moves the clock."""

    def __init__(self):
        self.now = time.time_ns() // 1_000_000

    def now_ms(self):
        return self.now

    def sleep(self, seconds):
        self.now += max(1, int(seconds * 1000))


class RecordingStepFunctions:
    """Takes StartExecution instead of Step Functions: the input is kept, no workflow runs."""

    def __init__(self):
        self.inputs = []

    def start_execution(self, **request):
        self.inputs.append(json.loads(request["input"]))
        return {"executionArn": "arn:aws:states:us-east-1:123456789012:execution:x:y", "startDate": 0}


@pytest.fixture(scope="module")
def connect(cloud):
    settings_ = dataclasses.replace(load_settings(), start_wait_ms=100, batch_wait_ms=100, poll_interval_ms=50)
    sfn = RecordingStepFunctions()
    clients = streams.Clients(ddb=cloud.client("dynamodb"), s3=cloud.client("s3"), sfn=sfn)
    return clients, settings_, sfn


def _bucket(cloud):
    listed = cloud.client("s3").list_objects_v2(Bucket=cloud.physical("AudioBucket"), Prefix="streams/")
    return {obj["Key"] for obj in listed.get("Contents", [])}


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
@EXAMPLES
@given(event=connect_event, remaining_ms=st.integers(0, 8000))
def test_connect_events_always_get_a_flat_string_reply(connect, event, remaining_ms):
    clients, settings_, sfn = connect
    started = len(sfn.inputs)
    reply = streams.handle(clients, settings_, event, remaining_ms=remaining_ms, clock=VirtualClock())

    assert isinstance(reply, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in reply.items()), reply
    assert reply["Status"] in STATUSES
    assert reply["Final"] in ("true", "false")
    count = int(reply["Count"])
    assert 0 <= count <= batches.MAX_BATCH_SIZE
    assert all(reply[f"Part{i}Url"] for i in range(count))
    assert reply["StreamId"] == "" or STREAM_ID_PATTERN.fullmatch(reply["StreamId"])  # never echoes a hostile id
    if reply["Status"] in ("error", "not_found"):
        assert reply["Final"] == "true" and reply["Error"] and count == 0
    json.dumps(reply)  # serializable as Lambda returns it (the size limit has a test of its own, below)
    # and a workflow is only ever started for a valid stream id and checked text
    for started_input in sfn.inputs[started:]:
        assert STREAM_ID_PATTERN.fullmatch(started_input["stream_id"])
        assert "text" in started_input or "question" in started_input
        # and never with parts: the Map's items come from the manifest's plan, not from whoever starts a run
        assert "parts" not in started_input


@EXAMPLES
@given(event=stream_request)
def test_workflow_requests_are_valid_or_rejected_as_invalid_input(event):
    settings_ = load_settings()
    try:
        stream_id, text_, voice, language = pipeline.check_stream_request(event, settings_)
    except InvalidInput as error:
        assert str(error)
        return
    assert STREAM_ID_PATTERN.fullmatch(stream_id)
    assert isinstance(text_, str) and text_.strip() and len(text_) <= settings_.max_text_chars
    assert language in pipeline.LANGUAGES and isinstance(voice, str)


@EXAMPLES
@given(event=stream_request)
def test_planning_a_hostile_stream_raises_only_invalid_input_or_a_conflict(cloud, event):
    ddb = cloud.client("dynamodb")
    try:
        planned = pipeline.plan_stream(ddb, load_settings(), event, now_ms=time.time_ns() // 1_000_000)
    except (InvalidInput, StreamConflict) as error:
        assert str(error)
        return
    # A plan that succeeds has a valid id and parts that all belong to it
    assert STREAM_ID_PATTERN.fullmatch(planned["stream_id"])
    assert all(part["stream_id"] == planned["stream_id"] for part in planned["parts"])
    assert manifest.read(ddb, cloud.physical("ManifestTable"), planned["stream_id"]) is not None


@pytest.mark.parametrize("value", [5, ["a" * 64], {"h": 1}, True])
def test_a_non_string_input_hash_is_invalid_input(cloud, value):
    event = {"stream_id": "hash-type-test", "text": "Hello there.", "input_hash": value}
    with pytest.raises(InvalidInput):
        pipeline.plan_stream(cloud.client("dynamodb"), load_settings(), event, now_ms=time.time_ns() // 1_000_000)



@pytest.mark.parametrize("field", [
    "StreamId", "Action", "Voice",
    "Language", "NextIndex",
    "BatchSize", "Text",
])
def test_an_error_reply_stays_under_connects_size_limit(connect, field):
    clients, settings_, _ = connect
    params = {"Action": "get_next_batch" if field in ("StreamId", "NextIndex") else "start_stream",
              "StreamId": "size-test", "NextIndex": "0", "BatchSize": "5", "Text": "Hello there."}
    if field == "Action":
        params["Action"] = "x" * 40_000
    else:
        params[field] = "x" * 40_000
    if field in ("Text", "Voice", "Language", "BatchSize"):
        params.pop("StreamId")
    reply = streams.handle(clients, settings_, {"Details": {"ContactData": {"ContactId": "c-size"},
                                                            "Parameters": params}},
                           remaining_ms=500, clock=VirtualClock())
    assert reply["Status"] == "error"
    assert len(json.dumps(reply).encode()) < CONNECT_REPLY_MAX_BYTES


def test_no_generated_event_wrote_audio(cloud, connect):
    # The Connect parser never writes to S3 (only the workflow does, and none was started here)
    before = _bucket(cloud)
    clients, settings_, _ = connect
    for value in HOSTILE:
        streams.handle(clients, settings_, {"Details": {"ContactData": {"ContactId": "c1"},
                                                        "Parameters": {"Action": "get_next_batch", "StreamId": value,
                                                                       "NextIndex": value, "BatchSize": value}}},
                       remaining_ms=500, clock=VirtualClock())
    assert _bucket(cloud) == before


@pytest.mark.parametrize("value", ["..", "a/b", "x" * 65, "-x", "_x", "a b", "ä", "a.b"])
def test_stream_ids_that_could_escape_the_prefix_are_refused(value):
    assert not STREAM_ID_PATTERN.fullmatch(value)
    assert all(c in string.ascii_letters + string.digits + "-_" for c in "a-Z_9")
