"""The prompt cache's index writes: batched, and never silently short (DynamoDB's side faked with Stubber)."""

import boto3
import pytest
from botocore.stub import Stubber

from tts_stream import cache, config, pipeline
from tts_stream.errors import RetryableError

TABLE = "cache-table"
DAY_S = 86400


@pytest.fixture
def ddb():
    return boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


@pytest.fixture
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(cache.time, "sleep", slept.append)
    return slept


def put(key: str, ms: int, days: int = 30) -> dict:
    return {"PutRequest": {"Item": {"cache_key": {"S": key}, "written_ms": {"N": str(ms)},
                                    "expires_at": {"N": str(ms // 1000 + days * DAY_S)}}}}


def keys(count: int) -> dict[str, int]:
    return {f"{i:064x}": 1_700_000_000_000 + i for i in range(count)}


def test_thirty_entries_take_two_requests_of_at_most_twenty_five(ddb, no_sleep):
    written = keys(30)
    items = [put(k, ms) for k, ms in sorted(written.items())]
    with Stubber(ddb) as stub:
        stub.add_response("batch_write_item", {}, {"RequestItems": {TABLE: items[:25]}})
        stub.add_response("batch_write_item", {}, {"RequestItems": {TABLE: items[25:]}})
        cache.remember(ddb, TABLE, written, retention_days=30)
        stub.assert_no_pending_responses()
    assert no_sleep == []


def test_items_left_unprocessed_are_sent_again_after_a_pause(ddb, no_sleep):
    written = keys(3)
    items = [put(k, ms) for k, ms in sorted(written.items())]
    with Stubber(ddb) as stub:
        stub.add_response("batch_write_item", {"UnprocessedItems": {TABLE: items[1:]}},
                          {"RequestItems": {TABLE: items}})
        stub.add_response("batch_write_item", {}, {"RequestItems": {TABLE: items[1:]}})
        cache.remember(ddb, TABLE, written, retention_days=30)
        stub.assert_no_pending_responses()
    assert len(no_sleep) == 1


def test_items_dynamodb_keeps_leaving_unprocessed_end_in_a_retryable_error(ddb, no_sleep):
    written = keys(2)
    items = [put(k, ms) for k, ms in sorted(written.items())]
    with Stubber(ddb) as stub:
        for _ in range(5):
            stub.add_response("batch_write_item", {"UnprocessedItems": {TABLE: items[:1]}})
        with pytest.raises(RetryableError, match="left 1 prompt-cache entries unprocessed"):
            cache.remember(ddb, TABLE, written, retention_days=30)
        stub.assert_no_pending_responses()
    assert no_sleep == [0.05, 0.1, 0.2, 0.4, 0.8]


def test_a_lookup_dynamodb_keeps_leaving_unprocessed_gives_up_after_three_tries_as_misses(ddb, no_sleep):
    # Given DynamoDB answering one key and leaving the other unprocessed, every time
    found, left = "a" * 64, "b" * 64
    now_ms = 1_700_000_000_000
    request = {TABLE: {"Keys": [{"cache_key": {"S": found}}, {"cache_key": {"S": left}}],
                       "ProjectionExpression": "cache_key, written_ms"}}
    unprocessed = {TABLE: {"Keys": [{"cache_key": {"S": left}}], "ProjectionExpression": "cache_key, written_ms"}}
    with Stubber(ddb) as stub:
        stub.add_response("batch_get_item", {"Responses": {TABLE: [{"cache_key": {"S": found},
                                                                    "written_ms": {"N": str(now_ms)}}]},
                                             "UnprocessedKeys": unprocessed}, {"RequestItems": request})
        for _ in range(2):
            stub.add_response("batch_get_item", {"Responses": {TABLE: []}, "UnprocessedKeys": unprocessed},
                              {"RequestItems": unprocessed})
        hits = cache.lookup(ddb, TABLE, [found, left], now_ms=now_ms, retention_days=30)
        stub.assert_no_pending_responses()
    # Then the lookup ends (a caller is waiting on it): the answered key is a hit, the other a miss
    assert hits == {found}
    assert no_sleep == [0.05, 0.1]


HOUR_MS = 3_600_000


@pytest.mark.parametrize("retention_days, age_ms, hit", [
    # Objects live 30 days; an entry is trusted until a day before that, and only with an hour to spare
    (30, 0, True),
    (30, 29 * 24 * HOUR_MS - 2 * HOUR_MS, True),
    (30, 29 * 24 * HOUR_MS - HOUR_MS, False),
    (30, 29 * 24 * HOUR_MS - HOUR_MS // 2, False),
    (30, 40 * 24 * HOUR_MS, False),
    (2, 22 * HOUR_MS, True),  # CacheRetentionDays lowered to 2: judged by the retention in force now
    (2, 24 * HOUR_MS, False),
    (1, 0, False),  # a day's retention leaves no day to spare: nothing is trusted
])
def test_an_entry_is_a_hit_only_while_its_object_outlives_the_call(ddb, retention_days, age_ms, hit):
    now_ms = 1_700_000_000_000
    key = "c" * 64
    request = {TABLE: {"Keys": [{"cache_key": {"S": key}}], "ProjectionExpression": "cache_key, written_ms"}}
    with Stubber(ddb) as stub:
        stub.add_response("batch_get_item", {"Responses": {TABLE: [{"cache_key": {"S": key},
                                                                    "written_ms": {"N": str(now_ms - age_ms)}}]}},
                          {"RequestItems": request})
        hits = cache.lookup(ddb, TABLE, [key], now_ms=now_ms, retention_days=retention_days)
    assert hits == ({key} if hit else set())


def test_an_entry_without_its_write_time_is_a_miss(ddb):
    key = "d" * 64
    request = {TABLE: {"Keys": [{"cache_key": {"S": key}}], "ProjectionExpression": "cache_key, written_ms"}}
    with Stubber(ddb) as stub:
        stub.add_response("batch_get_item", {"Responses": {TABLE: [{"cache_key": {"S": key}}]}},
                          {"RequestItems": request})
        assert cache.lookup(ddb, TABLE, [key], now_ms=1_700_000_000_000, retention_days=30) == set()


def test_a_lookup_of_150_keys_is_two_requests_of_at_most_100(ddb):
    wanted = sorted(keys(150))
    with Stubber(ddb) as stub:
        for chunk in (wanted[:100], wanted[100:]):
            request = {TABLE: {"Keys": [{"cache_key": {"S": k}} for k in chunk],
                               "ProjectionExpression": "cache_key, written_ms"}}
            stub.add_response("batch_get_item", {"Responses": {TABLE: []}}, {"RequestItems": request})
        assert cache.lookup(ddb, TABLE, wanted, now_ms=1_700_000_000_000, retention_days=30) == set()
        stub.assert_no_pending_responses()


def test_nothing_to_index_sends_nothing(ddb):
    with Stubber(ddb) as stub:
        cache.remember(ddb, TABLE, {}, retention_days=30)
        stub.assert_no_pending_responses()


@pytest.mark.parametrize("object_key, expected", [
    (cache.object_key("ab" * 32), "ab" * 32),
    ("streams/s-1/part0000.wav", None),
    ("cache/" + "AB" * 32 + ".wav", None),
    ("cache/" + "ab" * 32 + ".wav.bak", None),
], ids=["cache-object", "stream-part", "upper-case", "suffix"])
def test_only_a_prompt_cache_object_has_a_cache_key(object_key, expected):
    assert cache.key_of_object(object_key) == expected


def test_finish_records_the_outcome_even_when_the_cache_entries_cannot_be_written(ddb, no_sleep):
    # Given a stream whose two parts are ready: part 0 from the prompt cache (ready when the stream was created),
    # the second spoken by the workflow's Map
    settings = config.load({"TABLE_NAME": "manifests", "CACHE_TABLE": TABLE, "CACHE_RETENTION_DAYS": "30"})
    key = "cd" * 32
    item = {"stream_id": {"S": "s-1"}, "status": {"S": "streaming"}, "total": {"N": "2"},
            "created_ms": {"N": "1700000000000"},
            "ready": {"M": {"0": {"N": "1700000000000"}, "1": {"N": "1700000000500"}}},
            "keys": {"M": {"0": {"S": cache.object_key("ab" * 32)}, "1": {"S": cache.object_key(key)}}}}
    with Stubber(ddb) as stub:
        stub.add_response("update_item", {"Attributes": {**item, "status": {"S": "complete"}}})  # every part ready
        # When DynamoDB keeps leaving the entry unprocessed
        for _ in range(5):
            stub.add_response("batch_write_item", {"UnprocessedItems": {TABLE: [put(key, 1700000000500)]}},
                              {"RequestItems": {TABLE: [put(key, 1700000000500)]}})
        result = pipeline.finish_stream(ddb, settings, {"stream_id": "s-1", "total": 2, "first_part": "inline",
                                                        "part_results": [{"index": 1}]})
        stub.assert_no_pending_responses()

    # Then the stream is complete, and Finish says what was not indexed instead of failing the workflow
    assert result["status"] == "complete"
    assert result["indexed"] == 0 and "unprocessed" in result["index_error"]


@pytest.mark.parametrize("prompt_cache, where", [("true", "cache/" + "e" * 64 + ".wav"),
                                                 ("false", "streams/s1/part0002.wav")])
def test_a_part_is_stored_in_the_prompt_cache_only_while_the_cache_is_on(prompt_cache, where):
    # A part planned with the cache on may be spoken after PromptCache was turned off: then it is the stream's own
    part = {"stream_id": "s1", "index": 2, "cache_key": "e" * 64}
    assert pipeline.store_key(config.load({"PROMPT_CACHE": prompt_cache}), part) == where
