"""The three ways a team could speak a chatbot's answer on a phone line, on one local cloud with one engine.

- `fanout`: this project. The template's contact flow starts the stream; the Express workflow synthesizes every
  part in parallel (Map) and marks each ready; ConnectFunction hands out ordered batches.
- `sequential`: what the earlier FastAPI system did. One worker, part after part in order: synthesize, put to S3,
  mark ready. The same chunker and the same pipeline functions (plan_stream, synthesize_part, finish_stream) run
  in a worker thread instead of the workflow; the same ConnectFunction and contact flow serve the call.
- `whole`: one synthesis of the whole answer, one upload, then play it as a single part.

Every mode answers the same phone call through the template's StreamAnswerFlow (localcloud.phone), so every
figure is what the simulated caller experienced. Times are milliseconds from the moment the answer was asked for.
"""

import gc
import threading
import time
import uuid

import boto3

from localcloud import phone, runs
from tts_stream import chunking, config, engines, manifest, pipeline

MODES = ("fanout", "sequential", "whole")


def run(mode: str, cloud, text: str, *, speed: float, latency) -> dict:
    """Answer one call with `text` in `mode`; `latency` is the installed localcloud.latency.Latency (it counts
    engine calls, whether or not a model is on)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    # Everything the local cloud holds so far (moto's state, every earlier call) goes out of the collector's
    # reach: one process holds it all here, and a full collection of it pauses every thread for ~250 ms, which
    # a Lambda function, holding only its own invocation, never does.
    gc.freeze()
    calls_before, engine_before = cloud.aws_calls.snapshot(), latency.engine_calls
    if mode == "fanout":
        result = runs.run_call(cloud, text, speed=speed)
        offset_ms = 0.0
    else:
        result, offset_ms = _worker_call(cloud, text, speed, _sequential if mode == "sequential" else _whole)
    aws_calls = dict(sorted((cloud.aws_calls.snapshot() - calls_before).items()))
    return summarize(mode, result, offset_ms=offset_ms, speed=speed, aws_calls=aws_calls,
                     engine_calls=latency.engine_calls - engine_before)


def summarize(mode: str, result: dict, *, offset_ms: float, speed: float, aws_calls: dict, engine_calls: int) -> dict:
    """The figures of one call from the phone's report (see localcloud.runs.run_call).

    A gap between two parts is silence the caller hears. Of it, `waiting` is the time the next part was not yet
    ready after the previous one ended (the caller waits for synthesis); the rest is the flow's own overhead (a
    Lambda round trip at a batch boundary, fetching the prompt).
    """
    parts = []
    waiting = []
    for k, part in enumerate(result["parts"]):
        played = part["played_ms"] + offset_ms
        gap = result["gaps_ms"][k - 1] if k else 0.0
        ready = part.get("ready_ms")
        wait = 0.0
        if k and ready is not None:
            previous_end = played - gap
            wait = max(0.0, min(gap, ready - previous_end))
            waiting.append(wait)
        parts.append({"index": part.get("index"), "chars": len(part.get("text", "")), "ready_ms": ready,
                      "played_ms": round(played, 1), "duration_ms": part["duration_ms"], "gap_ms": gap,
                      "waiting_ms": round(wait, 1)})
    ready_times = [p["ready_ms"] for p in parts if p["ready_ms"] is not None]
    ttfa = None if result["ttfa_ms"] is None else round(result["ttfa_ms"] + offset_ms, 1)
    engine_in_aws = sum(n for op, n in aws_calls.items() if op.startswith("polly."))
    requests = sum(aws_calls.values()) + result["lambda_invocations"] + (engine_calls - engine_in_aws)
    return {
        "mode": mode,
        "status": result["status"],
        "final": result["final"],
        "errors": result["errors"] + result["messages"],
        "parts_total": result.get("total"),
        "parts_heard": len(parts),
        "ttfa_ms": ttfa,
        "last_ready_ms": max(ready_times) if ready_times else None,
        "gaps_ms_total": round(sum(result["gaps_ms"]), 1),
        "waiting_ms_total": round(sum(waiting), 1),
        "late_at_real_time": late_at_real_time(parts, ttfa),
        "engine_calls": engine_calls,
        "lambda_invocations_by_connect": result["lambda_invocations"],
        "aws_calls": aws_calls,
        "requests": requests,
        "prompt_fetches": len(parts),
        "speed": speed,
        "parts": parts,
    }


def late_at_real_time(parts: list[dict], ttfa_ms: float | None) -> dict:
    """Would any part be late if the call played in real time? Readiness does not depend on playback speed, so
    this holds for speed 1 even when the call was fast-forwarded: part k is needed once the parts before it have
    played from the first audio on. `min_slack_ms` is the smallest margin (negative: late)."""
    if ttfa_ms is None or not parts:
        return {"late_parts": 0, "min_slack_ms": None}
    needed, slacks = ttfa_ms, []
    for k, part in enumerate(parts):
        if k and part["ready_ms"] is not None:
            slacks.append(needed - part["ready_ms"])
        needed += part["duration_ms"]
    return {"late_parts": sum(s < 0 for s in slacks), "min_slack_ms": round(min(slacks), 1) if slacks else None}


# -- the two alternatives: a worker thread does what the workflow would ------------------------------------------

def _worker_call(cloud, text: str, speed: float, work) -> tuple[dict, float]:
    """Create the stream as the worker's own (so ConnectFunction starts no workflow for it), run `work` in a thread
    and the phone call at the same time. Returns the call report and the phone's start relative to the request."""
    settings = config.load()
    contact_id = str(uuid.uuid4())
    # ConnectFunction derives the stream from the contact and the text: the worker uses the same stream.
    text, voice, language = pipeline.check_content(text, "", "", settings)
    content_hash = pipeline.input_hash(text, voice, language)
    stream_id = f"{contact_id}-{content_hash[:12]}"
    ddb = boto3.client("dynamodb")
    requested_ms = time.time_ns() // 1_000_000
    requested = time.monotonic()
    manifest.begin(ddb, settings.table_name, stream_id, content_hash, now_ms=requested_ms,
                   ttl_hours=settings.manifest_ttl_hours)
    failure: list[BaseException] = []

    def worker():
        try:
            work(settings, stream_id, content_hash, text)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(error)

    thread = threading.Thread(target=worker, name=f"bench-{work.__name__.strip('_')}", daemon=True)
    thread.start()
    offset_ms = (time.monotonic() - requested) * 1000
    report = phone.simulate_call(
        runs.template_flow(cloud.template), contact_id=contact_id, attributes={"AnswerText": text},
        invoke_lambda=lambda arn, event: cloud.invoke("ConnectFunction", event),
        fetch_part=lambda url: runs.fetch_part(cloud, url), speed=speed,
    )
    thread.join()
    if failure:
        raise failure[0]
    result = report.to_json()
    result["contact_id"] = contact_id
    runs._add_manifest_facts(cloud, result, requested_ms)
    return result, offset_ms


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _sequential(settings, stream_id: str, content_hash: str, text: str):
    """One worker, part after part: synthesize, put, mark ready (the pipeline's own functions, in order)."""
    ddb, s3 = boto3.client("dynamodb"), boto3.client("s3")
    planned = pipeline.plan_stream(ddb, settings, {"stream_id": stream_id, "text": text, "input_hash": content_hash},
                                   now_ms=_now_ms())
    results = [{"index": pipeline.synthesize_part(ddb, s3, settings, part, now_ms=_now_ms)["index"]}
               for part in planned["parts"]]
    pipeline.finish_stream(ddb, settings, {"stream_id": stream_id, "part_results": results})


def _whole(settings, stream_id: str, content_hash: str, text: str):
    """One synthesis of the whole answer, one upload, one part (no prompt cache: one upload)."""
    ddb, s3 = boto3.client("dynamodb"), boto3.client("s3")
    spoken = chunking.normalize_for_speech(text)
    engine = engines.get_engine(settings.tts_engine, settings)
    language, voice = pipeline.choose_voice(spoken, "", "auto", settings, engine)
    planned = manifest.plan(ddb, settings.table_name, stream_id, content_hash, texts=[spoken],
                            engine=settings.tts_engine, voice=voice, language=language, now_ms=_now_ms(),
                            ttl_hours=settings.manifest_ttl_hours, engine_settings=engine.identity())[0]
    part = {"stream_id": stream_id, "index": 0, "text": spoken, "engine": planned.engine, "voice": planned.voice,
            "language": planned.language, "engine_settings": planned.engine_settings, "cache_key": ""}
    pipeline.synthesize_part(ddb, s3, settings, part, now_ms=_now_ms)
    pipeline.finish_stream(ddb, settings, {"stream_id": stream_id})

