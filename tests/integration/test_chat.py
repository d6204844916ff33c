"""Talking to the chatbot by phone: multi-turn calls through the template's chat flow, a real chatbot server
on 127.0.0.1, a slow bot, a failing bot, and barge-in."""

import threading
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from localcloud import chatbot, faults, runs
from localcloud.phone import KeyPress
from tts_stream import chat, engines, manifest, pipeline
from tts_stream.config import load as load_settings


@pytest.fixture
def bot(setting):
    server, state, url = chatbot.serve()
    setting("CHAT_URL", url)
    yield state
    server.shutdown()


def spoken(turn):
    return " ".join(turn["texts"])


def chat_event(contact: str, **params) -> dict:
    return {"Name": "ContactFlowEvent", "Details": {
        "ContactData": {"ContactId": contact}, "Parameters": {"Action": "chat_and_stream", **params}}}


@pytest.fixture
def slow_engine(setting, monkeypatch):
    """An engine taking 200 ms a part, two parts at a time, short parts: a long answer is still being spoken
    when the caller acts. Returns the texts spoken, in order."""
    setting("MAP_MAX_CONCURRENCY", 2)
    setting("CHUNK_TARGET_CHARS", 60)
    spoken_parts = []
    lock = threading.Lock()
    real = engines.get_engine

    def slow(name, settings=None):
        engine = real(name, settings)
        speak = engine.synthesize

        def synthesize(text, voice):
            time.sleep(0.2)
            with lock:
                spoken_parts.append(text)
            return speak(text, voice)

        engine.synthesize = synthesize
        return engine

    monkeypatch.setattr(engines, "get_engine", slow)
    return spoken_parts


def test_a_three_turn_call_hears_every_answer_in_order_once(cloud, bot):
    result = runs.run_chat_call(cloud, ["When will my order arrive?", "환불은 어떻게 하나요?", "What did I ask?"],
                                speed=40)

    assert result["ended_by"] == "EndCall"
    assert [t["question"] for t in result["turns"]] == ["When will my order arrive?", "환불은 어떻게 하나요?",
                                                        "What did I ask?"]
    assert spoken(result["turns"][0]) == chatbot.answer_for("When will my order arrive?", [])
    assert spoken(result["turns"][1]) == chatbot.answer_for("환불은 어떻게 하나요?", [])
    assert spoken(result["turns"][2]) == "You asked: 환불은 어떻게 하나요?"
    for turn in result["turns"]:
        assert turn["status"] == "complete" and not turn["interrupted"]
        assert turn["indexes"] == list(range(turn["total"]))  # each part once, in order
    assert len({t["stream_id"] for t in result["turns"]}) == 3
    # the bot got the conversation so far with each question
    assert [len(r["history"]) for r in bot.requests] == [0, 1, 2]


def test_a_chatbot_slower_than_connects_limit_is_still_heard(cloud, bot):
    # Given a bot that takes 9 s, longer than Connect waits for any Lambda
    bot.faults.append(chatbot.Fault(delay_s=9.0))
    result = runs.run_chat_call(cloud, ["What are your opening hours?"], speed=40)

    # Then every invocation answered Connect in time (a late one would take the error branch and apologise),
    # and the caller hears the answer once it arrives
    turn = result["turns"][0]
    assert result["errors"] == [] and "Apology" not in result["path"]
    assert spoken(turn) == chatbot.answer_for("What are your opening hours?", [])
    assert turn["ttfa_ms"] >= 9000
    assert result["lambda_invocations"] >= 4  # it kept asking, one short wait at a time


def test_a_turn_whose_workflow_failed_to_start_is_still_answered(cloud, bot):
    # Given StartExecution fails once for good (the SDK's own retries spent)
    with faults.injected(cloud, "sfn:start:throttle=1") as injection:
        result = runs.run_chat_call(cloud, ["When will my order arrive?"], speed=40)

    # Then the turn kept its workflow's input and the next read of the stream started it: the caller hears the
    # answer, not the apology
    assert injection.report()["fired"]["sfn:start:throttle=1"] == 1
    turn = result["turns"][0]
    assert result["errors"] == [] and "Apology" not in result["path"]
    assert spoken(turn) == chatbot.answer_for("When will my order arrive?", [])
    assert turn["status"] == "complete" and turn["indexes"] == list(range(turn["total"]))
    assert result["aws_calls"]["stepfunctions.StartExecution"] == 1  # the one that got through
    assert len(bot.requests) == 1  # the bot was asked once


