"""The contact flow file, and the local phone that runs calls through it.

The flow tests read the flow from template.yaml (StreamAnswerFlow) as CloudFormation would deploy it. The call tests script the Lambda's
replies only to drive the phone's branching; end-to-end calls against the real Lambda live elsewhere.
"""

import io
import json
import re
import time
import wave
from pathlib import Path

import pytest

from localcloud.phone import (
    ACTION_TYPES,
    FlowError,
    LambdaReplyError,
    check_flow,
    simulate_call,
    successors,
)
from localcloud import runs
from localcloud import template as cfn
from tts_stream.audio import read_connect_wav, ulaw_wav

TEMPLATE = cfn.load(Path(__file__).resolve().parents[2] / "template.yaml")
FLOW_TEXT = TEMPLATE.body["Resources"]["StreamAnswerFlow"]["Properties"]["Content"]["Fn::Sub"][0]
FAKE_ARN = "arn:aws:lambda:us-east-1:123456789012:function:connect-tts-stream-ConnectFunction"
SILENCE = 0xFF  # u-law code for zero amplitude
PART_MS = 100
FAST = 20.0  # playback speed for call tests: a 100 ms part sleeps 5 ms


@pytest.fixture(scope="module")
def flow():
    TEMPLATE.physical["ConnectFunction"] = {"Ref": FAKE_ARN, "Arn": FAKE_ARN}
    return runs.template_flow(TEMPLATE)


def actions_of(flow):
    return {action["Identifier"]: action for action in flow["Actions"]}


def lambda_blocks(flow):
    return [a for a in flow["Actions"] if a["Type"] == "InvokeLambdaFunction"]


def play_part_blocks(flow):
    return [a for a in flow["Actions"] if a["Type"] == "MessageParticipant" and "Media" in a["Parameters"]]


# --- the flow file -----------------------------------------------------------------------------------------


def test_the_templates_flow_is_json_whose_only_placeholder_is_the_function_arn(flow):
    text = FLOW_TEXT

    json.loads(text)
    placeholders = re.findall(r"\$\{([^}]*)\}", text)

    assert placeholders == ["ConnectFunctionArn"] * 2, "any other ${...} would be eaten by !Sub in template.yaml"


def test_flow_is_version_2019_10_30_and_uses_only_action_types_the_phone_runs(flow):
    assert flow["Version"] == "2019-10-30"
    assert {action["Type"] for action in flow["Actions"]} <= ACTION_TYPES


def test_every_transition_target_exists(flow):
    actions = actions_of(flow)

    assert flow["StartAction"] in actions
    assert len(actions) == len(flow["Actions"]), "identifiers must be unique"
    for action in flow["Actions"]:
        for target in successors(action):
            assert target in actions, f"{action['Identifier']} goes to missing {target}"


def test_every_path_from_the_start_reaches_a_disconnect(flow):
    actions = actions_of(flow)
    reachable, todo = set(), [flow["StartAction"]]
    while todo:
        identifier = todo.pop()
        if identifier not in reachable:
            reachable.add(identifier)
            todo.extend(successors(actions[identifier]))

    def reaches_disconnect(identifier, seen=frozenset()):
        action = actions[identifier]
        if action["Type"] == "DisconnectParticipant":
            return True
        return any(reaches_disconnect(t, seen | {identifier}) for t in successors(action) if t not in seen)

    for identifier in reachable:
        action = actions[identifier]
        if action["Type"] == "DisconnectParticipant":
            assert action["Transitions"] == {}
        else:
            assert action["Transitions"]["NextAction"], f"{identifier} is a dead end"
        assert reaches_disconnect(identifier), f"a caller at {identifier} can never hang up"
    check_flow(flow)


def test_batch_size_equals_the_number_of_play_part_blocks(flow):
    indexes = sorted(int(re.fullmatch(r"\$\.External\.Part(\d+)Url", a["Parameters"]["Media"]["Uri"]).group(1))
                     for a in play_part_blocks(flow))
    batch_sizes = [a["Parameters"]["LambdaInvocationAttributes"]["BatchSize"] for a in lambda_blocks(flow)]

    assert indexes == list(range(5))
    assert batch_sizes == [str(len(indexes))] * 2
    assert FLOW_TEXT.count('"BatchSize"') == 2


