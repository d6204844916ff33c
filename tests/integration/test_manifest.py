"""The manifest's writes against DynamoDB (moto): each is one conditional update, so repeated, late and
concurrent deliveries cannot corrupt a stream."""

import json
import threading
import time

import pytest
from botocore.stub import Stubber

from tts_stream import batches, manifest, pipeline
from tts_stream.config import load as load_settings
from tts_stream.errors import InvalidInput, RetryableError, StreamConflict


def now_ms():
    return time.time_ns() // 1_000_000


@pytest.fixture
def ddb(cloud):
    return cloud.client("dynamodb")


@pytest.fixture
def table(cloud):
    return cloud.physical("ManifestTable")


def planned(ddb, table, stream_id, total=5, input_hash="a" * 64):
    return manifest.plan(ddb, table, stream_id, input_hash, texts=[f"Part {i}. " for i in range(total)],
                         engine="espeak", voice="en-us", language="en", now_ms=now_ms(), ttl_hours=1)[0]


def test_kept_workflow_starts_are_taken_once_in_order_and_only_while_streaming(ddb, table, stream_id):
    planned(ddb, table, stream_id)
    assert manifest.keep_start(ddb, table, stream_id, {"stream_id": stream_id, "first_part": "inline"})
    assert manifest.keep_start(ddb, table, stream_id, {"stream_id": stream_id, "first_part": "only"})
    assert manifest.read(ddb, table, stream_id).kept_starts == 2
    taken = manifest.take_starts(ddb, table, stream_id)
    assert [kept["first_part"] for kept in taken] == ["inline", "only"]
    assert manifest.take_starts(ddb, table, stream_id) == [] and manifest.read(ddb, table, stream_id).kept_starts == 0
    manifest.cancel(ddb, table, stream_id)
    assert not manifest.keep_start(ddb, table, stream_id, {"stream_id": stream_id})


def test_a_stream_still_starting_keeps_its_workflow_start_too(ddb, table, stream_id):
    # Given a chat turn's stream, created but not planned (its workflow plans it once the chatbot answers)
    manifest.begin(ddb, table, stream_id, "b" * 64, now_ms=now_ms(), ttl_hours=1)
    # When its StartExecution failed, the input is kept, and taken once
    assert manifest.keep_start(ddb, table, stream_id, {"stream_id": stream_id, "question": "q"})
    assert manifest.take_starts(ddb, table, stream_id) == [{"stream_id": stream_id, "question": "q"}]
    assert manifest.take_starts(ddb, table, stream_id) == []
    # But not once the caller has moved on
    manifest.cancel(ddb, table, stream_id)
    assert not manifest.keep_start(ddb, table, stream_id, {"stream_id": stream_id, "question": "q"})


@pytest.mark.parametrize("status, failed_index, plays", [
    ("starting", None, True), ("streaming", None, True),
    ("failed", 3, True),  # parts 0..2 may still come (part 0 may be a run of its own)
    ("failed", 0, False), ("failed", None, False),  # failed at its first part, or before it was planned
    ("complete", None, False), ("cancelled", None, False)])
def test_a_stream_still_plays_while_a_part_before_its_end_may_still_come(status, failed_index, plays):
    assert manifest.still_plays(manifest.Manifest("s", status, total=5, failed_index=failed_index)) is plays


def test_a_stream_failed_after_its_first_parts_still_keeps_a_start_for_them(ddb, table, stream_id):
    planned(ddb, table, stream_id)
    manifest.mark_part_failed(ddb, table, stream_id, 3, "the engine rejected it")
    start = {"stream_id": stream_id, "first_part": "only"}
    assert manifest.keep_start(ddb, table, stream_id, start)
    assert manifest.keep_start(ddb, table, stream_id, start)  # a resend: kept already, and still wanted
    assert manifest.take_starts(ddb, table, stream_id) == [start]


def test_the_lowest_failed_index_is_kept_whatever_order_failures_arrive_in(ddb, table, stream_id):
    planned(ddb, table, stream_id)
    assert manifest.mark_part_failed(ddb, table, stream_id, 3, "third")
    assert manifest.mark_part_failed(ddb, table, stream_id, 1, "first")
    assert not manifest.mark_part_failed(ddb, table, stream_id, 2, "second")
    found = manifest.read(ddb, table, stream_id)
    assert found.failed_index == 1 and found.error == "first" and found.status == "failed"


