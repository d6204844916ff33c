"""A simulated phone call through the template's own contact flow: what the caller hears, in order."""

import json
import subprocess
import sys
from pathlib import Path

from localcloud import runs
from tts_stream import audio, manifest

ROOT = Path(__file__).resolve().parents[2]
TEN_SENTENCES = (
    "Thanks for calling Example Telecom. Your new phone shipped on Monday. It should arrive by Friday afternoon. "
    "주문하신 휴대폰은 월요일에 발송되었습니다. 금요일 오후까지 도착할 예정입니다. "
    "If it is late, we will send a replacement at no cost. You can track it on our website at any time. "
    "배송 조회는 홈페이지에서 언제든지 가능합니다. 다른 문의 사항이 있으신가요? Thank you, and have a great day."
)


def test_a_call_plays_every_part_once_in_order_and_ends_final(cloud, setting, tmp_path):
    setting("CHUNK_TARGET_CHARS", 60)  # several batches' worth of parts from ten sentences
    result = runs.run_call(cloud, TEN_SENTENCES, speed=40, out_wav=tmp_path / "call.wav")

    assert result["final"] is True and result["status"] == "complete"
    assert result["ended_by"] == "EndCall" and result["messages"] == []
    indexes = [part["index"] for part in result["parts"]]
    assert indexes == list(range(result["total"]))
    assert result["total"] > 5  # more than one batch of five
    assert "".join(part["text"] + " " for part in result["parts"]).split() == TEN_SENTENCES.split()
    assert result["ttfa_ms"] is not None and len(result["gaps_ms"]) == result["total"] - 1
    assert result["lambda_invocations"] >= 2
    assert result["aws_calls"]["stepfunctions.StartExecution"] == 1

    # The caller's recording is exactly the parts' audio, in order
    s3, bucket = cloud.client("s3"), cloud.physical("AudioBucket")
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), result["stream_id"])
    parts = [audio.read_connect_wav(s3.get_object(Bucket=bucket, Key=found.key_of(i))["Body"].read())
             for i in indexes]
    heard = audio.read_connect_wav((tmp_path / "call.wav").read_bytes())
    assert heard.ulaw == b"".join(p.ulaw for p in parts)
    assert heard.duration_ms == sum(p.duration_ms for p in parts)


def test_the_call_command_prints_a_json_report(tmp_path):
    command = [sys.executable, "-m", "localcloud", "call", "--text", TEN_SENTENCES, "--speed", "50",
               "--out", str(tmp_path / "heard.wav"), "--json"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["final"] is True and report["status"] == "complete"
    assert [p["index"] for p in report["parts"]] == list(range(report["total"]))
    for key in ("stream_id", "ttfa_ms", "gaps_ms", "lambda_invocations", "aws_calls"):
        assert key in report
    for part in report["parts"]:
        assert {"index", "text", "ready_ms", "played_ms", "duration_ms"} <= set(part)
    assert audio.read_connect_wav((tmp_path / "heard.wav").read_bytes()).duration_ms > 5000
