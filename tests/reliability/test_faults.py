"""Rehearse failures on a whole simulated call: the template's contact flow, ConnectFunction, the real workflow and
eSpeak, with faults injected where production fails (localcloud/faults.py). Whatever fails, the caller hears the
answer's parts in order, never twice, never another stream's, and the call ends: with the last part, or with the
spoken apology after every part that could be played. The store never holds a part marked ready that is not a
complete WAV.
"""

import contextlib
import itertools
import logging
import os
import time

import pytest

from localcloud import faults, runs
from tts_stream import cache, manifest
from tests.reliability.checks import bucket_keys, caller_heard, store_is_sound, stream_of

SPEED = 50
_numbers = itertools.count(1)


def answer() -> str:
    """A fresh answer per call: its parts were never spoken before, so no prompt-cache hit hides a fault."""
    n = f"{time.time_ns() % 10_000_000}{next(_numbers)}"
    return (f"Ticket {n} is open now. Order {n} shipped on Monday. Order {n} arrives by Friday. "
            f"We text you at every stop of {n}. Thanks for waiting on ticket {n}.")


@pytest.fixture(autouse=True)
def sentence_sized_parts(setting):
    """About one part per sentence, as if deployed with FirstChunkMaxChars=30 and ChunkTargetChars=30."""
    setting("FIRST_CHUNK_MAX_CHARS", 30)
    setting("CHUNK_TARGET_CHARS", 30)


def call_with(cloud, specs, text=None):
    text = text or answer()
    before = bucket_keys(cloud)
    invocations = {name: f.invocations for name, f in cloud.functions.items()}
    started = time.monotonic()
    with faults.injected(cloud, *specs) as injection:
        result = runs.run_call(cloud, text, speed=SPEED)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    result["invocations"] = {name: f.invocations - invocations[name] for name, f in cloud.functions.items()}
    result["injection"] = injection.report()
    result["deliveries"] = {index: n for (stream, index), n in injection.deliveries.items()
                            if stream == result["stream_id"]}
    return text, before, result


CASES = [
    # (specs, what the caller must hear)
    (["engine:part=2:transient=2"], "complete"),
    (["engine:part=2:permanent"], "apology"),
    (["engine:part=0:permanent"], "apology"),
    (["engine:part=1:slow=4000"], "complete"),
    (["engine:part=0:slow=4000"], "complete"),
    (["s3:put:throttle=2"], "complete"),
    (["ddb:update:throttle=2:function=SynthesizeFunction"], "complete"),
    (["ddb:update:throttle=1:function=FinishFunction"], "complete"),  # its one write: retried
    (["ddb:update:throttle=1:function=ConnectFunction"], "apology"),
    (["ddb:get:throttle=1:function=ConnectFunction"], "complete"),  # a passing read failure: the flow asks again
    (["ddb:batchwrite:throttle=1"], "complete"),  # no prompt-cache entries: nothing the caller hears
    (["map:duplicate=1"], "complete"),
    (["sfn:start:throttle=1"], "complete"),  # kept in the manifest: the next batch request starts it
    (["connect:retry=2"], "complete"),
    (["engine:part=1:transient=1", "map:duplicate=1", "connect:retry=1"], "complete"),
    (["engine:part=3:permanent", "map:duplicate=3"], "apology"),
    (["map:duplicate=0", "engine:part=0:transient=1"], "complete"),
    (["s3:put:throttle=1", "ddb:update:throttle=1:function=SynthesizeFunction", "engine:part=0:slow=1500",
      "connect:retry=1"], "complete"),
]


@pytest.mark.parametrize("specs, expect", CASES, ids=[" + ".join(specs) for specs, _ in CASES])
def test_the_caller_hears_an_ordered_answer_or_the_apology(cloud, specs, expect):
    # Given the faults, when a caller is read a fresh answer
    text, before, result = call_with(cloud, specs)

    # Then every fault happened
    fired = result["injection"]["fired"]
    assert all(fired[spec] >= 1 for spec in specs), fired
    # and the caller heard their own parts in order, once each, and the call ended as expected
    facts = caller_heard(cloud, text, result, expect=expect)
    # and the store holds nothing half-written, nothing outside the stream
    store = store_is_sound(cloud, stream_of(text, result), before)
    print(f"\n| `{' + '.join(specs)}` | {facts['parts_heard']}/{facts['total']} parts, status {facts['status']}, "
          f"ended by {facts['ended_by']}{', apology' if facts['messages'] else ''} | ttfa {result['ttfa_ms']} ms, "
          f"gaps {max(result['gaps_ms'] or [0]):.0f} ms max, {result['elapsed_s']} s, "
          f"Connect invocations {result['invocations']['ConnectFunction']}, "
          f"Synthesize invocations {result['invocations']['SynthesizeFunction']}, objects {store['objects']} |")


def test_a_permanently_failing_part_ends_the_call_after_every_part_before_it(cloud):
    text, before, result = call_with(cloud, ["engine:part=2:permanent"])
    assert [part["index"] for part in result["parts"]] == [0, 1]
    assert result["status"] == "failed" and result["final"] is True
    assert result["messages"] == ["Sorry, I can't read the answer right now. Please try again later. Goodbye."]