def test_a_part_already_ready_is_not_failed_by_a_late_duplicate(ddb, table, stream_id):
    planned(ddb, table, stream_id)
    manifest.mark_ready(ddb, table, stream_id, 2, now_ms=now_ms())
    assert not manifest.mark_part_failed(ddb, table, stream_id, 2, "a duplicate delivery failed")
    assert manifest.read(ddb, table, stream_id).failed_index is None


def test_a_second_plan_of_the_same_input_returns_what_is_still_missing(ddb, table, stream_id, cloud):
    planned(ddb, table, stream_id, total=4)
    manifest.mark_ready(ddb, table, stream_id, 0, now_ms=now_ms())
    manifest.mark_ready(ddb, table, stream_id, 2, now_ms=now_ms())
    again, planned_now = manifest.plan(ddb, table, stream_id, "a" * 64, texts=[f"Part {i}. " for i in range(4)],
                                       engine="espeak", voice="en-us", language="en", now_ms=now_ms(), ttl_hours=1)
    assert sorted(again.ready) == [0, 2] and again.total == 4
    assert not planned_now  # counted planned once, by the first plan
    with pytest.raises(StreamConflict, match="different text"):
        planned(ddb, table, stream_id, total=4, input_hash="b" * 64)


def test_a_plan_repeated_after_the_stream_failed_before_planning_has_nothing_to_do(cloud, ddb, table, stream_id):
    text = "Hello there."
    content = pipeline.input_hash(text, "", "auto")
    manifest.begin(ddb, table, stream_id, content, now_ms=now_ms(), ttl_hours=1)
    assert manifest.fail_stream(ddb, table, stream_id, "rejected")
    assert manifest.read(ddb, table, stream_id).failed_index == 0  # not planned: it fails at its first part
    result = pipeline.plan_stream(ddb, load_settings(), {"stream_id": stream_id, "text": text}, now_ms=now_ms())
    assert result["parts"] == []


def test_the_first_plan_says_it_planned_the_stream(ddb, table, stream_id):
    manifest.begin(ddb, table, stream_id, "a" * 64, now_ms=now_ms(), ttl_hours=1)
    found, planned_now = manifest.plan(ddb, table, stream_id, "a" * 64, texts=["One. ", "Two. "], engine="espeak",
                                       voice="en-us", language="en", now_ms=now_ms(), ttl_hours=1)
    assert planned_now and found.status == "streaming" and found.total == 2


def test_no_mark_or_failure_creates_a_stream_that_does_not_exist(ddb, table, stream_id):
    # A late delivery for a stream gone past its TTL (or never made) must not leave a half item behind
    assert not manifest.mark_ready(ddb, table, stream_id, 0, now_ms=now_ms())
    assert not manifest.mark_part_failed(ddb, table, stream_id, 0, "too late")
    assert not manifest.fail_stream(ddb, table, stream_id, "too late")
    assert "Item" not in ddb.get_item(TableName=table, Key={"stream_id": {"S": stream_id}}, ConsistentRead=True)


def test_failing_a_stream_with_nothing_left_to_fail_says_so(ddb, table, stream_id):
    planned(ddb, table, stream_id, total=2)
    for i in (0, 1):
        manifest.mark_ready(ddb, table, stream_id, i, now_ms=now_ms())
    assert not manifest.fail_stream(ddb, table, stream_id, "the Map failed")  # every part is ready
    manifest.finish(ddb, table, stream_id)
    assert not manifest.fail_stream(ddb, table, stream_id, "the Map failed")  # complete
    assert manifest.read(ddb, table, stream_id).status == "complete"


def test_a_plan_after_a_later_part_failed_speaks_only_the_parts_before_it(ddb, table, stream_id):
    # A part after the failure never plays: synthesizing it would be engine time for nothing
    planned(ddb, table, stream_id, total=5)
    manifest.mark_ready(ddb, table, stream_id, 1, now_ms=now_ms())
    manifest.mark_part_failed(ddb, table, stream_id, 3, "the engine rejected it")
    found = manifest.read(ddb, table, stream_id, with_texts=True)
    output = pipeline.plan_output(stream_id, found, load_settings(), first="", cache_on=False, planned_here=False,
                                  now_ms=now_ms())
    assert [part["index"] for part in output["parts"]] == [0, 2]


