"""Lambda handlers for the synthesis workflow (statemachines/synthesize.asl.json). Each is a thin adapter:
read the event, call tts_stream.pipeline, return what the next state needs."""

import time

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from tts_stream import config, pipeline

logger = Logger()
tracer = Tracer()
metrics = Metrics()  # namespace from POWERTOOLS_METRICS_NAMESPACE (template Globals)
_clients = {}


def _client(name):
    """One client per service per process, created on first use rather than at import (cold start)."""
    if name not in _clients:
        _clients[name] = config.bounded(boto3.client(name, config=config.WORKFLOW_CLIENT_CONFIG))
    return _clients[name]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def plan(event, context):
    result = pipeline.plan_stream(_client("dynamodb"), config.load(), event, now_ms=_now_ms())
    logger.append_keys(stream_id=result["stream_id"])
    if result["planned_here"]:  # not when ConnectFunction planned it, or a delivery before this one did
        metrics.add_metric("StreamsPlanned", MetricUnit.Count, 1)
    if result["first_part_cached"]:
        metrics.add_metric("TimeToFirstPart", MetricUnit.Milliseconds, 0)  # ready with the plan itself
    logger.info("stream planned", stream_id=result["stream_id"], total=result["total"],
                to_synthesize=len(result["parts"]))
    return result


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def ask(event, context):
    started = time.perf_counter()
    result = pipeline.ask_chatbot(_client("dynamodb"), config.load(), event, now_ms=_now_ms())
    metrics.add_metric("ChatLatency", MetricUnit.Milliseconds, (time.perf_counter() - started) * 1000)
    if result["chat_error"]:
        metrics.add_metric("ChatFailures", MetricUnit.Count, 1)
        logger.warning("chatbot failed; the caller hears an apology", stream_id=result["stream_id"],
                       error=result["chat_error"])  # says how it failed (status, timeout), never what was said
    else:
        logger.info("chatbot answered", stream_id=result["stream_id"], answer_chars=len(result["text"]))
    if result["history_error"]:
        logger.warning("this exchange is not in the conversation's history; the next turn's bot will not see it",
                       stream_id=result["stream_id"], error=result["history_error"])
    return result


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def synthesize(event, context):
    started = time.perf_counter()
    result = pipeline.synthesize_part(_client("dynamodb"), _client("s3"), config.load(), event, now_ms=_now_ms)
    metrics.add_metric("PartsSynthesized", MetricUnit.Count, 1)
    metrics.add_metric("PartLatency", MetricUnit.Milliseconds, (time.perf_counter() - started) * 1000)
    metrics.add_metric("EngineLatency", MetricUnit.Milliseconds, result["engine_ms"])
    if result["index"] == 0 and result["ready_after_ms"] is not None:
        # What a caller waits for first, once the answer's text is known: from plan to first playable part
        # (a chatbot's thinking time is ChatLatency, measured on its own).
        metrics.add_metric("TimeToFirstPart", MetricUnit.Milliseconds, result["ready_after_ms"])
    logger.info("part ready", stream_id=result["stream_id"], index=result["index"], bytes=result["bytes"])
    return result


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def record_failure(event, context):
    result = pipeline.record_failure(_client("dynamodb"), config.load(), event)
    # A part that failed for good (whether or not an earlier part's failure already ended the stream), or (no
    # index) the whole stream failing outside any part: not when that changed nothing (every part was ready).
    if isinstance(result.get("index"), int):
        metrics.add_metric("PartFailures", MetricUnit.Count, 1)
    elif result["recorded"]:
        metrics.add_metric("StreamsFailed", MetricUnit.Count, 1)
    logger.warning("failure recorded", **result)
    return result


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def finish(event, context):
    result = pipeline.finish_stream(_client("dynamodb"), config.load(), event)
    metrics.add_metric({"failed": "StreamsFailed", "cancelled": "StreamsCancelled"}.get(result["status"],
                                                                                     "StreamsCompleted"),
                       MetricUnit.Count, 1)
    if result.get("index_error"):
        logger.warning("parts not indexed in the prompt cache; later streams speak them again",
                       stream_id=result["stream_id"], error=result["index_error"])
    logger.info("stream finished", **result)
    return result