def test_a_slow_part_is_waited_for_not_skipped(cloud):
    text, before, result = call_with(cloud, ["engine:part=1:slow=4000"])
    # The caller waits between part 0 and part 1 (the flow loops get_next_batch meanwhile), then hears the rest
    assert result["gaps_ms"][0] > 2500
    assert result["lambda_invocations"] >= 3


def test_a_workflow_that_failed_to_start_is_started_by_the_next_request(cloud):
    text, before, result = call_with(cloud, ["sfn:start:throttle=1"])
    # The caller heard part 0 at once, then the rest: the first get_next_batch started the kept workflow
    assert result["ttfa_ms"] is not None and result["status"] == "complete"
    assert result["injection"]["fired"]["sfn:start:throttle=1"] == 1
    assert result["aws_calls"]["stepfunctions.StartExecution"] == 1  # the one that got through
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), stream_of(text, result))
    assert found.kept_starts == 0


def test_a_workflow_that_never_starts_ends_the_call_after_part_0(cloud, setting):
    setting("STREAM_TIMEOUT_SECONDS", 3)
    text, before, result = call_with(cloud, ["sfn:start:throttle=1000"])
    # Every request tried again; the stream's timeout ended the call with the apology, after part 0
    assert [part["index"] for part in result["parts"]] == [0]
    assert result["final"] and result["messages"]
    assert result["injection"]["fired"]["sfn:start:throttle=1000"] >= 2
    caller_heard(cloud, text, result, expect="apology")


def test_connect_retries_repeat_every_request_but_no_part(cloud):
    text, before, result = call_with(cloud, ["connect:retry=2"])
    assert result["invocations"]["ConnectFunction"] == 3 * result["lambda_invocations"]
    assert result["aws_calls"]["stepfunctions.StartExecution"] == 1  # the retried start started one workflow
    assert len({part["url"] for part in result["parts"]}) == len(result["parts"])


def test_a_duplicated_map_item_is_one_object_and_one_ready_mark(cloud):
    text, before, result = call_with(cloud, ["map:duplicate=1"])
    # SynthesizeFunction ran twice for part 1, once for every other part the workflow spoke
    assert result["deliveries"][1] == 2 and all(n == 1 for i, n in result["deliveries"].items() if i != 1)
    assert "the second succeeded" in result["injection"]["log"][0]


def test_faults_are_gone_after_the_block(cloud):
    # Given a block that throttled everything it could
    with faults.injected(cloud, "s3:put:throttle=1000", "ddb:get:throttle=1000", "ddb:update:throttle=1000",
                         "engine:part=0:permanent", "connect:retry=3", "map:duplicate=0"):
        pass
    # When a call runs afterwards, nothing fails and nothing is repeated
    text, before, result = call_with(cloud, [])
    caller_heard(cloud, text, result, expect="complete")
    assert result["invocations"]["ConnectFunction"] == result["lambda_invocations"]
    assert all(n == 1 for n in result["deliveries"].values())
    assert sum(result["deliveries"].values()) == result["invocations"]["SynthesizeFunction"]


@contextlib.contextmanager
def function_logs():
    """Every log line the functions write at the default level (INFO), formatted as CloudWatch would get it."""
    import connect  # noqa: F401 - the handler modules own the service's logger and its JSON formatter
    import workflow
    from tts_stream import streams

    service = logging.getLogger(os.environ.get("POWERTOOLS_SERVICE_NAME", "connect-tts-stream"))
    # streams logs through a child of the service's logger, named after the service its first importer saw (an
    # earlier test may have imported it before the local cloud set the name): listen to it where it is.
    child = streams.logger._logger
    listened = [service] if child.name.startswith(service.name + ".") else [service, child]
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(workflow.logger._logger.handlers[0].format(record))
    levels = [logger.level for logger in listened]
    for logger in listened:
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    try:
        yield lines
    finally:
        for logger, level in zip(listened, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)


def test_the_callers_words_never_reach_the_logs(cloud):
    # Given an answer with a word found nowhere else, and failures that take the warning paths
    marker = f"Zanzibar{time.time_ns() % 100_000}"
    text = f"{marker} ordered a lamp. The lamp for {marker} has shipped. It reaches {marker} on Friday."
    with function_logs() as lines:
        _, _, result = call_with(cloud, ["engine:part=1:permanent", "s3:put:throttle=1"], text=text)
    # Then the functions logged what happened, but never the words
    assert result["messages"]
    assert any('"failure recorded"' in line for line in lines) and any('"part ready"' in line for line in lines)
    assert any('"message":"batch"' in line for line in lines)
    assert [line for line in lines if marker in line] == []


