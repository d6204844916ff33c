"""The synthesis workflow, run for real: template.yaml on localcloud, the ASL executed by moto, our handlers
in-process, eSpeak speaking every part. Checked from the store's side: S3 objects and the manifest."""

import json
import subprocess

import pytest
from botocore.exceptions import ClientError

from localcloud import faults, runs
from tts_stream import audio, manifest, pipeline
from tts_stream.config import part_key

TEXT = (
    "Thanks for calling. Your order shipped on Monday and should arrive by Friday. "
    "주문하신 상품은 월요일에 발송되었습니다. 금요일까지 도착할 예정입니다. "
    "Is there anything else I can help you with today? 다른 문의 사항이 있으신가요?"
)


@pytest.fixture(autouse=True)
def sentence_sized_parts(setting):
    """Short answers still make several parts: as if deployed with FirstChunkMaxChars=30, ChunkTargetChars=30.
    The prompt cache is off here: these tests check where every newly spoken part is written (the cache has
    tests of its own, in test_voices.py)."""
    setting("FIRST_CHUNK_MAX_CHARS", 30)
    setting("CHUNK_TARGET_CHARS", 30)
    setting("PROMPT_CACHE", "false")


def _keys(cloud, stream_id):
    s3 = cloud.client("s3")
    listed = s3.list_objects_v2(Bucket=cloud.physical("AudioBucket"), Prefix=f"streams/{stream_id}/")
    return sorted(obj["Key"] for obj in listed.get("Contents", []))


def _manifest(cloud, stream_id, with_texts=False):
    return manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), stream_id, with_texts=with_texts)


def _part_bytes(cloud, stream_id, index):
    s3 = cloud.client("s3")
    return s3.get_object(Bucket=cloud.physical("AudioBucket"), Key=part_key(stream_id, index))["Body"].read()


def test_a_mixed_english_korean_answer_becomes_ordered_connect_parts(cloud, stream_id, tmp_path):
    # Given a multi-sentence English and Korean answer
    # When the real workflow runs it
    report = runs.run_stream(cloud, TEXT, stream_id=stream_id, out_dir=tmp_path)

    # Then the stream is complete, with parts 0..N-1 once each under the stream's prefix
    found = _manifest(cloud, stream_id, with_texts=True)
    assert report["execution"]["status"] == "SUCCEEDED"
    assert found.status == "complete"
    assert found.total >= 4
    assert _keys(cloud, stream_id) == [part_key(stream_id, i) for i in range(found.total)]
    assert sorted(found.ready) == list(range(found.total))
    # and nothing of the answer is lost or reordered
    assert "".join(found.texts) == TEXT
    # and every part is an 8 kHz mono u-law WAV holding real speech, as soxi and our decoder read it
    for part in report["parts"]:
        wav = audio.read_connect_wav(_part_bytes(cloud, stream_id, part["index"]))
        assert wav.duration_ms > 300
        assert audio.rms_dbfs(audio.ulaw_to_pcm16(wav.ulaw)) > -40
        soxi = subprocess.run(["soxi", part["file"]], capture_output=True, text=True, check=True).stdout
        assert "Channels       : 1" in soxi
        assert "Sample Rate    : 8000" in soxi
        assert "u-law" in soxi


def test_a_part_synthesized_twice_leaves_one_object_and_one_ready_mark(cloud, stream_id):
    # Given a finished stream
    runs.run_stream(cloud, "The first sentence is here. The second sentence is here. The third sentence is here.", stream_id=stream_id)
    before = _manifest(cloud, stream_id, with_texts=True)
    keys_before = _keys(cloud, stream_id)

    # When part 1 is delivered again (Express async executions are at-least-once)
    part = {"stream_id": stream_id, "index": 1, "text": before.texts[1], "engine": before.engine,
            "voice": before.voice, "language": before.language}
    cloud.invoke("SynthesizeFunction", part)

    # Then there is still exactly one object and one ready mark per part, the first mark kept
    after = _manifest(cloud, stream_id)
    assert _keys(cloud, stream_id) == keys_before
    assert after.ready == before.ready
    assert after.status == "complete"


def test_a_part_that_fails_for_good_fails_the_stream_at_its_index(cloud, stream_id):
    # Given an engine that rejects the third sentence for good
    text = "One is fine. Two is fine. Three breaks the engine. Four is fine."
    with faults.engine_faults(faults.EngineFault("Three breaks", permanent=True)) as calls:
        report = runs.run_stream(cloud, text, stream_id=stream_id, language="en")

    # Then the workflow ends, the stream is failed and the first failed index is recorded with a reason
    found = _manifest(cloud, stream_id, with_texts=True)
    failing = next(i for i, t in enumerate(found.texts) if "Three breaks" in t)
    assert report["execution"]["status"] == "SUCCEEDED"
    assert found.status == "failed"
    assert found.failed_index == failing
    assert "rejected the text" in found.error
    # and a permanent failure is not retried
    assert calls.count("Three breaks") == 1
    # and the parts before it are still there to be played
    assert all(i in found.ready for i in range(failing))
    assert failing not in found.ready