def test_play_part_blocks_play_wavs_from_s3(flow):
    for block in play_part_blocks(flow):
        assert block["Parameters"]["Media"]["SourceType"] == "S3"
        assert block["Parameters"]["Media"]["MediaType"] == "Audio"


def test_lambda_blocks_send_the_contract_parameters(flow):
    actions = actions_of(flow)
    start, more = actions["StartStream"]["Parameters"], actions["GetNextBatch"]["Parameters"]

    assert start["LambdaInvocationAttributes"] == {
        "Action": "start_stream", "Text": "$.Attributes.AnswerText", "BatchSize": "5"}
    assert more["LambdaInvocationAttributes"] == {
        "Action": "get_next_batch", "StreamId": "$.Attributes.StreamId", "NextIndex": "$.Attributes.NextIndex",
        "BatchSize": "5"}
    for params in (start, more):
        assert params["LambdaFunctionARN"] == FAKE_ARN
        assert params["InvocationTimeLimitSeconds"] == "8"
        assert params["ResponseValidation"] == {"ResponseType": "STRING_MAP"}


def test_progress_is_copied_from_the_lambda_reply_into_contact_attributes(flow):
    save = actions_of(flow)["SaveProgress"]

    assert save["Type"] == "UpdateContactAttributes"
    assert save["Parameters"]["Attributes"] == {
        "StreamId": "$.External.StreamId", "NextIndex": "$.External.NextIndex", "Final": "$.External.Final"}
    assert actions_of(flow)["StartStream"]["Transitions"]["NextAction"] == "SaveProgress"
    assert actions_of(flow)["GetNextBatch"]["Transitions"]["NextAction"] == "SaveProgress"


def test_every_lambda_and_play_error_goes_to_the_apology_then_hangs_up(flow):
    actions = actions_of(flow)
    for block in lambda_blocks(flow) + play_part_blocks(flow):
        assert block["Transitions"]["Errors"] == [{"NextAction": "Fallback", "ErrorType": "NoMatchingError"}]
    fallback = actions["Fallback"]

    assert fallback["Type"] == "MessageParticipant" and fallback["Parameters"]["Text"]
    assert actions[fallback["Transitions"]["NextAction"]]["Type"] == "DisconnectParticipant"


# --- calls through the flow --------------------------------------------------------------------------------


def part_wav(ms=PART_MS):
    return ulaw_wav(bytes([SILENCE]) * (8 * ms))


def pcm16_wav():
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x00" * 800)
    return buffer.getvalue()


def reply(status="streaming", urls=(), next_index=0, final=False, stream_id="stream-1", error=""):
    parts = {f"Part{i}Url": (urls[i] if i < len(urls) else "") for i in range(5)}
    return {"StreamId": stream_id, "Status": status, "Count": str(len(urls)), **parts,
            "NextIndex": str(next_index), "Final": "true" if final else "false", "Error": error}