def test_a_cancelled_stream_takes_no_more_ready_marks(ddb, table, stream_id):
    planned(ddb, table, stream_id)
    assert manifest.mark_ready(ddb, table, stream_id, 0, now_ms=now_ms())
    assert manifest.cancel(ddb, table, stream_id)
    assert not manifest.mark_ready(ddb, table, stream_id, 1, now_ms=now_ms())
    assert not manifest.mark_part_failed(ddb, table, stream_id, 1, "too late")
    assert manifest.finish(ddb, table, stream_id).status == "cancelled"


def test_a_workflow_failure_after_planning_fails_at_the_first_part_not_ready(ddb, table, stream_id):
    planned(ddb, table, stream_id)
    for i in (0, 1, 3):
        manifest.mark_ready(ddb, table, stream_id, i, now_ms=now_ms())
    assert manifest.fail_stream(ddb, table, stream_id, "the Map failed")
    found = manifest.read(ddb, table, stream_id)
    assert found.status == "failed" and found.failed_index == 2


def test_finishing_a_stream_that_was_never_planned_does_not_call_it_complete(ddb, table, stream_id):
    manifest.begin(ddb, table, stream_id, "c" * 64, now_ms=now_ms(), ttl_hours=1)
    finished = manifest.finish(ddb, table, stream_id, reason="the chatbot did not answer")
    assert finished.status == "failed" and finished.failed_index == 0
    assert finished.error == "the chatbot did not answer"  # the run's reason, when nothing was recorded before


def test_only_one_of_many_concurrent_retries_may_restart_a_starting_stream(ddb, table, stream_id):
    manifest.begin(ddb, table, stream_id, "d" * 64, now_ms=now_ms() - 10_000, ttl_hours=1)
    results, start = [], threading.Barrier(6)

    def claim():
        start.wait()
        results.append(manifest.claim_restart(ddb, table, stream_id, now_ms=now_ms()))

    threads = [threading.Thread(target=claim) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results) == [False] * 5 + [True]
    # and a fresh attempt cannot be restarted at all
    assert not manifest.claim_restart(ddb, table, stream_id, now_ms=now_ms())


@pytest.mark.parametrize("code, retryable", [
    ("ThrottlingException", True), ("ProvisionedThroughputExceededException", True),
    ("InternalServerError", True), ("ValidationException", False), ("AccessDeniedException", False),
])
def test_aws_throttling_and_5xx_become_retryable_and_the_rest_do_not(cloud, code, retryable):
    ddb = cloud.client("dynamodb")
    status = 500 if code == "InternalServerError" else 400
    with Stubber(ddb) as stub:
        stub.add_client_error("update_item", service_error_code=code, http_status_code=status)
        with pytest.raises(RetryableError if retryable else Exception) as raised:
            with pipeline.aws_errors_as_retryable():
                ddb.update_item(TableName="t", Key={"stream_id": {"S": "s"}}, UpdateExpression="SET a = :a",
                                ExpressionAttributeValues={":a": {"S": "x"}})
    assert isinstance(raised.value, RetryableError) == retryable



def test_a_plan_that_finds_the_stream_begun_by_a_twin_run_still_plans_it(ddb, table, stream_id):
    # Given a twin workflow run that begins the stream just after our plan's write found no stream
    class TwinBeginsFirst:
        def __init__(self, real):
            self.real, self.exceptions, self.raced = real, real.exceptions, False

        def __getattr__(self, name):
            return getattr(self.real, name)

        def update_item(self, **request):
            if not self.raced and "#texts" in request.get("UpdateExpression", ""):
                self.raced = True
                manifest.begin(self.real, table, stream_id, "a" * 64, now_ms=now_ms(), ttl_hours=1)
                raise self.real.exceptions.ConditionalCheckFailedException(
                    {"Error": {"Code": "ConditionalCheckFailedException"}}, "UpdateItem")
            return self.real.update_item(**request)

    # When our plan then reads the stream begun but not planned
    result = planned(TwinBeginsFirst(ddb), table, stream_id, total=3)

    # Then it plans it, rather than handing the Map nothing to do (which failed the stream at Finish)
    assert result.status == "streaming" and result.total == 3 and len(result.texts) == 3