def test_a_turn_whose_start_failed_with_a_5xx_ends_so_the_same_question_again_is_not_left_in_silence(cloud):
    # Given StartExecution failing with a 5xx (the execution may or may not run: it is not started a second time)
    from botocore.stub import Stubber

    from tts_stream import config, streams

    sfn = cloud.client("stepfunctions")
    clients = streams.Clients(cloud.client("dynamodb"), cloud.client("s3"), sfn)
    contact = str(uuid.uuid4())
    request = streams.Request({"Action": "chat_and_stream", "Question": "Hello?"}, contact, time.time_ns() // 10**6 + 7500)
    with Stubber(sfn) as stub:
        stub.add_client_error("start_execution", "InternalFailure", http_status_code=500)
        with pytest.raises(ClientError):
            streams.chat_and_stream(clients, config.load(), request, clock=streams.Clock())
    # Then the turn's stream is failed at once: the caller hears the apology now, and if they ask the same
    # thing again within Connect's retry window (the same turn) they hear it again, not 330 s of silence
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), f"{contact}-t1")
    assert found.status == "failed" and found.kept_starts == 0
    again = streams.chat_and_stream(clients, config.load(), request, clock=streams.Clock())
    assert again["Status"] == "failed" and again["Final"] == "true"


@pytest.mark.parametrize("fault", ["ddb:get:throttle=1:function=ChatFunction",
                                   "ddb:update:throttle=1:function=ChatFunction"],
                         ids=["history-read", "history-write"])
def test_a_throttled_history_asks_the_bot_once_and_the_caller_hears_its_answer(cloud, bot, fault):
    # Given the conversation's history read (before the bot) or write (after it) throttled once for good
    with faults.injected(cloud, fault) as injection:
        result = runs.run_chat_call(cloud, ["When will my order arrive?"], speed=40)
    # Then the caller hears the bot's answer, and the bot was asked once: a read is retried before the bot is
    # asked, a lost write is not worth asking the bot again
    assert injection.report()["fired"][fault] == 1
    turn = result["turns"][0]
    assert spoken(turn) == chatbot.answer_for("When will my order arrive?", [])
    assert turn["status"] == "complete" and len(bot.requests) == 1


def test_a_turn_whose_workflow_cannot_start_at_all_is_an_apology_at_once(cloud, bot, setting):
    # Given a state machine that does not exist (a misconfigured stack): no retry would start it
    setting("STATE_MACHINE_ARN", "arn:aws:states:us-east-1:123456789012:stateMachine:missing")
    contact = str(uuid.uuid4())
    reply = cloud.invoke("ConnectFunction", chat_event(contact, Question="Hello?"))

    # Then the flow is told at once (it plays its apology), and no start is kept for later requests to retry
    assert reply["Status"] == "error" and reply["Final"] == "true" and "AWS request failed" in reply["Error"]
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), f"{contact}-t1")
    assert found is not None and found.kept_starts == 0 and bot.requests == []


@pytest.mark.parametrize("fault", [
    chatbot.Fault(status=500),
    chatbot.Fault(delay_s=2.5),
    chatbot.Fault(body=b"<html>not json</html>"),
    chatbot.Fault(body=b'{"reply": "wrong field"}'),
    chatbot.Fault(drop=True),
], ids=["5xx", "timeout", "not-json", "no-answer-field", "dropped"])
def test_a_failing_chatbot_becomes_a_spoken_apology_and_the_call_goes_on(cloud, bot, setting, fault):
    setting("CHAT_TIMEOUT_MS", 1000)
    bot.faults.append(fault)
    result = runs.run_chat_call(cloud, ["When will my order arrive?", "What are your opening hours?"], speed=40)

    first, second = result["turns"]
    assert spoken(first) == chat.APOLOGY["en"]  # in the stream's own voice, not Connect's
    assert first["status"] == "complete"
    assert spoken(second) == chatbot.answer_for("What are your opening hours?", [])
    assert result["ended_by"] == "EndCall"


def test_pressing_a_key_stops_the_answer_and_its_synthesis(cloud, bot, slow_engine):
    # Given a slow engine (200 ms a part, two at a time) and a 40-sentence answer
    spoken_parts = slow_engine

    # When the caller presses 1 during the second part, then asks something else
    result = runs.run_chat_call(cloud, ["Tell me everything about your plans, a long answer please.",
                                        "What are your opening hours?"],
                                presses=[KeyPress(turn=0, part=1, after_ms=300)], speed=20)

    first, second = result["turns"]
    # Then nothing more of that answer plays, the stream is cancelled, and most of it was never synthesized
    assert first["interrupted"] and first["indexes"] == [0, 1]
    assert first["status"] == "cancelled"
    assert first["total"] >= 30
    answered = [t for t in spoken_parts if "sentence number" in t]
    assert len(answered) < first["total"] / 2
    # and the next question is answered normally
    assert spoken(second) == chatbot.answer_for("What are your opening hours?", [])
    assert all(i is not None for i in second["indexes"])


