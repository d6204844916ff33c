"""One consistent voice per stream, the prompt cache, and every engine behind the same pipeline."""

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from localcloud import faults, runs, tts_server
from tts_stream import audio, cache, engines, manifest

ROOT = Path(__file__).resolve().parents[2]


class EngineSpy:
    """Records which voice each synthesis used, then lets the real engine speak."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = engines.get_engine

        def get_engine(name, settings=None):
            engine = real(name, settings)
            speak = engine.synthesize

            def synthesize(text, voice):
                self.calls.append((name, voice, text))
                return speak(text, voice)

            engine.synthesize = synthesize
            return engine

        monkeypatch.setattr(engines, "get_engine", get_engine)


def unique_answer():
    tag = uuid.uuid4().hex[:6]
    return (f"Your reference is {tag}. Reference {tag} was registered today. "
            f"We will call you back about {tag} within one business day. Thank you for waiting, {tag}.")


def test_a_second_identical_answer_is_served_from_the_cache_without_the_engine(cloud, monkeypatch):
    # Given an answer spoken once
    spy = EngineSpy(monkeypatch)
    text = unique_answer()
    first = runs.run_call(cloud, text, speed=50)
    spoken_first = len(spy.calls)

    # When the same answer is asked for again, in another call
    second = runs.run_call(cloud, text, speed=50)

    # Then no part is synthesized again, and the caller hears the same parts, in order, from the cache
    assert spoken_first == first["total"] >= 2
    assert len(spy.calls) == spoken_first
    assert second["final"] and second["status"] == "complete"
    assert [p["index"] for p in second["parts"]] == list(range(second["total"]))
    assert all("/cache/" in p["url"] for p in second["parts"])
    assert [p["duration_ms"] for p in second["parts"]] == [p["duration_ms"] for p in first["parts"]]


def test_a_repeated_one_part_answer_is_served_from_the_cache(cloud, monkeypatch):
    # Given a one-part answer: ConnectFunction speaks it and no workflow runs, so no Finish indexes it
    spy = EngineSpy(monkeypatch)
    text = f"Your reference is {uuid.uuid4().hex[:6]}."
    first = runs.run_call(cloud, text, speed=50)

    # When the same answer is asked for again, then the cache entry ConnectFunction wrote serves it
    second = runs.run_call(cloud, text, speed=50)
    assert first["total"] == second["total"] == 1 and len(spy.calls) == 1
    assert second["status"] == "complete" and "/cache/" in second["parts"][0]["url"]


def _cache_entries(cloud, found) -> dict[str, int]:
    """Prompt-cache entry of each part of a stream, by part index: when its object was written, by the entry."""
    ddb, table = cloud.client("dynamodb"), cloud.physical("CacheTable")
    entries = {}
    for index, key in found.keys.items():
        item = ddb.get_item(TableName=table, Key={"cache_key": {"S": cache.key_of_object(key)}}).get("Item")
        if item:
            entries[index] = int(item["written_ms"]["N"])
    return entries


def test_a_calls_new_parts_are_indexed_with_their_ready_times_in_one_request(cloud, setting):
    # When an answer of several parts (one per sentence) is spoken for the first time, through the contact flow
    setting("CHUNK_TARGET_CHARS", 30)
    text = unique_answer()
    report = runs.run_call(cloud, text, speed=50)

    # Then every part is indexed in the prompt cache, written when its ready mark says
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), report["stream_id"])
    assert found.status == "complete" and found.total == 4
    assert _cache_entries(cloud, found) == found.ready
    # in one request, from the workflow's Finish: part 0, which ConnectFunction spoke, with the others
    assert report["aws_calls"]["dynamodb.BatchWriteItem"] == 1
    assert "dynamodb.PutItem" not in report["aws_calls"]


def test_a_one_part_answer_is_indexed_by_the_request_that_spoke_it(cloud):
    # When an answer of one part is spoken for the first time: no workflow, so no Finish
    report = runs.run_call(cloud, f"Your reference is {uuid.uuid4().hex[:6]}.", speed=50)

    # Then ConnectFunction wrote its entry, with its ready time
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), report["stream_id"])
    assert found.status == "complete" and found.total == 1
    assert _cache_entries(cloud, found) == found.ready
    assert report["aws_calls"]["dynamodb.BatchWriteItem"] == 1
    assert "stepfunctions.StartExecution" not in report["aws_calls"]


def test_an_answer_interrupted_while_its_parts_are_spoken_still_indexes_part_0(cloud, setting, monkeypatch):
    # Given an answer of several parts whose later parts are slow to speak
    setting("CHUNK_TARGET_CHARS", 30)
    text = unique_answer()
    opening = text.split(". ")[0]
    real = engines.get_engine
    later_parts_started = threading.Event()

    def slow_after_part_0(name, settings=None):
        engine = real(name, settings)
        speak = engine.synthesize

        def synthesize(part, voice):
            if opening not in part:
                later_parts_started.set()
                time.sleep(1.0)
            return speak(part, voice)

        engine.synthesize = synthesize
        return engine

    monkeypatch.setattr(engines, "get_engine", slow_after_part_0)
    # When the stream starts (part 0 spoken by ConnectFunction) and the caller interrupts it while the workflow
    # speaks the other parts
    contact = str(uuid.uuid4())
    first = cloud.invoke("ConnectFunction", connect_event(contact, Action="start_stream", Text=text))
    assert later_parts_started.wait(timeout=30)
    cloud.invoke("ConnectFunction", connect_event(contact, Action="stop", StreamId=first["StreamId"]))
    runs.wait_for_executions(cloud)

    # Then the stream is cancelled, and part 0 is in the prompt cache with its ready time all the same
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), first["StreamId"])
    assert first["Count"] == "1" and found.status == "cancelled"
    assert _cache_entries(cloud, found)[0] == found.ready[0]


def connect_event(contact: str, **params) -> dict:
    return {"Name": "ContactFlowEvent", "Details": {"ContactData": {"ContactId": contact, "Attributes": {}},
                                                    "Parameters": params}}


def test_a_first_part_served_from_the_cache_keeps_the_time_its_object_was_written(cloud, setting):
    # Given an answer spoken once, and a new answer that starts with the same sentence
    setting("CHUNK_TARGET_CHARS", 30)
    first = unique_answer()
    runs.run_call(cloud, first, speed=50)
    opening = first.split(". ")[0] + ". "
    report = runs.run_call(cloud, opening + unique_answer(), speed=50)

    # Then the new answer's part 0 played from the cache, and the workflow's Finish indexed only the parts it
    # spoke: part 0's entry still says when its object was written, before this stream existed
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), report["stream_id"])
    entries = _cache_entries(cloud, found)
    assert found.status == "complete" and found.ready[0] == found.created_ms
    assert entries[0] < found.created_ms
    assert {i: entries[i] for i in range(1, found.total)} == {i: found.ready[i] for i in range(1, found.total)}


def test_finish_indexes_the_parts_spoken_not_the_part_that_failed(cloud, stream_id, setting):
    # Given an answer of one part per sentence, and an engine that rejects one sentence for good
    setting("CHUNK_TARGET_CHARS", 30)
    text = f"{unique_answer()} This sentence breaks the engine. Then one more sentence."
    with faults.engine_faults(faults.EngineFault("breaks the engine", permanent=True)):
        runs.run_stream(cloud, text, stream_id=stream_id, language="en")

    # Then the failed part has no entry, and every part spoken has one with its ready time
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), stream_id)
    assert found.status == "failed" and found.failed_index not in found.ready
    assert _cache_entries(cloud, found) == found.ready
    assert len(found.ready) == found.total - 1


@pytest.mark.parametrize("results, message", [
    ("parts", "part_results must be the Map's list of results"),
    ([{"error": "x"}], "must carry its index as a whole number"),
    ([{"index": True}], "must carry its index as a whole number"),
    ([{"index": -1}], "must carry its index as a whole number"),
], ids=["not-a-list", "no-index", "bool-index", "negative-index"])
def test_finish_rejects_part_results_it_cannot_read_before_writing_anything(cloud, stream_id, results, message):
    # Given a stream planned and spoken, not yet finished
    planned = cloud.invoke("PlanFunction", {"stream_id": stream_id, "text": unique_answer()})
    for part in planned["parts"]:
        cloud.invoke("SynthesizeFunction", part)
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), stream_id)

    # When Finish is given results that are not the Map's
    with pytest.raises(Exception, match=message) as failure:
        cloud.invoke("FinishFunction", {"stream_id": stream_id, "total": planned["total"], "part_results": results})

    # Then it says what was wrong (InvalidInput: never retried), and nothing was indexed
    assert "InvalidInput" in str(failure.value)
    assert _cache_entries(cloud, found) == {}


def test_a_changed_voice_setting_does_not_change_a_stream_already_started(cloud, setting, monkeypatch, stream_id):
    # Given a stream planned with the English voice en-us
    setting("VOICE_EN", "en-us")
    spy = EngineSpy(monkeypatch)
    planned = cloud.invoke("PlanFunction", {"stream_id": stream_id, "text": unique_answer()})
    # When the configured voice changes before its parts are synthesized
    setting("VOICE_EN", "en-gb")
    for part in planned["parts"]:
        cloud.invoke("SynthesizeFunction", part)

    # Then every part was spoken with the pinned voice, which the manifest carries
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), stream_id)
    assert found.voice == "en-us"
    assert {part["voice"] for part in planned["parts"]} == {"en-us"}
    assert {voice for _, voice, _ in spy.calls} == {"en-us"}
    assert len(spy.calls) == found.total == len(found.ready)
    # and a new stream uses the new setting
    again = cloud.invoke("PlanFunction", {"stream_id": f"{stream_id}-b", "text": unique_answer()})
    assert {part["voice"] for part in again["parts"]} == {"en-gb"}


def test_the_cache_key_separates_voices_and_engine_settings(cloud, setting, monkeypatch):
    spy = EngineSpy(monkeypatch)
    text = unique_answer()
    runs.run_stream(cloud, text, voice="en-us")
    spoken = len(spy.calls)
    runs.run_stream(cloud, text, voice="en-gb")  # another voice is other audio: spoken again
    assert len(spy.calls) == 2 * spoken


@pytest.mark.parametrize("rate, response", [(22050, "wav"), (24000, "l16")])
def test_a_call_can_use_a_teams_own_tts_server(tmp_path, rate, response):
    # Given a real TTS server on 127.0.0.1 speaking at 22,050 or 24,000 Hz
    server, url = tts_server.serve(sample_rate=rate, response=response)
    try:
        # When a call runs with TtsEngine=http pointed at it
        done = subprocess.run(
            [sys.executable, "-m", "localcloud", "call", "--text", unique_answer(), "--speed", "50", "--json",
             "--out", str(tmp_path / "heard.wav"), "--parameter-overrides", "TtsEngine=http", f"TtsUrl={url}"],
            cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        server.stop()
    # Then the caller hears every part, each spoken by that server and resampled to Connect's 8 kHz
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["final"] and report["status"] == "complete"
    assert server.request_count == report["total"]
    assert [p["index"] for p in report["parts"]] == list(range(report["total"]))
    heard = audio.read_connect_wav((tmp_path / "heard.wav").read_bytes())
    assert heard.sample_rate == 8000 and heard.duration_ms > 3000


def test_with_a_teams_own_tts_server_the_workflow_speaks_part_0_too(cloud, setting):
    # An HTTP server's time is its own: ConnectFunction does not speak part 0 on Connect's 8-second path
    server, url = tts_server.serve()
    setting("TTS_ENGINE", "http")
    setting("TTS_URL", url)
    contact = str(uuid.uuid4())
    try:
        reply = cloud.invoke("ConnectFunction", connect_event(contact, Action="start_stream", Text=unique_answer()))
        runs.wait_for_executions(cloud)
    finally:
        server.stop()
    sfn = cloud.client("stepfunctions")
    arn = cloud.physical(runs.STATE_MACHINE)
    executions = [e for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=arn)
                  for e in page["executions"]]  # a page holds 100: earlier tests ran many
    started = [json.loads(sfn.describe_execution(executionArn=e["executionArn"])["input"]) for e in executions]
    ours = [given for given in started if isinstance(given, dict) and given.get("stream_id") == reply["StreamId"]]
    assert len(ours) == 1 and "first_part" not in ours[0]  # one run, for every part
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), reply["StreamId"])
    assert found.status == "complete" and found.engine == "http" and server.request_count == found.total