def test_read_planned_is_none_until_planned_and_refuses_another_input(ddb, table, stream_id):
    assert manifest.read_planned(ddb, table, stream_id, "a" * 64) is None
    manifest.begin(ddb, table, stream_id, "a" * 64, now_ms=now_ms(), ttl_hours=1)
    assert manifest.read_planned(ddb, table, stream_id, "a" * 64) is None  # begun, not planned
    planned(ddb, table, stream_id, total=2)
    found = manifest.read_planned(ddb, table, stream_id, "a" * 64)
    assert found.total == 2 and found.texts == ["Part 0. ", "Part 1. "]
    with pytest.raises(StreamConflict):
        manifest.read_planned(ddb, table, stream_id, "b" * 64)


def test_a_stream_planned_with_its_cached_parts_ready_is_created_once(ddb, table, stream_id):
    args = dict(texts=["One.", "Two."], engine="espeak", voice="en-us", language="en", now_ms=now_ms(), ttl_hours=1,
                cached={1: "cache/k.wav"})
    created, made = manifest.begin_planned(ddb, table, stream_id, "a" * 64, **args)
    again, found = manifest.begin_planned(ddb, table, stream_id, "a" * 64, **args)
    assert (created, again) == (True, False)
    assert made.status == found.status == "streaming" and found.total == 2 and found.key_of(1) == "cache/k.wav"
    assert sorted(found.ready) == [1]
    with pytest.raises(StreamConflict):
        manifest.begin_planned(ddb, table, stream_id, "b" * 64, **args)
    assert manifest.mark_ready(ddb, table, stream_id, 0, now_ms=now_ms())
    assert manifest.read(ddb, table, stream_id).status == "complete"  # every part ready, before any Finish


@pytest.mark.parametrize("role", ["", "inline", "only"])
def test_plan_leaves_part_0_to_its_speaker(ddb, table, stream_id, role):
    text = "Part zero is short. Part one follows it with a few more words to say. And then part two ends the answer."
    if role:  # ConnectFunction planned the stream (and speaks part 0, or hands it over) before starting the run
        settings = load_settings()
        split = pipeline.split_answer(settings, text, "", "auto")
        manifest.begin_planned(ddb, table, stream_id, pipeline.input_hash(text, "", "auto"), texts=split.texts,
                               engine=split.engine, voice=split.voice, language=split.language, now_ms=now_ms(),
                               ttl_hours=1, engine_settings=split.engine_settings)
    result = pipeline.plan_stream(ddb, load_settings(), {"stream_id": stream_id, "text": text, "first_part": role},
                                  now_ms=now_ms())
    total = result["total"]
    assert total >= 2
    expected = {"": list(range(total)), "inline": list(range(1, total)), "only": [0]}[role]
    assert [p["index"] for p in result["parts"]] == expected


def test_plan_refuses_an_unknown_first_part_role(ddb, stream_id):
    with pytest.raises(InvalidInput, match="first_part"):
        pipeline.plan_stream(ddb, load_settings(), {"stream_id": stream_id, "text": "Hi.", "first_part": "mine"},
                             now_ms=now_ms())


def test_finishing_a_stream_whose_parts_are_all_ready_is_one_write(ddb, table, stream_id):
    planned(ddb, table, stream_id, total=2)
    for i in (0, 1):
        manifest.mark_ready(ddb, table, stream_id, i, now_ms=now_ms())
    calls = []

    def count(model, **_):
        calls.append(model.name)

    ddb.meta.events.register("before-call.dynamodb", count)
    try:
        finished = manifest.finish(ddb, table, stream_id)
    finally:
        ddb.meta.events.unregister("before-call.dynamodb", count)
    assert calls == ["UpdateItem"]
    assert finished.status == "complete" and sorted(finished.ready) == [0, 1]
    stored = ddb.get_item(TableName=table, Key={"stream_id": {"S": stream_id}}, ConsistentRead=True)["Item"]
    assert stored["status"]["S"] == "complete"  # in the item itself, not only as read
    # and a repeated Finish (the task delivered twice) finds it so, and changes nothing
    assert manifest.finish(ddb, table, stream_id).status == "complete"


