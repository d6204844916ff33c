"""What the localcloud commands do once the cloud is up: run a stream and report on it."""

import json
import re
import time
import uuid
from pathlib import Path
from urllib.request import urlopen

from localcloud import phone
from tts_stream import audio, manifest

STATE_MACHINE = "SynthesisStateMachine"
_OBJECT_URL = re.compile(r"https://(?P<bucket>[a-z0-9.-]+)\.s3\.[a-z0-9-]+\.amazonaws\.com/(?P<key>.+)")
_PART_NAME = re.compile(r"part(\d+)\.wav")


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
    ddb, s3 = cloud.kept_client("dynamodb"), cloud.kept_client("s3")
    table, bucket = cloud.physical("ManifestTable"), cloud.physical("AudioBucket")
    found = manifest.read(ddb, table, stream_id, with_texts=True)
    if found is None:
        return {"stream_id": stream_id, "status": "not_found", "parts": []}
    parts = []
    for index in sorted(found.ready):
        key = found.key_of(index)
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        wav = audio.read_connect_wav(data)
        part = {"index": index, "text": found.texts[index].strip() if found.texts else "", "key": key,
                "ready_ms": found.ready[index] - started_ms, "bytes": len(data), "duration_ms": round(wav.duration_ms)}
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"part{index:04d}.wav"  # whether it plays from the stream's key or the cache's
            path.write_bytes(data)
            part["file"] = str(path)
        parts.append(part)
    return {
        "stream_id": stream_id, "status": found.status, "total": found.total, "engine": found.engine,
        "voice": found.voice, "language": found.language, "failed_index": found.failed_index,
        "error": found.error, "bucket": bucket, "parts": parts,
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
        where = sorted({str(Path(p["key"]).parent) for p in report["parts"]})
        lines.append(f"parts saved in {Path(files[0]).parent}/ (from s3://{report['bucket']}/ "
                     f"{', '.join(w + '/' for w in where)})")
    return "\n".join(lines)


def wait_for_executions(cloud, timeout_s: float = 120):
    """Let executions a command started run to their end before the local cloud goes away."""
    sfn = cloud.kept_client("stepfunctions")
    arn = cloud.physical(STATE_MACHINE)
    for execution in sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")["executions"]:
        cloud.wait_execution(execution["executionArn"], timeout_s)


def template_flow(template) -> dict:
    """The contact flow exactly as template.yaml deploys it, wired to the template's ConnectFunction."""
    return json.loads(template.resolve(template.body["Resources"]["StreamAnswerFlow"]["Properties"]["Content"]))


def fetch_part(cloud, url: str) -> bytes:
    """Fetch a part the way Play prompt does. An object URL is read with Connect's own (signed) access, which
    the bucket policy grants; a presigned URL is fetched with a plain HTTP GET, its signature being the access."""
    match = _OBJECT_URL.fullmatch(url)
    if match:
        s3 = cloud.connect_client("s3")
        return s3.get_object(Bucket=match.group("bucket"), Key=match.group("key"))["Body"].read()
    if not url.startswith(cloud.endpoint + "/"):
        raise ValueError(f"{url!r} is not an S3 URL of this local cloud")
    with urlopen(url, timeout=10) as response:
        return response.read()


def run_call(cloud, text: str, *, speed: float = 1.0, out_wav: Path | None = None,
             language: str = phone.DEFAULT_LANGUAGE) -> dict:
    """Simulate one phone call through the template's contact flow and report what the caller heard.
    `language` is the contact's language, which picks the flow's own prompts."""
    contact_id = str(uuid.uuid4())
    calls_before = cloud.aws_calls.snapshot()
    started_ms = time.time_ns() // 1_000_000
    report = phone.simulate_call(
        template_flow(cloud.template), contact_id=contact_id, attributes={"AnswerText": text},
        invoke_lambda=lambda arn, event: cloud.invoke("ConnectFunction", event),
        fetch_part=lambda url: fetch_part(cloud, url), speed=speed, caller=phone.Caller(language=language),
    )
    wait_for_executions(cloud)
    result = report.to_json()
    result["contact_id"] = contact_id
    result["aws_calls"] = dict(sorted((cloud.aws_calls.snapshot() - calls_before).items()))
    _add_manifest_facts(cloud, result, started_ms)
    if out_wav is not None:
        out_wav.parent.mkdir(parents=True, exist_ok=True)
        result["caller_wav"] = str(report.write_wav(out_wav))
    return result


def _add_manifest_facts(cloud, result: dict, started_ms: int):
    """Give each played part its index, its text and when it became ready, from the stream's manifest."""
    if not result.get("stream_id"):
        return
    found = manifest.read(cloud.kept_client("dynamodb"), cloud.physical("ManifestTable"), result["stream_id"],
                          with_texts=True)
    for part in result["parts"]:
        index = _index_of(found, part["url"])
        if index is None:
            index = int(_PART_NAME.search(part["url"]).group(1))
        part["index"] = index
        if found is not None:
            part["text"] = found.texts[index].strip() if found.texts else ""
            part["ready_ms"] = found.ready.get(index, 0) - started_ms
    result["total"] = found.total if found else None


def _index_of(found, url: str) -> int | None:
    """Which part of the stream a played URL was (it names the part's own key or its prompt-cache key)."""
    if found is None:
        return None
    return next((i for i in range(found.total or 0) if found.key_of(i) in url), None)


def describe_call(result: dict) -> str:
    lines = [f"call {result['contact_id']}: stream {result['stream_id']} {result['status']}, final {result['final']}, "
             f"ended by {result['ended_by']}",
             f"time to first audio {result['ttfa_ms']} ms, {len(result['parts'])}/{result.get('total')} parts heard, "
             f"{result['lambda_invocations']} Lambda invocations, waiting between parts {sum(result['gaps_ms']):.0f} ms",
             f"{'part':>4}  {'ready':>8}  {'played':>8}  {'audio':>7}  text"]
    for part in result["parts"]:
        text = part.get("text", "")
        text = text if len(text) <= 50 else text[:47] + "..."
        lines.append(f"{part['index']:>4}  {part.get('ready_ms', 0):>6}ms  {part['played_ms']:>6.0f}ms  "
                     f"{part['duration_ms'] / 1000:>6.2f}s  {text}")
    for message in result["messages"]:
        lines.append(f"caller heard the prompt: {message}")
    if result.get("caller_wav"):
        lines.append(f"what the caller heard: {result['caller_wav']}")
    return "\n".join(lines)


LOCAL_LEX_ALIAS = "arn:aws:lex:us-east-1:123456789012:bot-alias/LOCALBOT01/LOCALALIAS"


def chat_flow(template) -> dict:
    """The multi-turn flow as the template deploys it; locally, Lex is the phone's own stand-in bot."""
    saved = template.parameters.get("LexBotAliasArn", "")
    template.parameters["LexBotAliasArn"] = saved or LOCAL_LEX_ALIAS
    try:
        return json.loads(template.resolve(template.body["Resources"]["ChatFlow"]["Properties"]["Content"]))
    finally:
        template.parameters["LexBotAliasArn"] = saved


def run_chat_call(cloud, questions: list[str], *, presses=(), speed: float = 1.0, out_wav: Path | None = None,
                  language: str = phone.DEFAULT_LANGUAGE) -> dict:
    """Simulate a conversation through the template's chat flow: the caller asks each question in turn
    (pressing keys as `presses` say), then says nothing, and the flow ends the call. `language` is the
    contact's language: the flow's prompts and the bot's locale follow it."""
    contact_id = str(uuid.uuid4())
    calls_before = cloud.aws_calls.snapshot()
    started_ms = time.time_ns() // 1_000_000
    report = phone.simulate_call(
        chat_flow(cloud.template), contact_id=contact_id, attributes={},
        invoke_lambda=lambda arn, event: cloud.invoke("ConnectFunction", event),
        fetch_part=lambda url: fetch_part(cloud, url), speed=speed,
        caller=phone.Caller(questions=list(questions), presses=list(presses), language=language),
    )
    wait_for_executions(cloud)
    result = report.to_json()
    result["contact_id"] = contact_id
    result["aws_calls"] = dict(sorted((cloud.aws_calls.snapshot() - calls_before).items()))
    ddb, table = cloud.kept_client("dynamodb"), cloud.physical("ManifestTable")
    for turn in result["turns"]:
        found = manifest.read(ddb, table, turn["stream_id"], with_texts=True) if turn.get("stream_id") else None
        turn["status"] = found.status if found else None
        turn["total"] = found.total if found else None
        turn["indexes"] = [_index_of(found, url) for url in turn["parts"]]
        turn["texts"] = [found.texts[i].strip() if found and found.texts and i is not None else ""
                         for i in turn["indexes"]]
        turn["ready_ms"] = [found.ready.get(i, 0) - started_ms if found and i is not None else None
                            for i in turn["indexes"]]
    if out_wav is not None:
        out_wav.parent.mkdir(parents=True, exist_ok=True)
        result["caller_wav"] = str(report.write_wav(out_wav))
    return result


def describe_chat_call(result: dict) -> str:
    asked = len(result["turns"])
    lines = [f"call {result['contact_id']}: {asked} question{'' if asked == 1 else 's'}, ended by {result['ended_by']}, "
             f"{result['lambda_invocations']} Lambda invocations"]
    for turn in result["turns"]:
        lines.append(f"Q{turn['turn']}: {turn['question']}")
        lines.append(f"    first audio after {turn['ttfa_ms']} ms, {len(turn['parts'])} parts heard"
                     f"{' (interrupted)' if turn['interrupted'] else ''}, stream {turn['status']}")
        for text in turn["texts"]:
            lines.append(f"    > {text}")
    for message in result["messages"]:
        lines.append(f"caller heard the prompt: {message}")
    if result.get("caller_wav"):
        lines.append(f"what the caller heard: {result['caller_wav']}")
    return "\n".join(lines)