@pytest.mark.parametrize("text, writer, warning", [
    (None, "Finish", "parts not indexed in the prompt cache"),  # every part, part 0 included, in one write
    ("Ticket {n} is open now.", "ConnectFunction", "part 0 not indexed in the prompt cache"),  # no workflow
], ids=["answer-of-parts", "one-part-answer"])
def test_cache_entries_that_cannot_be_written_are_logged_and_the_stream_still_completes(cloud, text, writer, warning):
    # Given the call's cache-entry write throttled for good: Finish's, or for a one-part answer ConnectFunction's
    with function_logs() as lines:
        _, _, result = call_with(cloud, ["ddb:batchwrite:throttle=1"],
                                 text=text and text.format(n=time.time_ns() % 10_000_000))
    # Then the caller hears every part and the stream is complete
    assert result["final"] and result["status"] == "complete" and not result["messages"]
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), result["stream_id"])
    assert found.status == "complete" and sorted(found.ready) == list(range(found.total))
    assert (found.total == 1) == (writer == "ConnectFunction")
    # and no entry was written, and the writer said so
    ddb, table = cloud.client("dynamodb"), cloud.physical("CacheTable")
    for key in found.keys.values():
        assert "Item" not in ddb.get_item(TableName=table, Key={"cache_key": {"S": cache.key_of_object(key)}})
    assert any(warning in line for line in lines)  # each message is logged by its writer only
    other = {"Finish": "part 0 not indexed in the prompt cache", "ConnectFunction": "parts not indexed"}[writer]
    assert not any(other in line for line in lines)
    assert result["injection"]["fired"] == {"ddb:batchwrite:throttle=1": 1}


@pytest.mark.parametrize("spec", ["engine", "engine:part=1", "engine:part=1:transient=0", "s3:get:throttle=1",
                                  "ddb:update:throttle=2:function=", "map:duplicate=-1", "connect:retry=lots", ""])
def test_a_bad_spec_says_what_is_accepted(spec):
    with pytest.raises(ValueError, match="engine:part=K|must be"):
        faults.parse(spec)


def test_a_very_slow_first_part_is_still_heard(cloud):
    text, before, result = call_with(cloud, ["engine:part=0:slow=8000"])
    caller_heard(cloud, text, result, expect="complete")


def test_a_throttle_of_a_function_that_does_not_exist_is_refused(cloud):
    with pytest.raises(ValueError, match="not in template.yaml"):
        with faults.injected(cloud, "ddb:get:throttle=1:function=PlanFunctoin"):
            pass


# Part 0 slow and failing once in ConnectFunction (so after ~3.5 s it hands part 0 to a workflow run of its own),
# while part 2 fails for good in the run that speaks the rest: the usual order in production, where a part the
# engine rejects fails within a second.
PART_0_HANDED_OFF_AFTER_PART_2_FAILED = ["engine:part=0:slow=2500", "engine:part=0:transient=1",
                                         "engine:part=2:permanent"]


def test_part_0_handed_to_its_own_run_after_a_later_part_failed_is_still_heard(cloud):
    text, before, result = call_with(cloud, PART_0_HANDED_OFF_AFTER_PART_2_FAILED)

    assert result["deliveries"].get(0) == 1, "part 0 was handed to a run of its own"
    assert [part["index"] for part in result["parts"]] == [0, 1], "every part before the failure, in order"
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), stream_of(text, result))
    assert found.status == "failed" and found.failed_index == 2 and "part 2" in found.error
    caller_heard(cloud, text, result, expect="apology")


def test_part_0s_run_throttled_after_a_later_part_failed_is_started_by_the_next_request(cloud, setting, monkeypatch):
    # Given the same failures, and StartExecution throttling the run that speaks part 0 once
    from botocore.exceptions import ClientError
    from tts_stream import streams

    setting("STREAM_TIMEOUT_SECONDS", 60)
    start, throttled = streams._start_workflow, []

    def throttle_part_0s_run_once(clients, settings, stream_id, workflow_input):
        if workflow_input.get("first_part") == "only" and not throttled:
            throttled.append(stream_id)
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, "StartExecution")
        return start(clients, settings, stream_id, workflow_input)

    monkeypatch.setattr(streams, "_start_workflow", throttle_part_0s_run_once)
    text, before, result = call_with(cloud, PART_0_HANDED_OFF_AFTER_PART_2_FAILED)

    # Then the failed stream still kept that start, the next request started it, and the caller heard parts 0-1
    # and the apology, not silence until the stream's timeout
    assert throttled
    assert [part["index"] for part in result["parts"]] == [0, 1] and result["elapsed_s"] < 30
    caller_heard(cloud, text, result, expect="apology")


def test_a_failure_recorded_for_a_stream_that_completes_is_not_counted_as_a_failed_stream(cloud, capfd):
    # Given Finish failing for good (its write throttled past every retry) after every part was spoken
    capfd.readouterr()
    text, before, result = call_with(cloud, ["engine:part=0:slow=3300", "ddb:update:throttle=4:function=FinishFunction"])

    # Then the caller heard the whole answer, the stream reads complete, and no StreamsFailed was emitted
    caller_heard(cloud, text, result, expect="complete")
    assert '"StreamsFailed"' not in capfd.readouterr().out