def test_every_read_of_a_manifest_is_strongly_consistent(ddb, table, stream_id):
    # An eventually consistent read may miss a ready mark made a moment ago, and the caller waits a poll longer
    # (moto answers both kinds alike, so the request itself is checked)
    planned(ddb, table, stream_id)
    sent = []

    def record(params, **_):
        sent.append(params.get("ConsistentRead"))

    ddb.meta.events.register("provide-client-params.dynamodb.GetItem", record)
    try:
        manifest.read(ddb, table, stream_id)
        manifest.read(ddb, table, stream_id, with_texts=True)
        manifest.read_planned(ddb, table, stream_id, "a" * 64)
    finally:
        ddb.meta.events.unregister("provide-client-params.dynamodb.GetItem", record)
    assert sent == [True, True, True]


def test_a_ready_mark_past_the_last_part_is_refused_and_cannot_stand_for_a_missing_part(ddb, table, stream_id):
    # Given a stream of three parts, two of them ready
    planned(ddb, table, stream_id, total=3)
    for i in (0, 1):
        assert manifest.mark_ready(ddb, table, stream_id, i, now_ms=now_ms())
    # When a part it does not have is marked ready (a stray Map item)
    assert not manifest.mark_ready(ddb, table, stream_id, 7, now_ms=now_ms())
    # Then it holds no such mark, and Finish fails the stream at the missing part instead of calling it complete
    assert sorted(manifest.read(ddb, table, stream_id).ready) == [0, 1]
    finished = manifest.finish(ddb, table, stream_id)
    assert finished.status == "failed" and finished.failed_index == 2


def test_finishing_a_stream_with_no_manifest_says_so(ddb, stream_id):
    with pytest.raises(StreamConflict, match="no manifest to finish"):
        manifest.finish(ddb, load_settings().table_name, stream_id + "-never")


def test_finish_judges_only_the_parts_its_run_spoke(ddb, table, stream_id):
    planned(ddb, table, stream_id, total=3)
    manifest.mark_ready(ddb, table, stream_id, 1, now_ms=now_ms())
    manifest.mark_ready(ddb, table, stream_id, 2, now_ms=now_ms())
    # part 0 is still being spoken by ConnectFunction: not this run's failure, not complete either
    assert manifest.finish(ddb, table, stream_id, owned={1, 2}).status == "streaming"
    manifest.mark_ready(ddb, table, stream_id, 0, now_ms=now_ms())
    assert manifest.read(ddb, table, stream_id).status == "complete"
    # a run whose own part is missing fails the stream there, and parts before it still play
    other = stream_id + "-b"
    planned(ddb, table, other, total=3)
    manifest.mark_ready(ddb, table, other, 1, now_ms=now_ms())
    finished = manifest.finish(ddb, table, other, owned={1, 2})
    assert finished.status == "failed" and finished.failed_index == 2


def test_the_local_cloud_refuses_an_expression_over_4_kb_as_dynamodb_does(ddb, table, stream_id):
    long_condition = " OR ".join(["attribute_exists(stream_id)"] * 200)
    with pytest.raises(ddb.exceptions.ClientError, match="Expression size has exceeded"):
        ddb.update_item(TableName=table, Key={"stream_id": {"S": stream_id}}, UpdateExpression="SET a = :a",
                        ConditionExpression=long_condition, ExpressionAttributeValues={":a": {"S": "x"}})