class ScriptedLambda:
    """Replies (or raises) from a script, one step per invocation, and keeps every event it got."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.calls = []

    def __call__(self, arn, event):
        self.calls.append((arn, event))
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        if callable(step):
            return step()
        return step


def call(flow, lam, parts=None, **kwargs):
    store = parts or {}
    kwargs.setdefault("speed", FAST)
    return simulate_call(flow, contact_id="contact-1", attributes={"AnswerText": "Hello there."},
                         invoke_lambda=lam, fetch_part=lambda url: store[url], **kwargs)


def test_a_stream_plays_every_part_in_order_then_hangs_up(flow):
    urls = [f"https://bucket.s3.us-east-1.amazonaws.com/stream-1/{i}.wav" for i in range(7)]
    lam = ScriptedLambda(reply(urls=urls[:5], next_index=5),
                         reply(status="complete", urls=urls[5:], next_index=7, final=True))

    report = call(flow, lam, {url: part_wav() for url in urls})

    assert [part["url"] for part in report.parts] == urls
    assert all(part["duration_ms"] == pytest.approx(PART_MS) for part in report.parts)
    assert report.final is True and report.status == "complete" and report.stream_id == "stream-1"
    assert report.ended_by == "EndCall" and report.messages == []
    assert report.lambda_invocations == 2
    assert report.audio_ulaw == bytes([SILENCE]) * (8 * PART_MS * 7)
    assert report.ttfa_ms == report.parts[0]["played_ms"]
    assert len(report.gaps_ms) == 6 and all(gap >= 0 for gap in report.gaps_ms)


def test_the_lambda_gets_a_connect_event_with_the_flow_parameters(flow):
    url = "https://bucket.s3.us-east-1.amazonaws.com/stream-1/0.wav"
    lam = ScriptedLambda(reply(urls=[url], next_index=1), reply(status="complete", next_index=1, final=True))

    call(flow, lam, {url: part_wav()})

    (arn, first), (_, second) = lam.calls
    assert arn == FAKE_ARN
    assert first["Name"] == "ContactFlowEvent"
    contact = first["Details"]["ContactData"]
    assert contact["ContactId"] == contact["InitialContactId"] == "contact-1"
    assert contact["Channel"] == "VOICE" and contact["InstanceARN"].startswith("arn:aws:connect:")
    assert contact["Attributes"] == {"AnswerText": "Hello there."}
    assert first["Details"]["Parameters"] == {"Action": "start_stream", "Text": "Hello there.", "BatchSize": "5"}
    assert second["Details"]["Parameters"] == {
        "Action": "get_next_batch", "StreamId": "stream-1", "NextIndex": "1", "BatchSize": "5"}
    assert second["Details"]["ContactData"]["Attributes"] == {
        "AnswerText": "Hello there.", "StreamId": "stream-1", "NextIndex": "1", "Final": "false"}


def test_an_empty_batch_that_is_not_final_asks_again(flow):
    url = "https://bucket.s3.us-east-1.amazonaws.com/stream-1/0.wav"
    lam = ScriptedLambda(reply(), reply(), reply(status="complete", urls=[url], next_index=1, final=True))

    report = call(flow, lam, {url: part_wav()})

    assert report.lambda_invocations == 3
    assert [part["url"] for part in report.parts] == [url]
    assert report.path.count("GetNextBatch") == 2 and report.ended_by == "EndCall"


@pytest.mark.parametrize("status", ["error", "not_found"])
def test_an_error_status_plays_the_apology_and_hangs_up(flow, status):
    lam = ScriptedLambda(reply(status=status, final=True, error="The stream cannot be read."))

    report = call(flow, lam)

    assert report.parts == [] and report.ttfa_ms is None
    assert report.status == status and report.final is True
    assert report.messages == [actions_of(flow)["Fallback"]["Parameters"]["Text"]]
    assert report.ended_by == "EndAfterFallback"


def test_a_failed_stream_plays_its_parts_then_the_apology(flow):
    url = "https://bucket.s3.us-east-1.amazonaws.com/stream-1/0.wav"
    lam = ScriptedLambda(reply(status="failed", urls=[url], next_index=1, final=True, error="part 1 failed"))

    report = call(flow, lam, {url: part_wav()})

    assert [part["url"] for part in report.parts] == [url]
    assert report.messages == [actions_of(flow)["Fallback"]["Parameters"]["Text"]]
    assert report.ended_by == "EndAfterFallback"


def test_a_lambda_that_raises_goes_to_the_apology(flow):
    lam = ScriptedLambda(RuntimeError("Task timed out"))

    report = call(flow, lam)

    assert report.path == ["StartStream", "Fallback", "EndAfterFallback"]
    assert "RuntimeError: Task timed out" in report.errors[0]


def test_a_lambda_failing_mid_stream_stops_after_the_parts_already_played(flow):
    url = "https://bucket.s3.us-east-1.amazonaws.com/stream-1/0.wav"
    lam = ScriptedLambda(reply(urls=[url], next_index=1), ConnectionError("throttled"))

    report = call(flow, lam, {url: part_wav()})

    assert [part["url"] for part in report.parts] == [url]
    assert report.final is False and report.ended_by == "EndAfterFallback"


def test_a_part_that_is_not_8khz_ulaw_goes_to_the_apology(flow):
    good, bad = (f"https://bucket.s3.us-east-1.amazonaws.com/stream-1/{i}.wav" for i in range(2))
    lam = ScriptedLambda(reply(status="complete", urls=[good, bad], next_index=2, final=True))

    report = call(flow, lam, {good: part_wav(), bad: pcm16_wav()})

    assert [part["url"] for part in report.parts] == [good]
    assert "PlayPart1" in report.path and report.ended_by == "EndAfterFallback"
    assert report.errors and report.errors[0].startswith("PlayPart1: cannot play")


def test_a_part_that_cannot_be_fetched_goes_to_the_apology(flow):
    url = "https://bucket.s3.us-east-1.amazonaws.com/stream-1/missing.wav"
    lam = ScriptedLambda(reply(status="complete", urls=[url], next_index=1, final=True))

    report = call(flow, lam, {})

    assert report.parts == [] and report.ended_by == "EndAfterFallback"


def test_a_reply_that_is_not_a_flat_string_map_is_an_error(flow):
    bad = {**reply(), "Count": 0}

    with pytest.raises(LambdaReplyError, match="Count"):
        call(flow, ScriptedLambda(bad))


def test_a_reply_after_the_time_limit_takes_the_error_branch(flow):
    quick = json.loads(json.dumps(flow))
    actions_of(quick)["StartStream"]["Parameters"]["InvocationTimeLimitSeconds"] = "1"

    def slow():
        time.sleep(1.05)
        return reply(status="complete", final=True)

    report = call(quick, ScriptedLambda(slow))

    assert report.ended_by == "EndAfterFallback" and "past its 1 s limit" in report.errors[0]


def test_gaps_count_the_silence_spent_waiting_for_the_next_batch(flow):
    first, second = (f"https://bucket.s3.us-east-1.amazonaws.com/stream-1/{i}.wav" for i in range(2))

    def late():
        time.sleep(0.2)
        return reply(status="complete", urls=[second], next_index=2, final=True)

    report = call(flow, ScriptedLambda(reply(urls=[first], next_index=1), late),
                  {first: part_wav(), second: part_wav()})

    assert report.gaps_ms[0] >= 200
    assert report.parts[1]["played_ms"] >= report.parts[0]["played_ms"] + PART_MS / FAST + 200


def test_a_flow_that_never_ends_is_stopped(flow):
    lam = ScriptedLambda(*[reply() for _ in range(100)])

    with pytest.raises(FlowError, match="more than 60 actions"):
        call(flow, lam, max_actions=60)


def test_an_action_type_the_phone_does_not_run_is_named(flow):
    odd = json.loads(json.dumps(flow))
    actions_of(odd)["EndCall"].update(Type="TransferContactToQueue", Transitions={"NextAction": "EndAfterFallback"})

    with pytest.raises(FlowError, match="TransferContactToQueue"):
        call(odd, ScriptedLambda())


def test_the_report_is_json_and_its_audio_is_a_connect_wav(flow, tmp_path):
    urls = [f"https://bucket.s3.us-east-1.amazonaws.com/stream-1/{i}.wav" for i in range(2)]
    lam = ScriptedLambda(reply(status="complete", urls=urls, next_index=2, final=True))
    report = call(flow, lam, {url: part_wav() for url in urls})

    data = json.loads(json.dumps(report.to_json()))
    written = read_connect_wav(report.write_wav(tmp_path / "call.wav").read_bytes())

    assert data["audio_bytes"] == 16 * PART_MS and data["ended_by"] == "EndCall"
    assert [part["url"] for part in data["parts"]] == urls
    assert written.frames == 16 * PART_MS
