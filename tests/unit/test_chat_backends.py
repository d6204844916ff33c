"""Chatbot backends and the Lex hook, without AWS: history bounds, Bedrock's Converse via a botocore Stubber (and
a loopback endpoint that never answers), the HTTP backend against a real bot on 127.0.0.1, and the hook that
hands the caller's words to the flow."""

import io
import json
import socket
import threading
import time

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber
from urllib3.response import HTTPResponse

import lex
from localcloud import chatbot
from tests.loopback import free_port, unanswered_port
from tts_stream import config, pipeline
from tts_stream.chat import (CUT_MARK, MAX_ANSWER_CHARS, MAX_REPLY_BYTES, BedrockChat, ChatError, Exchange, HttpChat,
                             bounded_history)
from tts_stream.errors import InvalidInput


def test_history_keeps_the_most_recent_exchanges_that_fit_both_limits():
    history = [Exchange(f"q{i}", "a" * 100) for i in range(10)]
    kept = bounded_history(history, max_turns=6, max_chars=350)
    assert [e.question for e in kept] == ["q7", "q8", "q9"]
    assert [e.question for e in bounded_history(history, max_turns=6, max_chars=306)] == ["q7", "q8", "q9"]  # exactly
    assert bounded_history(history, max_turns=0, max_chars=10_000) == []
    assert [e.question for e in bounded_history(history, max_turns=2, max_chars=10_000)] == ["q8", "q9"]


def test_an_exchange_longer_than_the_room_left_is_sent_cut_after_a_sentence_and_nothing_older():
    # Given a long last answer (60 sentences of 30 characters) and shorter ones before it
    long_answer = " ".join(f"Sentence {i:02} of the answer." for i in range(60))
    history = [Exchange("q1", "a" * 100), Exchange("q2", "b" * 100), Exchange("q3", long_answer)]

    # When the history may hold 1,000 characters
    kept = bounded_history(history, max_turns=6, max_chars=1000)

    # Then the bot gets the last exchange only, its answer cut after a whole sentence and marked, within the limit
    [last] = kept
    assert last.question == "q3" and last.answer.endswith("answer." + CUT_MARK)
    assert long_answer.startswith(last.answer.removesuffix(CUT_MARK))
    assert 900 < len(last.question) + len(last.answer) <= 1000


def test_an_older_exchange_that_crosses_the_limit_is_cut_after_the_newer_ones_sent_whole():
    history = [Exchange("q1", "x " * 1000), Exchange("q2", "b" * 300), Exchange("q3", "c" * 300)]
    q1, q2, q3 = bounded_history(history, max_turns=6, max_chars=1000)
    assert (q2, q3) == (history[1], history[2])
    assert q1.question == "q1" and q1.answer.startswith("x x ") and q1.answer.endswith("x" + CUT_MARK)
    assert sum(len(e.question) + len(e.answer) for e in (q1, q2, q3)) <= 1000


@pytest.mark.parametrize("answer, cut", [
    ("word " * 100, ("word " * 40).rstrip()),  # no sentence end: at the last space that fits
    ("가나다라 " * 60, ("가나다라 " * 40).rstrip()),
    ("x" * 500, "x" * 200),  # no space at all: a hard cut
    ("One. " + "word " * 100, ("One. " + "word " * 39).rstrip()),  # a sentence end too early to keep only it
], ids=["spaces", "korean", "no-space", "early-sentence"])
def test_an_answer_is_cut_at_a_space_when_no_sentence_ends_in_its_second_half(answer, cut):
    [kept] = bounded_history([Exchange("q", answer)], max_turns=1, max_chars=1 + 200 + len(CUT_MARK))
    assert kept.answer == cut + CUT_MARK


def test_an_exchange_is_not_sent_when_too_little_of_its_answer_would_fit():
    history = [Exchange("q1", "a" * 1000), Exchange("q2", "b" * 100)]
    room_for_199 = 102 + len("q1") + len(CUT_MARK) + 199
    assert bounded_history(history, max_turns=6, max_chars=room_for_199) == [history[1]]
    assert len(bounded_history(history, max_turns=6, max_chars=room_for_199 + 1)) == 2