def test_a_long_answer_with_every_part_cached_is_planned_in_one_write_within_the_limit(ddb, table, stream_id):
    # Given a 200-part answer said before (a chat turn or a workflow planned it: not ConnectFunction)
    texts = [f"Part {i}. " for i in range(200)]
    manifest.begin(ddb, table, stream_id, "c" * 64, now_ms=now_ms(), ttl_hours=1)
    cached = {i: f"cache/{i:064x}.wav" for i in range(200)}
    # When it is planned
    planned, planned_here = manifest.plan(ddb, table, stream_id, "c" * 64, texts=texts, engine="espeak",
                                          voice="en-us", language="en", now_ms=now_ms(), ttl_hours=1, cached=cached)
    # Then the plan landed, the first cached parts are ready from the cache, in order, and the rest are left
    # for the workflow to speak
    assert planned_here and planned.total == 200
    ready = sorted(planned.ready)
    assert 40 <= len(ready) < 200 and ready == list(range(len(ready)))
    assert all(planned.keys[i] == cached[i] for i in ready)
    settings = load_settings()
    todo = pipeline.plan_output(stream_id, planned, settings, first="", cache_on=True, planned_here=True,
                                now_ms=now_ms())["parts"]
    assert [part["index"] for part in todo] == list(range(len(ready), 200))


class ResendsCreates:
    """DynamoDB as the SDK sees it when a write's answer is lost: the write was applied, the SDK sends it again,
    and the answer that comes back is the second send's."""

    def __init__(self, real):
        self.real, self.exceptions = real, real.exceptions

    def __getattr__(self, name):
        return getattr(self.real, name)

    def update_item(self, **request):
        if "attribute_not_exists(stream_id)" in request.get("ConditionExpression", ""):
            self.real.update_item(**request)  # applied; its answer never arrives
        return self.real.update_item(**request)


@pytest.mark.parametrize("create", ["begin", "begin_planned"])
def test_a_create_whose_answer_was_lost_and_resent_is_still_ours(ddb, table, stream_id, create):
    # When the SDK resends a stream's creation whose first send was applied (its answer timed out)
    args = {"now_ms": now_ms(), "ttl_hours": 1}
    if create == "begin_planned":
        args.update(texts=["One. ", "Two. "], engine="espeak", voice="en-us", language="en")
    created, found = getattr(manifest, create)(ResendsCreates(ddb), table, stream_id, "e" * 64, **args)
    # Then the request knows it created the stream (so it starts the workflow), not that someone else did
    assert created and found.input_hash == "e" * 64
    # And a real retry of the same start (another request) still finds it is not the creator
    again, _ = getattr(manifest, create)(ddb, table, stream_id, "e" * 64, **args)
    assert not again


@pytest.mark.parametrize("create", ["begin", "begin_planned"])
def test_a_stream_expires_its_ttl_hours_after_it_was_created(ddb, table, stream_id, create):
    created_ms = now_ms()
    if create == "begin":
        manifest.begin(ddb, table, stream_id, "e" * 64, now_ms=created_ms, ttl_hours=3)
    else:
        manifest.begin_planned(ddb, table, stream_id, "e" * 64, texts=["One. "], engine="espeak", voice="en-us",
                               language="en", now_ms=created_ms, ttl_hours=3)
    item = ddb.get_item(TableName=table, Key={"stream_id": {"S": stream_id}}, ConsistentRead=True)["Item"]
    assert int(item["expires_at"]["N"]) == created_ms // 1000 + 3 * 3600  # epoch seconds, as DynamoDB's TTL reads


def test_a_stream_past_its_ttl_is_gone_and_its_id_starts_afresh(ddb, table, stream_id):
    # Given a stream that failed two hours ago and outlived its 1-hour TTL, which DynamoDB has not deleted yet
    two_hours_ago = now_ms() - 2 * 3600 * 1000
    manifest.begin(ddb, table, stream_id, "f" * 64, now_ms=two_hours_ago, ttl_hours=1)
    manifest.plan(ddb, table, stream_id, "f" * 64, texts=["Old. ", "Older. "], engine="espeak", voice="en-us",
                  language="en", now_ms=two_hours_ago, ttl_hours=1)
    assert manifest.mark_part_failed(ddb, table, stream_id, 0, "the engine failed")
    assert ddb.get_item(TableName=table, Key={"stream_id": {"S": stream_id}}).get("Item")  # still stored
    # Then nobody is served it any more (its parts may be deleted already)
    assert manifest.read(ddb, table, stream_id) is None
    # And the id, reused for another answer, starts a new stream with nothing of the old one
    created, found = manifest.begin_planned(ddb, table, stream_id, "0" * 64, texts=["New. "], engine="espeak",
                                            voice="en-us", language="en", now_ms=now_ms(), ttl_hours=1)
    assert created
    fresh = manifest.read(ddb, table, stream_id, with_texts=True)
    assert (fresh.status, fresh.total, fresh.texts, fresh.failed_index, fresh.error) == (
        "streaming", 1, ["New. "], None, "")