def test_the_maps_results_fit_the_room_plan_leaves_for_them_even_when_parts_fail(cloud, stream_id, monkeypatch):
    # Given an engine that rejects two sentences for good, with a long reason
    finished = []
    finish = pipeline.finish_stream
    monkeypatch.setattr(pipeline, "finish_stream", lambda ddb, settings, event: finished.append(event) or
                        finish(ddb, settings, event))
    text = "One is fine. Two breaks the engine. Three is fine. Four breaks the engine too. Five is fine."
    with faults.engine_faults(faults.EngineFault("breaks the engine", permanent=True)):
        runs.run_stream(cloud, text, stream_id=stream_id, language="en")

    # Then every part's result in the workflow's state, failed or spoken, is within what Plan budgets for it
    [event] = finished
    results = event["part_results"]
    assert len(results) == _manifest(cloud, stream_id).total
    assert sum("error" in result for result in results) == 2
    for result in results:
        assert len(json.dumps(result, separators=(",", ":"))) + 1 <= pipeline._RESULT_BYTES_PER_PART


def test_a_transient_engine_failure_is_retried_to_success(cloud, stream_id):
    # Given an engine that times out twice on one sentence, then recovers
    text = "Hello there. This sentence times out twice before it works. Goodbye now."
    with faults.engine_faults(faults.EngineFault("times out twice", times=2)) as calls:
        runs.run_stream(cloud, text, stream_id=stream_id, language="en")

    # Then the workflow retried it and the stream is complete
    found = _manifest(cloud, stream_id)
    assert found.status == "complete"
    assert sorted(found.ready) == list(range(found.total))
    assert calls.count("times out twice") == 3


@pytest.mark.parametrize("payload, message", [
    ({"stream_id": "bad-missing-text"}, "text is missing or empty"),
    ({"stream_id": "bad-empty-text", "text": "   "}, "text is missing or empty"),
    ({"stream_id": "bad-huge-text", "text": "word " * 5000}, "the most a stream takes is 20000"),
    ({"stream_id": "../../etc/passwd", "text": "Escape the prefix."}, "is not valid"),
    ({"stream_id": "a/b", "text": "Slash in the id."}, "is not valid"),
    ({"text": "No stream id at all."}, "is not valid"),
    ({"stream_id": "bad-language", "text": "Hello.", "language": "fr"}, "language 'fr' is not supported"),
], ids=["missing-text", "empty-text", "oversized-text", "dotdot-id", "slash-id", "no-id", "unknown-language"])
def test_bad_workflow_input_is_rejected_with_a_clear_error(cloud, payload, message):
    # When the workflow is started with bad input
    execution = cloud.wait_execution(cloud.start_execution("SynthesisStateMachine", payload))

    # Then it fails with InvalidInput and a cause that says what was wrong
    assert execution["status"] == "FAILED"
    assert execution["error"] == "InvalidInput"
    assert message in json.loads(execution["cause"])["errorMessage"]
    # and nothing was written for it
    stream_id = payload.get("stream_id")
    if isinstance(stream_id, str) and "/" not in stream_id:
        assert _manifest(cloud, stream_id) is None
        assert _keys(cloud, stream_id) == []


def test_two_executions_of_one_stream_at_once_leave_one_object_and_one_mark_per_part(cloud, stream_id):
    # Given the same stream delivered twice at once (async Express executions are at-least-once)
    payload = {"stream_id": stream_id, "text": TEXT}
    first = cloud.start_execution("SynthesisStateMachine", payload)
    second = cloud.start_execution("SynthesisStateMachine", payload)
    outcomes = [cloud.wait_execution(first)["status"], cloud.wait_execution(second)["status"]]

    # Then both end well and the stream is whole: one object and one ready mark per part
    found = _manifest(cloud, stream_id)
    assert outcomes == ["SUCCEEDED", "SUCCEEDED"]
    assert found.status == "complete"
    assert _keys(cloud, stream_id) == [part_key(stream_id, i) for i in range(found.total)]
    assert sorted(found.ready) == list(range(found.total))


def test_s3_throttling_on_a_part_is_retried_to_success(cloud, stream_id):
    # Given S3 answering SlowDown to the first two PutObject calls of the synthesis function
    import workflow

    throttled = []

    def slow_down(params, **kwargs):
        if len(throttled) < 2:
            throttled.append(params["Key"])
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                               "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")

    events = workflow._client("s3").meta.events
    events.register("before-parameter-build.s3.PutObject", slow_down, unique_id="test-slow-down")
    try:
        runs.run_stream(cloud, "Throttled at first. Then stored. All parts arrive.", stream_id=stream_id)
    finally:
        events.unregister("before-parameter-build.s3.PutObject", unique_id="test-slow-down")

    # Then the workflow retried and every part is there
    found = _manifest(cloud, stream_id)
    assert len(throttled) == 2
    assert found.status == "complete" and sorted(found.ready) == list(range(found.total))


def test_an_answer_too_big_for_a_workflows_state_fails_clearly_instead_of_hanging(cloud, stream_id, setting):
    # Given settings the template allows that split a long Korean answer into ~1,300 short parts: more than the
    # 256 KB a workflow's state may hold (Step Functions would stop the run where no Catch sees it)
    setting("CHUNK_TARGET_CHARS", 20)
    setting("MAX_TEXT_CHARS", 40000)
    text = "주문하신 휴대폰은 월요일에 발송되었습니다. " * 1500
    # When the workflow plans it
    result = runs.run_stream(cloud, text, stream_id=stream_id)
    # Then the run fails at Plan, saying why and what to change, and the stream is failed, not left streaming
    assert result["execution"]["status"] == "FAILED" and result["execution"]["error"] == "InvalidInput"
    assert "bytes of workflow state" in json.loads(result["execution"]["cause"])["errorMessage"]
    assert result["status"] == "failed" and result["failed_index"] == 0 and result["parts"] == []
