"""What the localcloud commands do once the cloud is up: run a stream and report on it."""

import time
import uuid
from pathlib import Path

from tts_stream import audio, manifest
from tts_stream.config import part_key

STATE_MACHINE = "SynthesisStateMachine"


def run_stream(cloud, text: str, *, stream_id=None, voice=None, language=None, out_dir: Path | None = None,
               timeout_s: float = 120) -> dict:
    """Start the workflow with this text, wait for its outcome and report every part and when it was ready."""
    stream_id = stream_id or f"local-{uuid.uuid4().hex[:12]}"
    payload = {"stream_id": stream_id, "text": text}
    if voice:
        payload["voice"] = voice
    if language:
        payload["language"] = language
    started_ms = time.time_ns() // 1_000_000
    execution = cloud.wait_execution(cloud.start_execution(STATE_MACHINE, payload), timeout_s)
    report = stream_report(cloud, stream_id, started_ms, out_dir)
    report["execution"] = {"status": execution["status"], "error": execution.get("error", ""),
                           "cause": execution.get("cause", "")}
    return report


def stream_report(cloud, stream_id: str, started_ms: int, out_dir: Path | None = None) -> dict:
    ddb, s3 = cloud.client("dynamodb"), cloud.client("s3")
    table, bucket = cloud.physical("ManifestTable"), cloud.physical("AudioBucket")
    found = manifest.read(ddb, table, stream_id, with_texts=True)
    if found is None:
        return {"stream_id": stream_id, "status": "not_found", "parts": []}
    parts = []
    for index in sorted(found.ready):
        key = part_key(stream_id, index)
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        wav = audio.read_connect_wav(data)
        part = {"index": index, "text": found.texts[index].strip() if found.texts else "", "key": key,
                "ready_ms": found.ready[index] - started_ms, "bytes": len(data), "duration_ms": round(wav.duration_ms)}
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / Path(key).name
            path.write_bytes(data)
            part["file"] = str(path)
        parts.append(part)
    return {
        "stream_id": stream_id, "status": found.status, "total": found.total, "engine": found.engine,
        "voice": found.voice, "language": found.language, "failed_index": found.failed_index,
        "error": found.error, "bucket": bucket, "prefix": f"streams/{stream_id}/", "parts": parts,
    }


def describe_stream(report: dict) -> str:
    lines = [f"stream {report['stream_id']}: {report['status']}, {len(report['parts'])}/{report.get('total')} parts, "
             f"engine {report.get('engine')}, voice {report.get('voice')} ({report.get('language')})"]
    if report.get("error"):
        lines.append(f"error: {report['error']} (first failed part {report.get('failed_index')})")
    lines.append(f"{'part':>4}  {'ready':>8}  {'audio':>7}  text")
    for part in report["parts"]:
        text = part["text"] if len(part["text"]) <= 60 else part["text"][:57] + "..."
        lines.append(f"{part['index']:>4}  {part['ready_ms']:>6}ms  {part['duration_ms'] / 1000:>6.2f}s  {text}")
    files = [p["file"] for p in report["parts"] if "file" in p]
    if files:
        lines.append(f"parts saved in {Path(files[0]).parent}/ (s3://{report['bucket']}/{report['prefix']})")
    return "\n".join(lines)


def wait_for_executions(cloud, timeout_s: float = 120):
    """Let executions a command started run to their end before the local cloud goes away."""
    sfn = cloud.client("stepfunctions")
    arn = cloud.physical(STATE_MACHINE)
    for execution in sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")["executions"]:
        cloud.wait_execution(execution["executionArn"], timeout_s)