def test_a_chat_turn_begun_over_an_expired_stream_is_not_planned_yet(ddb, table, stream_id):
    long_ago = now_ms() - 3 * 3600 * 1000
    manifest.begin(ddb, table, stream_id, "f" * 64, now_ms=long_ago, ttl_hours=1)
    manifest.plan(ddb, table, stream_id, "f" * 64, texts=["Old. "], engine="espeak", voice="en-us", language="en",
                  now_ms=long_ago, ttl_hours=1)
    created, _ = manifest.begin(ddb, table, stream_id, "1" * 64, now_ms=now_ms(), ttl_hours=1)
    fresh = manifest.read(ddb, table, stream_id, with_texts=True)
    assert created and (fresh.status, fresh.total, fresh.texts, fresh.engine) == ("starting", None, None, "")


def test_keeping_taking_and_claiming_survive_a_resend_after_a_lost_answer(ddb, table, stream_id):
    resending = ResendsEveryWrite(ddb)
    manifest.begin(ddb, table, stream_id, "a" * 64, now_ms=now_ms() - 60_000, ttl_hours=1)
    # A kept start is kept once, though its write was sent twice
    assert manifest.keep_start(resending, table, stream_id, {"stream_id": stream_id, "question": "q"})
    assert manifest.read(ddb, table, stream_id).kept_starts == 1
    # Taking it, sent twice, still hands it to the one request that took it
    assert manifest.take_starts(resending, table, stream_id) == [{"stream_id": stream_id, "question": "q"}]
    assert manifest.take_starts(ddb, table, stream_id) == []
    # A claim to restart a stuck start, sent twice, is still this request's claim
    assert manifest.claim_restart(resending, table, stream_id, now_ms=now_ms())


class ResendsEveryWrite(ResendsCreates):
    def update_item(self, **request):
        self.real.update_item(**request)  # applied; its answer never arrives
        return self.real.update_item(**request)


def test_a_run_that_fails_outside_its_parts_does_not_fail_a_part_another_run_is_speaking(ddb, table, stream_id):
    # Given ConnectFunction still speaking part 0 when the run that speaks the rest fails for good (its Plan)
    planned(ddb, table, stream_id, total=4)
    assert manifest.fail_stream(ddb, table, stream_id, "Plan failed", owned={1, 2, 3})
    # Then the stream fails at part 1, and part 0, once ready, still plays before the apology
    assert manifest.read(ddb, table, stream_id).failed_index == 1
    assert manifest.mark_ready(ddb, table, stream_id, 0, now_ms=now_ms())
    batch = batches.next_batch(manifest.read(ddb, table, stream_id), 0, 5, now_ms=now_ms(), timeout_ms=330_000)
    assert batch.indexes == (0,) and batch.final and batch.status == "failed"


@pytest.mark.parametrize("role, failed_at", [("inline", 1), ("only", 0), ("", 0), (["odd"], 0)])
def test_record_failure_fails_a_stream_at_the_first_part_the_failed_run_answers_for(ddb, table, stream_id, role,
                                                                                    failed_at):
    planned(ddb, table, stream_id, total=4)
    event = {"stream_id": stream_id, "first_part": role, "failure": {"Error": "States.TaskFailed", "Cause": "x"}}
    assert pipeline.record_failure(ddb, load_settings(), event)["recorded"]
    assert manifest.read(ddb, table, stream_id).failed_index == failed_at


@pytest.mark.parametrize("failure, message", [
    ({"Error": "States.TaskFailed", "Cause": '{"errorMessage": "the engine rejected it", "errorType": "X"}'},
     "States.TaskFailed: the engine rejected it"),  # a Lambda error's message, not its JSON
    ({"Error": "States.Timeout", "Cause": "ran past 60 s"}, "States.Timeout: ran past 60 s"),
    ({"Error": "States.Timeout"}, "States.Timeout"),
    ({"Cause": "x" * 2000}, "Error: " + "x" * 993),  # cut to 1,000 characters
    (None, "unknown failure"),
    ("a string", "unknown failure"),
])
def test_a_catch_result_becomes_a_one_line_reason(failure, message):
    assert pipeline.failure_message(failure) == message