def test_after_an_answer_longer_than_the_history_holds_the_bot_still_knows_what_it_was_asked(cloud, bot, setting):
    # Given a history of at most 1,500 characters and a first answer about twice as long
    setting("HISTORY_CHARS", 1500)
    contact = str(uuid.uuid4())

    def ask(turn, question):
        event = {"stream_id": f"{contact}-t{turn}", "contact_id": contact, "turn": turn, "question": question}
        return pipeline.ask_chatbot(cloud.client("dynamodb"), load_settings(), event,
                                    now_ms=time.time_ns() // 1_000_000)

    assert ask(1, "Tell me everything about your plans.")["text"] == chatbot.LONG_ANSWER
    assert len(chatbot.LONG_ANSWER) > 2 * 1500 - 100

    # When the caller follows it up
    asked = ask(2, "What did I ask?")

    # Then the bot got that exchange, its answer's beginning marked as cut, within the limit, and remembered
    [sent] = bot.requests[1]["history"]
    assert sent["question"] == "Tell me everything about your plans."
    assert sent["answer"].endswith(chat.CUT_MARK) and len(sent["question"]) + len(sent["answer"]) <= 1500
    assert chatbot.LONG_ANSWER.startswith(sent["answer"].removesuffix(chat.CUT_MARK))
    assert asked["text"] == "You asked: Tell me everything about your plans."


@pytest.mark.parametrize("stored, sent", [("Bearer s3cr3t-TOKEN\n", "Bearer s3cr3t-TOKEN"),
                                          ("Bearer s3cr3t-TOKEN\r\nX-Injected: 1", None)],
                         ids=["trailing-newline", "header-injection"])
def test_the_chat_auth_secret_is_sent_stripped_and_a_bad_one_is_never_logged(cloud, bot, setting, stored, sent):
    # Given the chatbot's Authorization header value stored in Secrets Manager, as an operator pasted it
    name = f"chat-auth-{uuid.uuid4().hex[:8]}"
    cloud.client("secretsmanager").create_secret(Name=name, SecretString=stored)
    setting("CHAT_AUTH_SECRET", name)
    contact = str(uuid.uuid4())
    event = {"stream_id": f"{contact}-t1", "contact_id": contact, "turn": 1, "question": "Where is my order?"}

    asked = pipeline.ask_chatbot(cloud.client("dynamodb"), load_settings(), event, now_ms=time.time_ns() // 1_000_000)

    if sent:  # a stored trailing newline is not part of the value
        assert bot.authorizations == [sent] and asked["chat_error"] == ""
    else:  # a value no header can carry is the apology, named but never quoted (chat_error is logged)
        assert bot.authorizations == [] and asked["text"] == chat.APOLOGY["en"]
        assert "CHAT_AUTH_SECRET" in asked["chat_error"] and "s3cr3t" not in asked["chat_error"]


def test_a_new_turn_cancels_the_turn_before_it_without_a_stop(cloud, bot, slow_engine):
    # Given a long answer still being spoken when the caller asks again, as after a barge-in through a Lex
    # block, where the flow never calls stop
    contact = str(uuid.uuid4())

    def ask(question, previous=""):
        return cloud.invoke("ConnectFunction", chat_event(contact, Question=question, PreviousTurn=previous))

    first = ask("Tell me everything about your plans, a long answer please.")
    second = ask("What are your opening hours?", first["Turn"])
    runs.wait_for_executions(cloud)

    # Then the first turn's stream is cancelled (nothing more of it plays) and the second one is answered
    ddb, table = cloud.client("dynamodb"), cloud.physical("ManifestTable")
    assert (first["Turn"], second["Turn"]) == ("1", "2")
    replaced = manifest.read(ddb, table, f"{contact}-t1")
    assert replaced.status == "cancelled" and len(replaced.ready) < replaced.total
    assert manifest.read(ddb, table, f"{contact}-t2").status == "complete"


@pytest.mark.parametrize("asked, pinned", [({"Voice": "en"}, ("en", "en")), ({"Language": "ko"}, (None, "ko"))])
def test_a_turn_is_spoken_in_the_voice_and_language_the_flow_asks_for(cloud, bot, asked, pinned):
    contact = str(uuid.uuid4())
    cloud.invoke("ConnectFunction", chat_event(contact, Question="When will my order arrive?", **asked))
    runs.wait_for_executions(cloud)
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), f"{contact}-t1")
    voice, language = pinned
    assert found.status == "complete"
    assert found.language == language and found.voice == (voice or load_settings().voice_ko or "ko")


def test_a_chat_request_retried_while_the_bot_thinks_starts_no_second_workflow(cloud, bot, setting):
    # Given a bot that takes 4 s of its 5, and a first request that stops waiting for part 0 after 0.5 s
    setting("START_WAIT_MS", 500)
    setting("CHAT_TIMEOUT_MS", 5000)
    bot.faults.append(chatbot.Fault(delay_s=4.0))
    request = chat_event(str(uuid.uuid4()), Question="Where is my order?", PreviousTurn="")
    before = cloud.aws_calls.snapshot()
    first = cloud.invoke("ConnectFunction", request)
    # When Connect retries it later than a plain start would be restarted (2 s), while the stream still waits
    time.sleep(2.2)
    again = cloud.invoke("ConnectFunction", request)
    runs.wait_for_executions(cloud)
    # Then it is the same turn, and its one workflow asked the bot once: a second would ask it again
    assert first["Turn"] == again["Turn"] == "1"
    assert (cloud.aws_calls.snapshot() - before)["stepfunctions.StartExecution"] == 1
    assert len(bot.requests) == 1
