"""Turns of a conversation in the real conversation table: retries, re-asked questions, concurrent turns and
the history the bot is sent; and the prompt cache keeping one text's audio under that text's key only."""

import time
import uuid

import pytest

from tts_stream import cache, conversation, manifest, pipeline, streams
from tts_stream.config import load as load_settings


def now_ms():
    return time.time_ns() // 1_000_000


@pytest.fixture
def talk(cloud):
    ddb, table = cloud.client("dynamodb"), cloud.physical("ConversationTable")
    contact = str(uuid.uuid4())

    def start(previous, question, at=None):
        return conversation.start_turn(ddb, table, contact, previous, question, now_ms=at or now_ms(), ttl_hours=1)

    start.ddb, start.table, start.contact = ddb, table, contact
    return start


def test_a_retried_request_is_the_same_turn_but_a_question_asked_again_is_a_new_one(talk):
    assert talk(0, "h-yes") == (1, None)
    # Connect retries the same request (the flow has not seen turn 1 yet): the same turn, nothing cancelled
    assert talk(0, "h-yes") == (1, None)
    # The caller heard turn 1 and says the same thing again: a new turn, which replaces turn 1
    assert talk(1, "h-yes") == (2, f"{talk.contact}-t1")


def test_a_flow_that_missed_a_reply_still_gets_a_fresh_turn(talk):
    assert talk(0, "h-first") == (1, None)
    # the flow never stored Turn 1 and asks something else: turn 2, not a reuse of turn 1
    assert talk(0, "h-second") == (2, f"{talk.contact}-t1")


def record(talk, turn, question, answer, keep=6):
    earlier = conversation.history(talk.ddb, talk.table, talk.contact, before_turn=turn)
    conversation.record_exchange(talk.ddb, talk.table, talk.contact, turn, question, answer, earlier_turns=earlier,
                                 keep_turns=keep, now_ms=now_ms(), ttl_hours=1)


def questions(talk, before_turn=1000):
    return [e.question for e in conversation.history(talk.ddb, talk.table, talk.contact, before_turn).values()]


def test_an_answer_is_not_remembered_once_a_newer_turn_has_started(talk):
    talk(0, "h-a")
    talk(1, "h-b")
    record(talk, 1, "old question", "old answer")
    record(talk, 2, "new question", "new answer")
    assert questions(talk) == ["new question"]


def test_history_keeps_only_the_last_turns(talk):
    for turn in range(1, 9):
        talk(turn - 1, f"h-{turn}")
        record(talk, turn, f"q{turn}", f"a{turn}", keep=3)
    assert questions(talk) == ["q6", "q7", "q8"]


def test_history_shorter_than_its_window_forgets_nothing(talk):
    for turn in (1, 2):
        talk(turn - 1, f"h-{turn}")
        record(talk, turn, f"q{turn}", f"a{turn}", keep=3)
    assert questions(talk) == ["q1", "q2"]


def test_a_window_of_one_keeps_the_last_exchange(talk):
    for turn in (1, 2):
        talk(turn - 1, f"h-{turn}")
        record(talk, turn, f"q{turn}", f"a{turn}", keep=1)
    assert questions(talk) == ["q2"]


def test_a_conversation_expires_its_ttl_hours_after_its_last_turn_and_exchange(talk):
    started_ms = now_ms()
    conversation.start_turn(talk.ddb, talk.table, talk.contact, 0, "h-1", now_ms=started_ms, ttl_hours=2)
    item = talk.ddb.get_item(TableName=talk.table, Key={"contact_id": {"S": talk.contact}})["Item"]
    assert int(item["expires_at"]["N"]) == started_ms // 1000 + 2 * 3600
    conversation.record_exchange(talk.ddb, talk.table, talk.contact, 1, "q1", "a1", earlier_turns={}, keep_turns=3,
                                 now_ms=started_ms + 60_000, ttl_hours=2)
    item = talk.ddb.get_item(TableName=talk.table, Key={"contact_id": {"S": talk.contact}})["Item"]
    assert int(item["expires_at"]["N"]) == (started_ms + 60_000) // 1000 + 2 * 3600


def test_history_keeps_the_last_exchanges_across_a_turn_without_one(talk):
    # Turn 4 was an apology: nothing recorded. Turn 1 must still fall out of a window of three exchanges.
    for turn in (1, 2, 3, 5):
        talk(turn - 1, f"h-{turn}")
        record(talk, turn, f"q{turn}", f"a{turn}", keep=3)
    item = talk.ddb.get_item(TableName=talk.table, Key={"contact_id": {"S": talk.contact}})["Item"]
    assert questions(talk) == ["q2", "q3", "q5"]
    assert sorted(name for name in item if name.startswith("turn_")) == ["turn_2", "turn_3", "turn_5"]


def test_a_turn_is_never_its_own_history(talk):
    # A retried step finds its own exchange already recorded: the bot must not hear its question as the past
    talk(0, "h-1")
    record(talk, 1, "Where is my order?", "It ships Monday.")
    assert questions(talk, before_turn=1) == []
    assert questions(talk, before_turn=2) == ["Where is my order?"]