@pytest.fixture
def bedrock():
    client = boto3.client("bedrock-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        yield client, stub


def test_bedrock_gets_the_conversation_as_alternating_messages(bedrock):
    client, stub = bedrock
    stub.add_response("converse", {
        "output": {"message": {"role": "assistant", "content": [{"text": "It arrives on Friday."}]}},
        "stopReason": "end_turn", "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2},
        "metrics": {"latencyMs": 5}}, {
        "modelId": "model-x",
        "messages": [{"role": "user", "content": [{"text": "Hi"}]},
                     {"role": "assistant", "content": [{"text": "Hello"}]},
                     {"role": "user", "content": [{"text": "When does it arrive?"}]}],
        "system": [{"text": BedrockChat.SYSTEM}],
        "inferenceConfig": {"maxTokens": 400}})
    answer = BedrockChat("model-x", client=client).ask("When does it arrive?", [Exchange("Hi", "Hello")])
    assert answer == "It arrives on Friday."


@pytest.mark.parametrize("code", ["ThrottlingException", "AccessDeniedException", "ValidationException"])
def test_a_bedrock_refusal_is_a_chat_error_naming_the_code(bedrock, code):
    client, stub = bedrock
    stub.add_client_error("converse", service_error_code=code)
    with pytest.raises(ChatError, match=code):
        BedrockChat("model-x", client=client).ask("Hello?", [])


def test_a_bedrock_reply_without_a_message_is_a_chat_error():
    # A Converse output is a union: a newer API may answer with a member this SDK does not know
    client = boto3.client("bedrock-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    reply = json.dumps({"output": {"somethingNew": {}}, "stopReason": "end_turn",
                        "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}, "metrics": {"latencyMs": 5}})
    client.meta.events.register("before-send.bedrock-runtime.Converse", lambda request, **_: AWSResponse(
        request.url, 200, {"Content-Type": "application/json"},
        HTTPResponse(body=io.BytesIO(reply.encode()), preload_content=False)))
    with pytest.raises(ChatError, match="^Bedrock's reply has no message$"):
        BedrockChat("model-x", client=client).ask("Hello?", [])


def test_an_empty_bedrock_answer_is_a_chat_error(bedrock):
    client, stub = bedrock
    stub.add_response("converse", {
        "output": {"message": {"role": "assistant", "content": [{"text": "  "}]}}, "stopReason": "end_turn",
        "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}, "metrics": {"latencyMs": 5}})
    with pytest.raises(ChatError, match="no answer text"):
        BedrockChat("model-x", client=client).ask("Hello?", [])


def test_the_lex_hook_hands_the_transcript_to_the_flow_and_closes_the_intent():
    event = {"inputTranscript": "  where is my order  ", "sessionState": {
        "sessionAttributes": {"x-amz-lex:allow-interrupt:*:*": "true"},
        "intent": {"name": "FallbackIntent", "state": "InProgress"}}}
    state = lex.close(event)["sessionState"]
    assert state["sessionAttributes"]["Question"] == "where is my order"
    assert state["sessionAttributes"]["Heard"] == "yes"
    assert state["sessionAttributes"]["x-amz-lex:allow-interrupt:*:*"] == "true"
    assert state["dialogAction"] == {"type": "Close"}
    assert state["intent"] == {"name": "FallbackIntent", "state": "Fulfilled"}


@pytest.mark.parametrize("event", [{}, {"inputTranscript": "   "}, {"inputTranscript": None}, [], "text"],
                         ids=["empty", "blank", "none", "list", "string"])
def test_the_lex_hook_reports_silence_as_not_heard(event):
    state = lex.close(event)["sessionState"]
    assert state["sessionAttributes"]["Heard"] == "no" and state["sessionAttributes"]["Question"] == ""


# --- the HTTP backend against a real bot on 127.0.0.1 ------------------------------------------------------


@pytest.fixture
def http_bot():
    server, bot, url = chatbot.serve()
    yield bot, url
    server.shutdown()


def test_a_long_korean_answer_in_json_escapes_is_read_whole(http_bot):
    # json.dumps escapes Hangul by default: 6 bytes a character, 102,600 bytes for this answer within the contract
    bot, url = http_bot
    answer = "가나다라마바사아자차" * 1710
    bot.faults.append(chatbot.Fault(body=json.dumps({"answer": answer}).encode()))

    assert HttpChat(url, timeout_s=10).ask("길게 설명해 주세요.", []) == answer


def test_the_bot_gets_the_question_history_contact_and_language_at_its_urls_path_and_query(http_bot):
    bot, url = http_bot
    history = [Exchange("Where is my order?", "It shipped on Monday.")]

    answer = HttpChat(url + "?tenant=shop", auth_header="Bearer b0t").ask(
        "When will it arrive?", history, contact_id="c-1", language="en")

    assert answer == chatbot.answer_for("When will it arrive?", [])
    assert bot.requests == [{"question": "When will it arrive?", "contact_id": "c-1", "language": "en",
                             "history": [{"question": "Where is my order?", "answer": "It shipped on Monday."}]}]
    assert (bot.paths, bot.authorizations) == (["/chat?tenant=shop"], ["Bearer b0t"])


def test_a_chat_url_in_another_script_is_sent_percent_encoded(http_bot):
    bot, url = http_bot
    assert HttpChat(url + "?상점=서울").ask("When will it arrive?", []) == chatbot.answer_for("When will it arrive?", [])
    assert bot.paths == ["/chat?%EC%83%81%EC%A0%90=%EC%84%9C%EC%9A%B8"]


def test_the_longest_answer_is_heard_even_in_the_widest_json_escapes(http_bot):
    # An answer of MAX_ANSWER_CHARS emoji, each 12 bytes escaped as a surrogate pair: the reply limit's worst case
    bot, url = http_bot
    answer = "\U0001f600" * MAX_ANSWER_CHARS
    bot.faults.append(chatbot.Fault(body=json.dumps({"answer": answer}).encode()))

    assert HttpChat(url, timeout_s=10).ask("Smile?", []) == answer


def test_a_bot_slower_than_the_connect_allowance_but_within_the_chat_timeout_is_heard(http_bot):
    # Connecting may take 2 s (CONNECT_S); the answer then has the whole ChatTimeoutMs, not those 2 s
    bot, url = http_bot
    bot.faults.append(chatbot.Fault(delay_s=2.3))

    assert HttpChat(url, timeout_s=4).ask("What are your opening hours?", []) == chatbot.answer_for("hours", [])


@pytest.mark.parametrize("fault, problem", [
    (chatbot.Fault(status=503), "the chatbot answered HTTP 503"),
    (chatbot.Fault(delay_s=1.0), "the chatbot did not answer within 0.4 s"),
    (chatbot.Fault(drop=True), "the chatbot could not be reached: RemoteDisconnected"),
    (chatbot.Fault(body=b'{"reply": "wrong field"}'), "the chatbot's reply has no answer text"),
    (chatbot.Fault(body=b'{"answer": "   "}'), "the chatbot's reply has no answer text"),
    (chatbot.Fault(body=json.dumps({"answer": "x" * (MAX_ANSWER_CHARS + 1)}).encode()),
     f"the chatbot's answer has {MAX_ANSWER_CHARS + 1} characters; the most spoken is {MAX_ANSWER_CHARS}"),
], ids=["5xx", "timeout", "dropped", "no-answer-field", "blank-answer", "answer-too-long"])
def test_each_way_an_http_bot_fails_is_a_chat_error_saying_how(http_bot, fault, problem):
    bot, url = http_bot
    bot.faults.append(fault)
    with pytest.raises(ChatError, match=f"^{problem}$"):
        HttpChat(url, timeout_s=0.4).ask("Hello?", [])


def test_a_bot_nobody_runs_is_a_chat_error_at_once():
    began = time.monotonic()
    with pytest.raises(ChatError, match="^the chatbot could not be reached: ConnectionRefusedError$"):
        HttpChat(f"http://127.0.0.1:{free_port()}/chat", timeout_s=5).ask("Hello?", [])
    assert time.monotonic() - began < 1.0


def test_a_bot_that_does_not_take_the_connection_is_given_up_on_within_the_connect_allowance():
    with unanswered_port() as port:
        with pytest.raises(ChatError, match="^the chatbot could not be reached within 0.3 s$"):
            HttpChat(f"http://127.0.0.1:{port}/chat", timeout_s=0.3).ask("Hello?", [])


@pytest.mark.parametrize("make, problem", [
    (lambda: HttpChat("ftp://bot.example.com/chat"), "ChatUrl 'ftp://bot.example.com/chat' is not an http"),
    (lambda: HttpChat("https:///chat"), "ChatUrl 'https:///chat' is not an http"),
    (lambda: BedrockChat(""), "BedrockModelId is empty"),
])
def test_a_backend_that_cannot_work_is_refused_when_it_is_built(make, problem):
    with pytest.raises(ValueError, match=problem):
        make()


def test_a_reply_bigger_than_any_answer_is_refused_as_too_large_not_as_bad_json(http_bot):
    bot, url = http_bot
    bot.faults.append(chatbot.Fault(body=b'{"answer": "' + b"x" * MAX_REPLY_BYTES + b'"}'))

    with pytest.raises(ChatError, match=f"over {MAX_REPLY_BYTES} bytes"):
        HttpChat(url, timeout_s=10).ask("Tell me everything.", [])


@pytest.mark.parametrize("trickle_s, timeout_s", [(0.05, 0.5), (0.004, 0.6)], ids=["in-the-headers", "in-the-body"])
def test_a_bot_trickling_its_reply_is_cut_off_at_the_chat_timeout(http_bot, trickle_s, timeout_s):
    # Every byte comes well within the socket timeout, but the whole reply does not come within ChatTimeoutMs:
    # at 50 ms a byte it is cut off in the status line and headers; at 4 ms a byte, in the body
    bot, url = http_bot
    bot.faults.append(chatbot.Fault(body=b'{"answer": "' + b"One byte at a time. " * 20 + b'"}', trickle_s=trickle_s))

    began = time.monotonic()
    with pytest.raises(ChatError, match=f"did not answer within {timeout_s:g} s"):
        HttpChat(url, timeout_s=timeout_s).ask("Hello?", [])
    assert time.monotonic() - began < timeout_s + 0.5


def test_json_nested_deeper_than_python_can_parse_is_not_json(http_bot):
    bot, url = http_bot
    bot.faults.append(chatbot.Fault(body=b"[" * 200_000))

    with pytest.raises(ChatError, match="not JSON"):
        HttpChat(url, timeout_s=5).ask("Hello?", [])


def test_a_reply_cut_off_mid_body_is_a_chat_error(http_bot):
    # The bot promises more than it sends, then closes: not taken for a reply that is not JSON
    bot, url = http_bot
    bot.faults.append(chatbot.Fault(body=b'{"answer": "cut', content_length=100))

    with pytest.raises(ChatError, match="cut off 85 bytes short"):
        HttpChat(url, timeout_s=5).ask("Hello?", [])


def test_bedrock_is_asked_once_and_given_up_on_at_the_chat_timeout(monkeypatch):
    # Given a Bedrock endpoint on 127.0.0.1 that accepts connections and never answers
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:  # the listener closed: the test is over
                return

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")

    began = time.monotonic()
    with pytest.raises(ChatError, match="could not be reached: ReadTimeoutError"):
        BedrockChat("model-x", timeout_s=0.5).ask("Hello?", [])
    assert time.monotonic() - began < 2.0
    assert len(accepted) == 1, "asked once: a second try would outlast ChatTimeoutMs"
    listener.close()
    for connection in accepted:
        connection.close()


@pytest.mark.parametrize("text, spoken", [
    ("It ships on Monday. It should arrive by Fri", "It ships on Monday."),
    ("월요일에 발송됩니다. 금요일까지 도착할 예", "월요일에 발송됩니다."),
    ("A sentence cut off before its e", "A sentence cut off before its e"),  # nothing whole: better than nothing
    ("Please call Dr. Kim on Monday. Or ask for the", "Please call Dr. Kim on Monday."),
    ("Here are the steps: 1. Open the app. 2. Tap Sett", "Here are the steps: 1. Open the app."),
    ('He said "Call us back." Then he hung', 'He said "Call us back."'),
    ("Sure thing.\n\nCall Dr. Kim or ask for the", "Sure thing."),
    ("배송은 3일 걸립니다.\n주문하신 상품은", "배송은 3일 걸립니다."),
    # The limit reached exactly at a sentence's end: nothing is cut
    ("It ships on Monday. It should arrive by Friday.\n", "It ships on Monday. It should arrive by Friday."),
    ('He asked "Is it Monday?" She said "Yes, Monday!"', 'He asked "Is it Monday?" She said "Yes, Monday!"'),
    # A last line with no sentence end in it goes whole: a list item or a table row cut off mid-word or mid-price
    ("Here is how:\n1. Open the app\n2. Tap Settings\n3. Choose Res", "Here is how:\n1. Open the app\n2. Tap Settings"),
    ("| Plan | Price |\n|---|---|\n| Basic | $10 |\n| Pro | $2", "| Plan | Price |\n|---|---|\n| Basic | $10 |"),
    ("| Plan | Price |\n|---|---|\n| Basic | $10 |", "| Plan | Price |\n|---|---|\n| Basic | $10 |"),
    ("Steps:\n- Open the app. Then tap Sett", "Steps:\n- Open the app."),
    # A cut-off sentence that began on the line before goes whole, that line's part of it too
    ("We offer three plans. The Basic plan\ncosts $10 and the Pro plan costs $2", "We offer three plans."),
    ("배송은 3일 걸립니다.\n주문하신 상품은 내일\n오전에 도착할 예", "배송은 3일 걸립니다."),
])
def test_a_bedrock_answer_cut_off_at_max_tokens_is_spoken_to_its_last_whole_sentence(bedrock, text, spoken):
    client, stub = bedrock
    stub.add_response("converse", {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}}, "stopReason": "max_tokens",
        "usage": {"inputTokens": 1, "outputTokens": 400, "totalTokens": 401}, "metrics": {"latencyMs": 5}})
    assert BedrockChat("model-x", client=client).ask("When?", []) == spoken


def test_an_unknown_chat_backend_is_refused_naming_the_ones_there_are():
    # The template allows only http and bedrock; a function run with another value (by hand) must say so
    with pytest.raises(InvalidInput, match="chat backend 'lex' is not known; use http or bedrock"):
        pipeline.chat_backend(config.load({"CHAT_BACKEND": "lex"}))


def test_the_bedrock_backend_is_built_with_the_model_and_the_chat_timeout():
    bot = pipeline.chat_backend(config.load({"CHAT_BACKEND": "bedrock", "BEDROCK_MODEL_ID": "model-x",
                                             "CHAT_TIMEOUT_MS": "4000"}))
    assert isinstance(bot, BedrockChat) and (bot.model_id, bot.timeout_s) == ("model-x", 4.0)


TURN = {"stream_id": "c1-t1", "contact_id": "c1", "turn": 1, "question": "Where is my order?"}


@pytest.mark.parametrize("event, message", [
    (["not", "a", "map"], "the chat request must be a JSON object"),
    ({**TURN, "turn": 0}, "turn must be a whole number from 1, got 0"),
    ({**TURN, "turn": True}, "turn must be a whole number from 1, got True"),
    ({**TURN, "turn": "1"}, "turn must be a whole number from 1, got '1'"),
    ({**TURN, "contact_id": "../c"}, "stream id '../c' is not valid"),
    ({**TURN, "question": ""}, "Question is missing or empty"),
])
def test_a_chat_step_refuses_bad_input_before_asking_anyone(event, message):
    # ddb None: nothing may be read (and no bot asked) for input the step refuses
    with pytest.raises(InvalidInput, match=message):
        pipeline.ask_chatbot(None, config.load({}), event, now_ms=0)


def test_a_lost_history_write_is_reported_in_dynamodbs_own_words_and_the_bots_answer_still_goes_out(http_bot):
    # Given a bot that answers, and a conversation table that refuses the write after the bot has answered
    bot, url = http_bot
    ddb = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    settings = config.load({"CHAT_URL": url, "CONVERSATION_TABLE": "conversations"})
    with Stubber(ddb) as stub:
        stub.add_response("get_item", {})  # no earlier turns
        stub.add_client_error("update_item", service_error_code="ProvisionedThroughputExceededException",
                              service_message="Rate of requests exceeds the allowed throughput.", http_status_code=400)
        result = pipeline.ask_chatbot(ddb, settings, TURN, now_ms=1_700_000_000_000)
        stub.assert_no_pending_responses()

    # Then the answer is spoken, the bot was asked once, and the operators read which error lost the exchange
    assert result["text"] == chatbot.answer_for(TURN["question"], []) and result["chat_error"] == ""
    assert len(bot.requests) == 1
    assert result["history_error"] == ("An error occurred (ProvisionedThroughputExceededException) when calling the "
                                       "UpdateItem operation: Rate of requests exceeds the allowed throughput.")
