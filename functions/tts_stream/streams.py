"""The Connect-facing actions: start_stream and get_next_batch, as plain functions over injected clients.

Every reply is a flat map of strings (valid under Connect's STRING_MAP and JSON response validation):
StreamId, Status, Count, Part0Url..Part{B-1}Url, NextIndex, Final, Error. Waiting happens here, inside a
budget well under Connect's 8-second limit, so the flow never has to wait on its own.
"""

import json
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from tts_stream import batches, manifest, pipeline
from tts_stream.config import STREAM_ID_PATTERN, Settings, check_stream_id, part_key
from tts_stream.errors import InvalidInput, StreamConflict

ACTIONS = ("start_stream", "get_next_batch")
# Leave this much of the Lambda's remaining time unused: the reply must reach Connect before its timeout.
_REPLY_MARGIN_MS = 500


@dataclass
class Clients:
    ddb: object
    s3: object
    sfn: object


@dataclass
class Clock:
    now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000
    sleep: Callable[[float], None] = time.sleep


def reply(batch: batches.Batch, urls: list[str], batch_size: int) -> dict[str, str]:
    out = {"StreamId": batch.stream_id, "Status": batch.status, "Count": str(len(urls)),
           "NextIndex": str(batch.next_index), "Final": "true" if batch.final else "false", "Error": batch.error}
    for i in range(batch_size):
        out[f"Part{i}Url"] = urls[i] if i < len(urls) else ""
    return out


def error_reply(status: str, message: str, *, stream_id: str = "", next_index: int = 0,
                batch_size: int = batches.MAX_BATCH_SIZE) -> dict[str, str]:
    """A reply the flow can branch on: Final is true so no loop can spin on a request that cannot succeed."""
    batch = batches.Batch(stream_id, status, (), next_index, True, message)
    return reply(batch, [], batch_size)


def part_url(clients: Clients, settings: Settings, stream_id: str, index: int) -> str:
    """The URL Play prompt fetches. Presigning is computed locally: no S3 request per batch."""
    key = part_key(stream_id, index)
    if settings.prompt_url_mode == "presigned":
        return clients.s3.generate_presigned_url(
            "get_object", Params={"Bucket": settings.bucket_name, "Key": key}, ExpiresIn=900)
    return f"https://{settings.bucket_name}.s3.{settings.region}.amazonaws.com/{key}"