def test_no_history_is_kept_when_history_turns_is_zero(talk):
    talk(0, "h-1")
    record(talk, 1, "q1", "a1", keep=0)  # no write at all: SET and REMOVE of one turn would be refused
    assert questions(talk) == []


def test_cache_keys_differ_by_engine_settings_voice_and_text_but_not_spacing():
    base = cache.key_for("polly", {"engine_type": "neural", "sample_rate": "8000"}, "Joanna", "Hello there.")
    assert base == cache.key_for("polly", {"sample_rate": "8000", "engine_type": "neural"}, "Joanna", " Hello  there. ")
    assert base != cache.key_for("polly", {"engine_type": "standard", "sample_rate": "8000"}, "Joanna", "Hello there.")
    assert base != cache.key_for("polly", {"engine_type": "neural", "sample_rate": "8000"}, "Matthew", "Hello there.")
    assert base != cache.key_for("http", {"url": "https://tts.example/a"}, "Joanna", "Hello there.")
    assert base != cache.key_for("polly", {"engine_type": "neural", "sample_rate": "8000"}, "Joanna", "Hello there!")


def test_a_second_plan_with_other_text_files_parts_under_the_pinned_texts_keys(cloud, stream_id):
    ddb, settings = cloud.client("dynamodb"), load_settings()
    first = pipeline.plan_stream(ddb, settings, {"stream_id": stream_id, "text": "Your order arrives on Monday.",
                                                 "input_hash": "e" * 64}, now_ms=now_ms())
    second = pipeline.plan_stream(ddb, settings, {"stream_id": stream_id, "text": "We are open nine to five.",
                                                  "input_hash": "e" * 64}, now_ms=now_ms())
    pinned = manifest.read(ddb, cloud.physical("ManifestTable"), stream_id, with_texts=True)
    for part in second["parts"]:
        assert part["text"] == pinned.texts[part["index"]]
        assert part["cache_key"] == cache.key_for(pinned.engine, pinned.engine_settings, pinned.voice, part["text"])
    assert [p["cache_key"] for p in second["parts"]] == [p["cache_key"] for p in first["parts"]]


def test_a_cache_entry_is_not_trusted_past_the_retention_now_in_force(cloud):
    ddb, table = cloud.client("dynamodb"), cloud.physical("CacheTable")
    key = uuid.uuid4().hex
    written = now_ms() - 10 * 86_400_000  # ten days ago
    cache.remember(ddb, table, {key: written}, retention_days=30)
    assert cache.lookup(ddb, table, [key], now_ms=now_ms(), retention_days=30) == {key}
    assert cache.lookup(ddb, table, [key], now_ms=now_ms(), retention_days=7) == set()


def test_a_turn_whose_write_the_sdk_resent_after_a_lost_answer_is_still_started(talk):
    # Given a first turn, and DynamoDB applying the next turn's write whose answer is lost, so the SDK sends it again
    assert talk(0, "h-one") == (1, None)

    class Resends:
        def __init__(self, real):
            self.real, self.exceptions = real, real.exceptions

        def __getattr__(self, name):
            return getattr(self.real, name)

        def update_item(self, **request):
            self.real.update_item(**request)
            return self.real.update_item(**request)

    # Then the resend finds its own write, not "another turn started at the same moment" (the caller's apology)
    turn = conversation.start_turn(Resends(talk.ddb), talk.table, talk.contact, 1, "h-two", now_ms=now_ms(),
                                   ttl_hours=1)
    assert turn == (2, f"{talk.contact}-t1")


def test_a_turn_started_at_the_same_moment_as_another_is_an_error_reply_not_a_second_turn(cloud):
    # Given two requests of one contact starting turns at once: the other one writes between our read and write
    settings = load_settings()
    contact = str(uuid.uuid4())
    ddb, other = cloud.client("dynamodb"), cloud.client("dynamodb")
    raced = []

    def the_other_request_first(params, **_):
        if params.get("TableName") == settings.conversation_table and not raced:
            raced.append(conversation.start_turn(other, settings.conversation_table, contact, 0, "h-other",
                                                 now_ms=now_ms(), ttl_hours=1))

    ddb.meta.events.register("provide-client-params.dynamodb.UpdateItem", the_other_request_first)
    clients = streams.Clients(ddb, cloud.client("s3"), cloud.client("stepfunctions"))
    request = streams.Request({"Action": "chat_and_stream", "Question": "Hi?"}, contact, now_ms() + 8000)
    reply = streams.chat_and_stream(clients, settings, request, clock=streams.Clock())

    # Then ours starts nothing and says why, ending its loop (the flow plays its apology); the other keeps turn 1
    assert raced == [(1, None)]
    assert (reply["Status"], reply["Final"], reply["Count"]) == ("error", "true", "0")
    assert f"another turn of contact {contact} started at the same moment" in reply["Error"]
    assert manifest.read(ddb, settings.table_name, f"{contact}-t1") is None  # no stream begun for it here