@pytest.mark.parametrize("index, failed_at", [(2, 2), (0, 0), (True, 0), ("2", 0)],
                         ids=["part-2", "part-0", "a-boolean-is-no-index", "a-string-is-no-index"])
def test_record_failure_fails_a_stream_at_the_part_that_failed(ddb, table, stream_id, index, failed_at):
    # A Map item's Catch names its part; anything else that is not a whole number fails the run's first part
    planned(ddb, table, stream_id, total=4)
    event = {"stream_id": stream_id, "index": index, "failure": {"Error": "States.TaskFailed", "Cause": "x"}}
    assert pipeline.record_failure(ddb, load_settings(), event)["recorded"]
    assert manifest.read(ddb, table, stream_id).failed_index == failed_at


@pytest.mark.parametrize("results, spoken", [
    (None, []),  # the Map failed as a whole
    ([], []),
    ([{"index": 0}, {"index": 2, "error": "States.TaskFailed"}, {"index": 1}], [0, 1]),
])
def test_finish_counts_as_spoken_only_the_parts_whose_result_has_no_error(results, spoken):
    assert pipeline.spoken_parts(results) == spoken


@pytest.mark.parametrize("results, problem", [
    ({"index": 0}, "part_results must be the Map's list of results"),
    ([{"index": -1}], "a part result must carry its index as a whole number"),
    ([{"index": True}], "a part result must carry its index as a whole number"),
    ([{"index": "0"}], "a part result must carry its index as a whole number"),
    ([{}], "a part result must carry its index as a whole number"),
    (["0"], "a part result must carry its index as a whole number"),
])
def test_finish_refuses_part_results_that_are_not_the_maps(results, problem):
    with pytest.raises(InvalidInput, match=problem):
        pipeline.spoken_parts(results)


def test_a_failure_with_no_usable_stream_id_is_not_recorded_and_says_why(ddb, table):
    # It runs in the workflow's error path: bad input is answered, never raised
    assert pipeline.record_failure(ddb, load_settings(), {"stream_id": "../x", "index": 0}) == {
        "recorded": False, "error": "unknown failure"}
    assert pipeline.record_failure(ddb, load_settings(), ["not", "an", "event"])["recorded"] is False


def test_the_workflow_state_budget_keeps_room_for_every_parts_result_and_a_margin(monkeypatch):
    # Plan's output must leave room in the 256 KiB state for the Map's results (32 bytes a part) and 8 KiB more
    found = manifest.Manifest("s1", "streaming", total=100, texts=["Your order shipped today. "] * 100,
                              engine="espeak", voice="en-us", language="en")

    def plan_output():
        return pipeline.plan_output("s1", found, load_settings(), first="", cache_on=False, planned_here=True,
                                    now_ms=1)

    monkeypatch.setattr(pipeline, "STATE_MAX_BYTES", 10**9)
    size = len(json.dumps(plan_output(), ensure_ascii=False, separators=(",", ":")).encode())
    needed = size + 32 * 100 + 8192
    monkeypatch.setattr(pipeline, "STATE_MAX_BYTES", needed)
    assert len(plan_output()["parts"]) == 100  # exactly at the budget: it fits
    monkeypatch.setattr(pipeline, "STATE_MAX_BYTES", needed - 1)
    with pytest.raises(InvalidInput, match=f"the answer makes 100 parts to speak, {needed} bytes of workflow state"):
        plan_output()


@pytest.mark.parametrize("status", ["cancelled", "complete"])
def test_a_plan_delivered_again_after_the_stream_ended_speaks_nothing(status):
    found = manifest.Manifest("s1", status, total=3, texts=["One. ", "Two. ", "Three. "], ready={0: 1},
                              engine="espeak", voice="en-us", language="en")
    output = pipeline.plan_output("s1", found, load_settings(), first="", cache_on=False, planned_here=False,
                                  now_ms=1)
    assert output["parts"] == []