def parameters(event) -> tuple[dict, str]:
    """(Details.Parameters, ContactId) from a ContactFlowEvent, or InvalidInput saying what is missing."""
    details = event.get("Details") if isinstance(event, dict) else None
    if not isinstance(details, dict):
        raise InvalidInput("the event is not a Connect ContactFlowEvent: Details is missing")
    params = details.get("Parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("Details.Parameters must be a map of strings")
    contact = details.get("ContactData") or {}
    contact_id = contact.get("ContactId", "") if isinstance(contact, dict) else ""
    return params, contact_id if isinstance(contact_id, str) else ""


def _wait_for_batch(clients, settings, stream_id, next_index, batch_size, *, budget_ms, clock) -> batches.Batch:
    """Read the manifest once; if nothing is playable yet, poll until a part is or the budget is spent."""
    deadline = clock.now_ms() + budget_ms
    while True:
        found = manifest.read(clients.ddb, settings.table_name, stream_id)
        if found is None:
            return batches.Batch(stream_id, "not_found", (), next_index, True,
                                 f"stream {stream_id} does not exist (or has expired)")
        batch = batches.next_batch(found, next_index, batch_size, now_ms=clock.now_ms(),
                                   timeout_ms=settings.stream_timeout_seconds * 1000)
        if batch.indexes or batch.final or clock.now_ms() >= deadline:
            return batch
        clock.sleep(min(settings.poll_interval_ms, max(0, deadline - clock.now_ms())) / 1000)


def _batch_reply(clients, settings, batch, batch_size):
    urls = [part_url(clients, settings, batch.stream_id, i) for i in batch.indexes]
    return reply(batch, urls, batch_size)


def start_stream(clients: Clients, settings: Settings, params: dict, contact_id: str, *,
                 remaining_ms: int, clock: Clock = Clock()) -> dict[str, str]:
    batch_size = batches.clamp_batch_size(params.get("BatchSize", str(batches.MAX_BATCH_SIZE)))
    text, voice, language = pipeline.check_content(params.get("Text"), params.get("Voice"), params.get("Language"),
                                                   settings)
    content_hash = pipeline.input_hash(text, voice, language)
    stream_id = params.get("StreamId") or ""
    if not stream_id:
        if not contact_id:
            raise InvalidInput("StreamId is missing and the event has no ContactId to derive one from")
        # A retried start (same contact, same answer) maps to the same stream; a new answer to a new one.
        stream_id = f"{contact_id}-{content_hash[:12]}"
    check_stream_id(stream_id)
    created = manifest.begin(clients.ddb, settings.table_name, stream_id, content_hash,
                             now_ms=clock.now_ms(), ttl_hours=settings.manifest_ttl_hours)
    existing = None if created else manifest.read(clients.ddb, settings.table_name, stream_id)
    if created or existing.status == manifest.STATUS_STARTING:
        # Starting again while still `starting` covers a start whose first attempt died before the
        # workflow did; the workflow's plan step makes a second run harmless.
        workflow_input = {"stream_id": stream_id, "text": text}
        if voice:
            workflow_input["voice"] = voice
        if language != "auto":
            workflow_input["language"] = language
        clients.sfn.start_execution(
            stateMachineArn=settings.state_machine_arn,
            name=f"{stream_id[:63]}-{uuid.uuid4().hex[:16]}",
            input=json.dumps(workflow_input, ensure_ascii=False),
        )
    budget = min(settings.start_wait_ms, remaining_ms - _REPLY_MARGIN_MS)
    batch = _wait_for_batch(clients, settings, stream_id, 0, batch_size, budget_ms=budget, clock=clock)
    return _batch_reply(clients, settings, batch, batch_size)


def get_next_batch(clients: Clients, settings: Settings, params: dict, *, remaining_ms: int,
                   clock: Clock = Clock()) -> dict[str, str]:
    batch_size = batches.clamp_batch_size(params.get("BatchSize", str(batches.MAX_BATCH_SIZE)))
    stream_id = check_stream_id(params.get("StreamId"))
    next_index = batches.parse_index(params.get("NextIndex", "0"), "NextIndex")
    budget = min(settings.batch_wait_ms, remaining_ms - _REPLY_MARGIN_MS)
    batch = _wait_for_batch(clients, settings, stream_id, next_index, batch_size, budget_ms=budget, clock=clock)
    return _batch_reply(clients, settings, batch, batch_size)


def handle(clients: Clients, settings: Settings, event, *, remaining_ms: int, clock: Clock = Clock()) -> dict:
    """Dispatch one Connect invocation. Bad input and unknown streams become replies, never exceptions."""
    params, stream_id = {}, ""
    try:
        params, contact_id = parameters(event)
        given = params.get("StreamId", "")
        stream_id = given if isinstance(given, str) and STREAM_ID_PATTERN.match(given) else ""
        action = params.get("Action")
        if action == "start_stream":
            return start_stream(clients, settings, params, contact_id, remaining_ms=remaining_ms, clock=clock)
        if action == "get_next_batch":
            return get_next_batch(clients, settings, params, remaining_ms=remaining_ms, clock=clock)
        raise InvalidInput(f"Action {action!r} is not known; use one of {', '.join(ACTIONS)}")
    except (InvalidInput, StreamConflict) as error:
        size = _batch_size_or_max(params)
        return error_reply("error", str(error), stream_id=stream_id, batch_size=size)


def _batch_size_or_max(params) -> int:
    try:
        return batches.clamp_batch_size(params.get("BatchSize", str(batches.MAX_BATCH_SIZE)))
    except InvalidInput:
        return batches.MAX_BATCH_SIZE

