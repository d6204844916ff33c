"""The contact flow files, and the local phone that runs calls through them.

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
    Caller,
    FlowError,
    KeyPress,
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
    for apology in ("FallbackEnglish", "FallbackKorean"):
        assert actions[apology]["Type"] == "MessageParticipant" and actions[apology]["Parameters"]["Text"]
        assert actions[actions[apology]["Transitions"]["NextAction"]]["Type"] == "DisconnectParticipant"


HANGUL = re.compile(r"[\uac00-\ud7a3]")


def test_the_apology_is_spoken_in_the_contacts_language(flow):
    fallback = actions_of(flow)["Fallback"]

    assert fallback["Type"] == "Compare" and fallback["Parameters"]["ComparisonValue"] == "$.LanguageCode"
    assert [(c["Condition"]["Operands"], c["NextAction"]) for c in fallback["Transitions"]["Conditions"]] == [
        (["ko-KR"], "FallbackKorean")]
    assert fallback["Transitions"]["NextAction"] == "FallbackEnglish"
    assert HANGUL.search(text_of(flow, "FallbackKorean")) and text_of(flow, "FallbackKorean").endswith("안녕히 계세요.")
    assert text_of(flow, "FallbackEnglish").isascii() and text_of(flow, "FallbackEnglish").endswith("Goodbye.")


@pytest.mark.parametrize("language, apology", [("en-US", "FallbackEnglish"), ("ko-KR", "FallbackKorean"),
                                               ("ja-JP", "FallbackEnglish")])
def test_a_caller_hears_the_apology_in_their_language(flow, language, apology):
    lam = ScriptedLambda(reply(status="error", final=True, error="The stream cannot be read."))

    report = call(flow, lam, caller=Caller(language=language))

    assert report.messages == [text_of(flow, apology)]
    assert report.path == ["StartStream", "SaveProgress", "CheckStatus", "Fallback", apology, "EndAfterFallback"]


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
    assert report.messages == [text_of(flow, "FallbackEnglish")]
    assert report.ended_by == "EndAfterFallback"


def test_a_failed_stream_plays_its_parts_then_the_apology(flow):
    url = "https://bucket.s3.us-east-1.amazonaws.com/stream-1/0.wav"
    lam = ScriptedLambda(reply(status="failed", urls=[url], next_index=1, final=True, error="part 1 failed"))

    report = call(flow, lam, {url: part_wav()})

    assert [part["url"] for part in report.parts] == [url]
    assert report.messages == [text_of(flow, "FallbackEnglish")]
    assert report.ended_by == "EndAfterFallback"


def test_a_lambda_that_raises_goes_to_the_apology(flow):
    lam = ScriptedLambda(RuntimeError("Task timed out"))

    report = call(flow, lam)

    assert report.path == ["StartStream", "Fallback", "FallbackEnglish", "EndAfterFallback"]
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


# --- the chat flow: listen, ask, play interruptibly, listen again -----------------------------------------
# Read from template.yaml (resource ChatFlow), as CloudFormation deploys it.

CHAT_FLOW_TEXT = TEMPLATE.body["Resources"]["ChatFlow"]["Properties"]["Content"]["Fn::Sub"][0]
FAKE_LEX_ARN = "arn:aws:lex:us-east-1:123456789012:bot-alias/BOTID12345/ALIAS12345"
PART_WAIT_MS = 1000  # the part blocks' InputTimeLimitSeconds: the wait for a key after each part


@pytest.fixture(scope="module")
def chat_flow():
    return json.loads(CHAT_FLOW_TEXT.replace("${ConnectFunctionArn}", FAKE_ARN)
                      .replace("${LexBotAliasArn}", FAKE_LEX_ARN))


def part_blocks(flow):
    return [a for a in flow["Actions"] if a["Type"] == "GetParticipantInput" and "Media" in a["Parameters"]]


def said(flow, value, prompts="EnglishPrompts"):
    """What a prompt value says: itself, or the *Text attribute it reads as the `prompts` block sets it."""
    attribute = re.fullmatch(r"\$\.Attributes\.(\w+Text)", value)
    return actions_of(flow)[prompts]["Parameters"]["Attributes"][attribute.group(1)] if attribute else value


def listen_prompt(flow, identifier, prompts="EnglishPrompts"):
    return said(flow, actions_of(flow)[identifier]["Parameters"]["Attributes"]["ListenPrompt"], prompts)


def text_of(flow, identifier, prompts="EnglishPrompts"):
    return said(flow, actions_of(flow)[identifier]["Parameters"]["Text"], prompts)


def errors_of(action):
    return {error["ErrorType"]: error["NextAction"] for error in action["Transitions"].get("Errors", [])}


def chat_reply(turn="1", stream_id="stream-1", **kwargs):
    return {**reply(stream_id=stream_id, **kwargs), "Turn": turn}


def stop_reply(stream_id="stream-1"):
    return reply(status="cancelled", final=True, stream_id=stream_id)


def urls_of(stream_id, count):
    return [f"https://bucket.s3.us-east-1.amazonaws.com/streams/{stream_id}/part{i:04d}.wav" for i in range(count)]


def lambda_params(lam):
    return [event["Details"]["Parameters"] for _, event in lam.calls]


def chat_call(flow, lam, urls=(), caller=None, **kwargs):
    store = {url: part_wav() for url in urls}
    kwargs.setdefault("speed", FAST)
    return simulate_call(flow, contact_id="contact-1", attributes={}, invoke_lambda=lam,
                         fetch_part=lambda url: store[url], caller=caller, **kwargs)


def test_the_chat_flow_is_json_whose_placeholders_are_the_function_and_the_bot(chat_flow):
    placeholders = re.findall(r"\$\{([^}]*)\}", CHAT_FLOW_TEXT)

    assert sorted(placeholders) == ["ConnectFunctionArn"] * 3 + ["LexBotAliasArn"]
    assert {action["Type"] for action in chat_flow["Actions"]} <= ACTION_TYPES
    check_flow(chat_flow)


def test_the_chat_flow_asks_for_as_many_parts_as_it_has_part_blocks(chat_flow):
    indexes = sorted(int(re.fullmatch(r"\$\.External\.Part(\d+)Url", a["Parameters"]["Media"]["Uri"]).group(1))
                     for a in part_blocks(chat_flow))
    batch_sizes = [a["Parameters"]["LambdaInvocationAttributes"].get("BatchSize") for a in lambda_blocks(chat_flow)]

    assert indexes == list(range(5))
    assert sorted(batch_sizes, key=str) == ["5", "5", None]  # chat_and_stream, get_next_batch; stop has none


def test_every_part_plays_from_s3_and_any_key_stops_the_stream(chat_flow):
    for block in part_blocks(chat_flow):
        params, transitions = block["Parameters"], block["Transitions"]
        next_block = transitions["NextAction"]

        assert params["Media"]["SourceType"] == "S3" and params["Media"]["MediaType"] == "Audio"
        assert params["StoreInput"] == "False" and params["InputTimeLimitSeconds"] == str(PART_WAIT_MS // 1000)
        assert re.fullmatch(r"HasPart\d|CheckFinal", next_block)
        assert {c["NextAction"] for c in transitions["Conditions"]} == {"StopStream"}
        assert errors_of(block) == {"InputTimeLimitExceeded": next_block, "NoMatchingCondition": "StopStream",
                                    "NoMatchingError": "Apology"}


def test_the_chat_flow_listens_through_the_lex_bot_with_a_spoken_prompt(chat_flow):
    listen = actions_of(chat_flow)["Listen"]
    params = listen["Parameters"]

    assert listen["Type"] == "ConnectParticipantWithLexBot"
    assert params["LexV2Bot"] == {"AliasArn": FAKE_LEX_ARN}
    assert params["Text"] == "$.Attributes.ListenPrompt" and "Media" not in params
    assert params["LexSessionAttributes"]["Heard"] == "no", "each Listen must forget the previous question"
    assert listen["Transitions"]["Conditions"] == [
        {"NextAction": "SayGoodbye", "Condition": {"Operator": "Equals", "Operands": ["Goodbye"]}}]
    assert errors_of(listen) == {"NoMatchingCondition": "CheckHeard", "InputTimeLimitExceeded": "CheckSilence",
                                 "NoMatchingError": "CheckSilence"}


def test_the_chat_flow_sends_the_contract_parameters(chat_flow):
    actions = actions_of(chat_flow)

    assert actions["Ask"]["Parameters"]["LambdaInvocationAttributes"] == {
        "Action": "chat_and_stream", "Question": "$.Lex.SessionAttributes.Question",
        "PreviousTurn": "$.Attributes.Turn", "BatchSize": "5"}
    assert actions["GetNextBatch"]["Parameters"]["LambdaInvocationAttributes"] == {
        "Action": "get_next_batch", "StreamId": "$.Attributes.StreamId", "NextIndex": "$.Attributes.NextIndex",
        "BatchSize": "5"}
    assert actions["StopStream"]["Parameters"]["LambdaInvocationAttributes"] == {
        "Action": "stop", "StreamId": "$.Attributes.StreamId"}
    for block in lambda_blocks(chat_flow):
        assert block["Parameters"]["LambdaFunctionARN"] == FAKE_ARN
        assert block["Parameters"]["InvocationTimeLimitSeconds"] == "8"
        assert block["Parameters"]["ResponseValidation"] == {"ResponseType": "STRING_MAP"}


def test_every_failure_in_a_turn_apologises_then_listens_again_within_an_error_budget(chat_flow):
    actions = actions_of(chat_flow)
    for identifier in ("Ask", "SaveTurn", "SaveProgress", "GetNextBatch"):
        assert errors_of(actions[identifier]) == {"NoMatchingError": "Apology"}
    budget = actions[actions["Apology"]["Transitions"]["NextAction"]]

    assert budget["Type"] == "Loop"
    assert {c["Condition"]["Operands"][0]: c["NextAction"] for c in budget["Transitions"]["Conditions"]} == {
        "ContinueLooping": "PromptRetry", "DoneLooping": "EndAfterErrors"}
    assert actions["PromptRetry"]["Transitions"]["NextAction"] == "Listen"


def test_a_lex_block_with_an_s3_prompt_is_refused(chat_flow):
    odd = json.loads(json.dumps(chat_flow))
    params = actions_of(odd)["Listen"]["Parameters"]
    del params["Text"]
    params["Media"] = {"Uri": "$.Attributes.PromptUrl", "SourceType": "S3", "MediaType": "Audio"}

    with pytest.raises(FlowError, match="cannot play an S3 prompt with an Amazon Lex V2 bot"):
        check_flow(odd)


def test_a_dtmf_block_needs_a_static_time_limit_and_single_key_conditions(chat_flow):
    odd = json.loads(json.dumps(chat_flow))
    part = actions_of(odd)["PlayPart0"]
    part["Parameters"]["InputTimeLimitSeconds"] = "$.Attributes.Wait"
    part["Transitions"]["Conditions"][0]["Condition"]["Operands"] = ["12"]

    with pytest.raises(FlowError, match="InputTimeLimitSeconds") as raised:
        check_flow(odd)
    assert "one static key" in str(raised.value)


def test_a_two_question_call_answers_each_turn_in_order_then_ends_when_the_caller_goes_quiet(chat_flow):
    first, second = urls_of("stream-1", 2), urls_of("stream-2", 7)
    lam = ScriptedLambda(
        chat_reply("1", "stream-1", status="complete", urls=first, next_index=2, final=True),
        chat_reply("2", "stream-2"),  # the chatbot is still thinking: no part yet
        reply(stream_id="stream-2", urls=second[:5], next_index=5),
        reply(stream_id="stream-2", status="complete", urls=second[5:], next_index=7, final=True))
    caller = Caller(questions=["What are your opening hours?", "Do you deliver?"])

    report = chat_call(chat_flow, lam, first + second, caller)

    ask1, ask2, more1, more2 = lambda_params(lam)
    assert ask1 == {"Action": "chat_and_stream", "Question": "What are your opening hours?", "PreviousTurn": "",
                    "BatchSize": "5"}
    assert ask2 == {**ask1, "Question": "Do you deliver?", "PreviousTurn": "1"}
    assert (more1["StreamId"], more1["NextIndex"], more2["NextIndex"]) == ("stream-2", "0", "5")
    assert [part["url"] for part in report.parts] == first + second
    assert [(t["question"], t["turn"], t["stream_id"], t["parts"], t["interrupted"]) for t in report.turns] == [
        ("What are your opening hours?", "1", "stream-1", first, False),
        ("Do you deliver?", "2", "stream-2", second, False)]
    assert all(t["ttfa_ms"] >= 0 for t in report.turns)
    assert report.gaps_ms[0] >= PART_WAIT_MS / FAST, "each part waits for a key before the next one"
    assert report.messages == [
        listen_prompt(chat_flow, "PromptFirst"), listen_prompt(chat_flow, "PromptAgain"),
        listen_prompt(chat_flow, "PromptAgain"), listen_prompt(chat_flow, "MarkSilence"),
        text_of(chat_flow, "EndSilentCall")]
    assert report.ended_by == "EndCall" and report.audio_ulaw == bytes([SILENCE]) * (8 * PART_MS * 9)


def test_a_key_press_stops_the_turn_and_the_flow_listens_again(chat_flow):
    first, second = urls_of("stream-1", 5), urls_of("stream-2", 1)
    lam = ScriptedLambda(chat_reply("1", "stream-1", urls=first, next_index=5),
                         stop_reply("stream-1"),
                         chat_reply("2", "stream-2", status="complete", urls=second, next_index=1, final=True))
    caller = Caller(questions=["Tell me everything.", "Just the summary, please."],
                    presses=[KeyPress(turn=0, part=1, after_ms=40)])

    report = chat_call(chat_flow, lam, first + second, caller)

    ask1, stop, ask2 = lambda_params(lam)
    assert stop == {"Action": "stop", "StreamId": "stream-1"}
    assert ask2["PreviousTurn"] == "1" and ask2["Question"] == "Just the summary, please."
    assert [part["url"] for part in report.parts] == first[:2] + second, "nothing of the stopped turn plays later"
    assert report.parts[1]["interrupted"] and report.parts[1]["heard_ms"] == 40
    assert report.audio_ulaw == bytes([SILENCE]) * (8 * (PART_MS + 40 + PART_MS))
    assert [t["interrupted"] for t in report.turns] == [True, False]
    assert report.turns[0]["parts"] == first[:2]
    assert report.messages[:2] == [listen_prompt(chat_flow, "PromptFirst"),
                                   listen_prompt(chat_flow, "PromptAfterStop")]
    at = report.path.index("StopStream")
    assert report.path[at - 1:at + 3] == ["PlayPart1", "StopStream", "PromptAfterStop", "Listen"]


def test_play_prompt_cannot_be_interrupted(chat_flow):
    plain = json.loads(json.dumps(chat_flow))
    part = actions_of(plain)["PlayPart1"]
    part.update(Type="MessageParticipant", Parameters={"Media": part["Parameters"]["Media"]},
                Transitions={"NextAction": "HasPart2",
                             "Errors": [{"NextAction": "Apology", "ErrorType": "NoMatchingError"}]})
    urls = urls_of("stream-1", 3)
    lam = ScriptedLambda(chat_reply(status="complete", urls=urls, next_index=3, final=True))

    report = chat_call(plain, lam, urls, Caller(questions=["Hi?"], presses=[KeyPress(turn=0, part=1, after_ms=40)]))

    assert [part["url"] for part in report.parts] == urls
    assert "heard_ms" not in report.parts[1] and report.turns[0]["interrupted"] is False
    assert [p["Action"] for p in lambda_params(lam)] == ["chat_and_stream"]


@pytest.mark.parametrize("failure", [
    RuntimeError("Task timed out"),
    chat_reply(status="error", final=True, error="Question is missing."),
    chat_reply(status="not_found", final=True, error="No such stream."),
], ids=["lambda-raises", "status-error", "status-not-found"])
def test_a_failed_turn_apologises_and_the_flow_listens_again(chat_flow, failure):
    answer = urls_of("stream-2", 1)
    lam = ScriptedLambda(failure, chat_reply("2", "stream-2", status="complete", urls=answer, next_index=1,
                                             final=True))

    report = chat_call(chat_flow, lam, answer, Caller(questions=["First?", "Second?"]))

    assert report.messages[:3] == [listen_prompt(chat_flow, "PromptFirst"), text_of(chat_flow, "Apology"),
                                   listen_prompt(chat_flow, "PromptRetry")]
    assert [part["url"] for part in report.parts] == answer
    assert report.turns[0]["parts"] == [] and report.turns[1]["parts"] == answer
    assert report.ended_by == "EndCall" and "EndAfterErrors" not in report.path


def test_a_reply_without_a_turn_keeps_the_turn_the_flow_already_has(chat_flow):
    urls = urls_of("stream-1", 1)
    refused = reply(status="error", final=True, error="Question is too long.")  # no turn was started
    lam = ScriptedLambda(chat_reply("1", "stream-1", status="complete", urls=urls, next_index=1, final=True),
                         refused, chat_reply("2", "stream-2", status="complete", final=True))

    chat_call(chat_flow, lam, urls, Caller(questions=["First?", "Second?", "Third?"]))

    assert [p["PreviousTurn"] for p in lambda_params(lam)] == ["", "1", "1"]


def test_a_failed_stream_plays_its_parts_then_apologises_and_listens_again(chat_flow):
    urls = urls_of("stream-1", 1)
    lam = ScriptedLambda(chat_reply(status="failed", urls=urls, next_index=1, final=True, error="part 1 failed"))

    report = chat_call(chat_flow, lam, urls, Caller(questions=["Anything?"]))

    assert [part["url"] for part in report.parts] == urls
    assert report.messages[1:3] == [text_of(chat_flow, "Apology"), listen_prompt(chat_flow, "PromptRetry")]


def test_a_part_that_cannot_be_played_apologises_and_listens_again(chat_flow):
    urls = urls_of("stream-1", 2)
    lam = ScriptedLambda(chat_reply(status="complete", urls=urls, next_index=2, final=True))

    report = simulate_call(chat_flow, contact_id="contact-1", attributes={}, invoke_lambda=lam, speed=FAST,
                           fetch_part={urls[0]: part_wav(), urls[1]: pcm16_wav()}.__getitem__,
                           caller=Caller(questions=["Hello?"]))

    assert [part["url"] for part in report.parts] == urls[:1]
    assert report.errors[0].startswith("PlayPart1: cannot play")
    assert text_of(chat_flow, "Apology") in report.messages and report.ended_by == "EndCall"


def test_an_old_turn_that_was_cancelled_goes_back_to_listening_without_an_apology(chat_flow):
    lam = ScriptedLambda(chat_reply(status="cancelled", final=True))

    report = chat_call(chat_flow, lam, caller=Caller(questions=["Hello?"]))

    assert report.parts == [] and text_of(chat_flow, "Apology") not in report.messages
    assert report.messages[1] == listen_prompt(chat_flow, "PromptAgain")


def test_three_failed_turns_end_the_call(chat_flow):
    lam = ScriptedLambda(*[RuntimeError("throttled")] * 3)

    report = chat_call(chat_flow, lam, caller=Caller(questions=[f"Question {i}?" for i in range(5)]))

    assert report.lambda_invocations == 3 and len(report.turns) == 3
    assert report.messages.count(text_of(chat_flow, "Apology")) == 3
    assert report.path[-2:] == ["EndAfterErrors", "EndCall"]


@pytest.mark.parametrize("silence", ["fallback", "timeout"])
def test_a_silent_caller_is_asked_once_more_then_the_call_ends(chat_flow, silence):
    lam = ScriptedLambda()

    report = chat_call(chat_flow, lam, caller=Caller(silence=silence))

    assert report.lambda_invocations == 0 and report.turns == [] and report.parts == []
    assert report.messages == [listen_prompt(chat_flow, "PromptFirst"), listen_prompt(chat_flow, "MarkSilence"),
                               text_of(chat_flow, "EndSilentCall")]
    assert report.path.count("Listen") == 2 and report.ended_by == "EndCall"


def test_a_question_resets_the_silence_count(chat_flow):
    urls = urls_of("stream-1", 1)
    lam = ScriptedLambda(chat_reply(status="complete", urls=urls, next_index=1, final=True))

    report = chat_call(chat_flow, lam, urls, Caller(questions=[None, "Are you there?"]))

    assert report.messages.count(listen_prompt(chat_flow, "MarkSilence")) == 2
    assert report.path.count("Listen") == 4 and report.ended_by == "EndCall"


def test_saying_goodbye_ends_the_call(chat_flow):
    urls = urls_of("stream-1", 1)
    lam = ScriptedLambda(chat_reply(status="complete", urls=urls, next_index=1, final=True))

    report = chat_call(chat_flow, lam, urls, Caller(questions=["What time is it?", "Goodbye!"]))

    assert len(report.turns) == 1 and report.lambda_invocations == 1
    assert report.messages[-1] == text_of(chat_flow, "SayGoodbye")
    assert report.path[-2:] == ["SayGoodbye", "EndCall"]


def test_the_chat_flow_picks_its_prompts_by_the_contacts_language(chat_flow):
    actions = actions_of(chat_flow)
    pick = actions[chat_flow["StartAction"]]
    english = actions["EnglishPrompts"]["Parameters"]["Attributes"]
    korean = actions["KoreanPrompts"]["Parameters"]["Attributes"]
    read = set(re.findall(r"\$\.Attributes\.(\w+Text)\b", json.dumps(chat_flow)))

    assert pick["Type"] == "Compare" and pick["Parameters"]["ComparisonValue"] == "$.LanguageCode"
    assert [(c["Condition"]["Operands"], c["NextAction"]) for c in pick["Transitions"]["Conditions"]] == [
        (["ko-KR"], "KoreanPrompts")]
    assert pick["Transitions"]["NextAction"] == "EnglishPrompts"
    assert {actions[block]["Transitions"]["NextAction"] for block in ("EnglishPrompts", "KoreanPrompts")} == {
        "PromptFirst"}
    assert set(english) == set(korean) == read, "every prompt the flow reads is set in both languages"
    assert all(text.isascii() for text in english.values())
    assert all(HANGUL.search(text) for text in korean.values())
    assert not [a["Identifier"] for a in chat_flow["Actions"] if a["Type"] == "MessageParticipant"
                and not a["Parameters"]["Text"].startswith("$.Attributes.")], "a prompt spoken in one language only"


def test_a_korean_caller_hears_the_flows_prompts_in_korean_and_can_say_goodbye_in_korean(chat_flow):
    urls = urls_of("stream-1", 1)
    lam = ScriptedLambda(chat_reply(status="complete", urls=urls, next_index=1, final=True))

    report = chat_call(chat_flow, lam, urls, Caller(questions=["영업시간이 어떻게 되나요?", "안녕히 계세요."],
                                                    language="ko-KR"))

    assert lambda_params(lam)[0]["Question"] == "영업시간이 어떻게 되나요?"
    assert report.messages == [listen_prompt(chat_flow, "PromptFirst", "KoreanPrompts"),
                               listen_prompt(chat_flow, "PromptAgain", "KoreanPrompts"),
                               text_of(chat_flow, "SayGoodbye", "KoreanPrompts")]
    assert report.messages[-1] == "전화해 주셔서 감사합니다. 안녕히 계세요."
    assert report.path[:3] == ["PickLanguage", "KoreanPrompts", "PromptFirst"] and report.ended_by == "EndCall"


def test_english_goodbyes_do_not_end_a_korean_call_nor_korean_ones_an_english_call(chat_flow):
    urls = urls_of("stream-1", 1) + urls_of("stream-2", 1)
    lam = ScriptedLambda(chat_reply(status="complete", urls=urls[:1], next_index=1, final=True),
                         chat_reply(turn="2", stream_id="stream-2", status="complete", urls=urls[1:], next_index=1,
                                    final=True))

    korean = chat_call(chat_flow, lam, urls, Caller(questions=["Goodbye"], language="ko-KR"))
    english = chat_call(chat_flow, lam, urls, Caller(questions=["안녕히 계세요"]))

    assert [t["question"] for t in korean.turns + english.turns] == ["Goodbye", "안녕히 계세요"]
    assert "SayGoodbye" not in korean.path + english.path


def test_a_contact_language_the_bot_has_no_locale_for_fails_the_listen_block(chat_flow):
    lam = ScriptedLambda()

    report = chat_call(chat_flow, lam, caller=Caller(questions=["こんにちは"], language="ja-JP"))

    assert report.lambda_invocations == 0 and report.turns == []
    assert report.messages[0] == listen_prompt(chat_flow, "PromptFirst", "EnglishPrompts")
    assert "no locale for the contact's language ja-JP" in report.errors[0]
    assert report.ended_by == "EndCall"


def test_the_chat_report_is_json_with_its_turns(chat_flow):
    urls = urls_of("stream-1", 2)
    lam = ScriptedLambda(chat_reply(urls=urls, next_index=2), stop_reply())
    report = chat_call(chat_flow, lam, urls, Caller(questions=["Hi?"], presses=[KeyPress(0, 0, after_ms=10)]))

    data = json.loads(json.dumps(report.to_json()))

    assert data["turns"] == [{"question": "Hi?", "turn": "1", "stream_id": "stream-1", "parts": urls[:1],
                              "interrupted": True, "asked_ms": data["turns"][0]["asked_ms"],
                              "ttfa_ms": data["turns"][0]["ttfa_ms"]}]
    assert data["parts"][0]["heard_ms"] == 10 and data["parts"][0]["turn"] == 0


@pytest.mark.parametrize("bad", [
    lambda: KeyPress(turn=0, part=0, key="A"),
    lambda: KeyPress(turn=-1, part=0),
    lambda: Caller(questions="one question"),
    lambda: Caller(silence="hang up"),
    lambda: Caller(presses=[KeyPress(0, 1), KeyPress(0, 1, after_ms=5)]),
    lambda: Caller(language="korean"),
    lambda: Caller(language="ko-kr"),
], ids=["key", "turn", "questions-string", "silence", "two-presses", "language-name", "language-case"])
def test_a_caller_script_that_cannot_happen_is_refused(bad):
    with pytest.raises(ValueError):
        bad()
