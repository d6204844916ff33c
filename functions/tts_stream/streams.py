"""The Connect-facing actions as plain functions over injected clients: start_stream, chat_and_stream,
get_next_batch and stop.

Every reply is a flat map of strings (valid under Connect's STRING_MAP and JSON response validation):
StreamId, Status, Count, Part0Url..Part{B-1}Url, NextIndex, Final, Error (and Turn for chat_and_stream).
Waiting happens here, against one deadline fixed when the invocation starts, so the whole invocation stays
inside Connect's 8-second limit and the flow never has to wait on its own.
"""

import contextvars
import functools
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from tts_stream import batches, config, conversation, manifest, pipeline
from tts_stream.config import MAX_STREAM_ID_CHARS, STREAM_ID_PATTERN, Settings, check_stream_id
from tts_stream.errors import (InvalidInput, StreamCancelled, StreamConflict, is_throttling, is_transient_aws_error,
                               shown)

logger = Logger(child=True)  # logs through the handler's logger, with its correlation ids
metrics = Metrics()  # Powertools shares one metric set per process: the handler's log_metrics flushes these
ACTIONS = ("start_stream", "chat_and_stream", "get_next_batch", "stop")
# Stop waiting this long before the Lambda's own deadline: the reply must still reach Connect.
_REPLY_MARGIN_MS = 500
# ConnectFunction's clients (`aws_clients`): Connect waits at most 8 s for the whole invocation, so no request may
# stall it. botocore's defaults wait 60 s for a connection and 60 s for an answer, and the runtime's legacy retries
# try DynamoDB up to 10 times. A request here answers in milliseconds; one that has not within 0.5 s to connect
# and 1 s to answer (a dead pooled connection) is sent once more, after standard mode's backoff of up to 1 s.
CLIENT_CONFIG = Config(connect_timeout=0.5, read_timeout=1,
                       retries={"mode": "standard", "total_max_attempts": 2})
# StartExecution is sent once: an Express execution is not deduplicated by name, so a resend after a slow answer
# may start a second one (and ask a chatbot twice). What failed is kept for the next request (`_start_or_keep`).
START_CONFIG = CLIENT_CONFIG.merge(Config(retries={"mode": "standard", "total_max_attempts": 1}))
# So one request takes at most 2 x (0.5 + 1) + 1 s: waits stop polling this long before the reply's deadline.
_REQUEST_WORST_MS = 4000


@dataclass
class Clients:
    ddb: object
    s3: object
    sfn: object


def aws_clients() -> Clients:
    """ConnectFunction's clients, each bounded by CLIENT_CONFIG."""
    return Clients(ddb=config.bounded(boto3.client("dynamodb", config=CLIENT_CONFIG)),
                   s3=config.bounded(boto3.client("s3", config=CLIENT_CONFIG)),
                   sfn=config.bounded(boto3.client("stepfunctions", config=START_CONFIG)))


@dataclass
class Clock:
    now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class Request:
    """One invocation: what Connect asked, for which contact, and by when the reply must be sent."""
    params: dict
    contact_id: str
    deadline_ms: int


def reply(batch: batches.Batch, urls: list[str], batch_size: int, **extra: str) -> dict[str, str]:
    out = {"StreamId": batch.stream_id, "Status": batch.status, "Count": str(len(urls)),
           "NextIndex": str(batch.next_index), "Final": "true" if batch.final else "false", "Error": batch.error}
    for i in range(batch_size):
        out[f"Part{i}Url"] = urls[i] if i < len(urls) else ""
    out.update(extra)
    return out


def error_reply(status: str, message: str, *, stream_id: str = "", next_index: int = 0,
                batch_size: int = batches.MAX_BATCH_SIZE) -> dict[str, str]:
    """A reply the flow can branch on: Final is true so no loop can spin on a request that cannot succeed."""
    return reply(batches.Batch(stream_id, status, (), next_index, True, message), [], batch_size)


def part_url(clients: Clients, settings: Settings, key: str) -> str:
    """The URL Play prompt fetches for a part's S3 key (its own object, or its prompt-cache object).
    Presigning is computed locally: no S3 request per batch."""
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


def _batch_size(params) -> int:
    return batches.clamp_batch_size(params.get("BatchSize", str(batches.MAX_BATCH_SIZE)))


def _wait_for_batch(clients, settings, request, stream_id, next_index, batch_size, *, wait_ms, clock):
    """Read the manifest once; if nothing is playable yet, poll until a part is or the wait is over.

    Polls start at POLL_INTERVAL_MS and double up to 4x it: a part about to be ready is caught quickly, and a
    long wait (a chatbot thinking) costs a few reads, not one every 50 ms. The last poll leaves room before the
    reply's deadline for a read that stalls (_REQUEST_WORST_MS).
    """
    deadline = min(clock.now_ms() + wait_ms, request.deadline_ms - _REQUEST_WORST_MS)
    interval = settings.poll_interval_ms
    kept_started = False
    while True:
        found = manifest.read(clients.ddb, settings.table_name, stream_id)
        if found is None:
            return batches.Batch(stream_id, "not_found", (), next_index, True,
                                 f"stream {stream_id} does not exist (or has expired)"), None
        if found.kept_starts and not kept_started:  # its workflow failed to start: start it now, once per request
            kept_started = True
            _start_kept(clients, settings, stream_id)
        batch = batches.next_batch(found, next_index, batch_size, now_ms=clock.now_ms(),
                                   timeout_ms=settings.stream_timeout_seconds * 1000)
        if batch.indexes or batch.final or clock.now_ms() >= deadline:
            return batch, found
        clock.sleep(min(interval, max(0, deadline - clock.now_ms())) / 1000)
        interval = min(interval * 2, settings.poll_interval_ms * 4)


def _batch_reply(clients, settings, waited, batch_size, **extra):
    batch, found = waited
    urls = [part_url(clients, settings, found.key_of(i)) for i in batch.indexes]
    return reply(batch, urls, batch_size, **extra)


# Leave this much of the invocation for the reply (and, if part 0 could not be spoken, starting its workflow: one
# request, which may stall).
_AFTER_FIRST_PART_MS = _REQUEST_WORST_MS


class _Background:
    """One call on a thread of its own. `wait` gives up at its timeout; the thread may go on, but never past the
    invocation: Lambda freezes it with the environment, so whatever it does later is only ever a duplicate."""

    def __init__(self, call, name: str):
        self.value, self.error = None, None
        # In the invocation's context: what is scoped to the invocation there (context variables) holds here too.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run, call), name=name, daemon=True)
        self._thread.start()

    def _run(self, call):
        try:
            self.value = call()
        except Exception as error:  # handed to whoever waits
            self.error = error

    def wait(self, timeout_s: float | None = None) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def result(self):
        """Wait for the call and return its value, or raise what it raised."""
        self.wait()
        if self.error is not None:
            raise self.error
        return self.value


def _index_aside(call):
    """Run part 0's cache-entry write on a thread of its own; returns the wait for it. Best effort: a lost entry
    only means a later stream speaks that part again, so it is logged, never raised."""
    job = _Background(call, "first-part-index")

    def wait():
        job.wait()
        if job.error is not None:
            logger.warning("part 0 not indexed in the prompt cache; later streams speak it again",
                           error=f"{type(job.error).__name__}: {job.error}")

    return wait


class _FirstPart:
    """Part 0, spoken here from the moment the request is understood, while the stream is created and its
    workflow started: the caller's first words then wait for one engine call, one S3 write and one manifest
    write. The workflow is told (first_part=inline) to leave part 0 alone, and its Finish indexes part 0 in the
    prompt cache with the other parts. What is spoken is stored only once the stream exists and is ours
    (`begun`), never for a retry of a stream someone else started."""

    def __init__(self, clients, settings, part: dict, *, clock):
        self.clients, self.settings, self.clock, self.part = clients, settings, clock, part
        self.started_ms = clock.now_ms()
        self._begun = threading.Event()
        self._ours = False
        self._index_here = False
        self._work = _Background(self._speak, "first-part")

    def _speak(self) -> str:
        wav, _ = pipeline.speak_part(self.settings, self.part)
        self._begun.wait()
        if not self._ours:
            return ""
        return pipeline.store_part(self.clients.ddb, self.clients.s3, self.settings, self.part, wav,
                                   now_ms=self.clock.now_ms,
                                   index_meanwhile=_index_aside if self._index_here else None)

    def begun(self, ours: bool, *, index_here: bool):
        """The stream exists now; `ours` if this request created it (else part 0 is not stored here).
        `index_here`: no workflow runs (so no Finish), and part 0's cache entry is written here."""
        self._ours, self._index_here = ours, index_here
        self._begun.set()

    def ready(self, *, deadline_ms: int) -> str | None:
        """The key part 0 plays from; "" if the stream was cancelled meanwhile; None if it could not be made
        ready here in time (the engine failed, or is slower than Connect's deadline allows)."""
        budget_ms = deadline_ms - self.clock.now_ms() - _AFTER_FIRST_PART_MS
        if not self._work.wait(max(budget_ms, 0) / 1000):
            logger.warning("part 0 is too slow to speak within Connect's deadline; the workflow will speak it")
            return None
        try:
            key = self._work.result()
        except StreamCancelled:
            return ""
        except Exception:  # the workflow is the path that retries and records failures; this is a head start
            logger.warning("part 0 could not be spoken inline; the workflow will speak it", exc_info=True)
            return None
        metrics.add_metric("TimeToFirstPart", MetricUnit.Milliseconds, self.clock.now_ms() - self.started_ms)
        return key


def _start_workflow(clients, settings, stream_id: str, workflow_input: dict):
    clients.sfn.start_execution(stateMachineArn=settings.state_machine_arn,
                                name=f"{stream_id[:63]}-{uuid.uuid4().hex[:16]}",
                                input=json.dumps(workflow_input, ensure_ascii=False))


def _start_or_keep(clients, settings, stream_id: str, workflow_input: dict, *, start: Callable[[], object] | None = None):
    """Start a stream's workflow (`start`: a start already under way, to wait for). If StartExecution fails for a
    passing reason (throttling, a 5xx, the network), keep its input in the manifest: the next request that reads
    the stream starts it (`_wait_for_batch`), and the caller hears what is ready meanwhile instead of an apology.
    Raises a failure no retry would mend (a missing state machine, access denied, no credentials), so the caller
    hears the apology at once rather than after the stream's timeout, and if the write that keeps the input fails.

    A chat turn's start is kept only when it was throttled: after a 5xx or a timeout the execution may be running
    (Express executions are not deduplicated by name), and a second one would ask the chatbot again."""
    try:
        (start or (lambda: _start_workflow(clients, settings, stream_id, workflow_input)))()
    except (ClientError, BotoCoreError) as error:
        asks_bot = "question" in workflow_input  # a chat turn
        if isinstance(error, ClientError):
            passing = is_throttling(error) if asks_bot else is_transient_aws_error(error)
        else:  # the network: no answer (a chat turn's may have started), or no connection at all
            passing = not asks_bot and isinstance(error, (BotoConnectionError, HTTPClientError))
        if not passing:
            # Nothing will start it: the stream ends now, so a retry or a re-asked question reads `failed` (the
            # apology) instead of waiting out the stream's timeout in silence. Not when the request was sent and
            # no answer came: then the execution is probably running, and a retry of the turn will hear it.
            if not isinstance(error, HTTPClientError):
                try:
                    manifest.fail_stream(clients.ddb, settings.table_name, stream_id, "its workflow did not start")
                except (ClientError, BotoCoreError):
                    logger.warning("could not mark the stream failed; it ends at its timeout", exc_info=True)
            raise
        logger.warning("the workflow did not start; the next request for this stream starts it", exc_info=True)
        if not manifest.keep_start(clients.ddb, settings.table_name, stream_id, workflow_input):
            logger.info("the stream is no longer streaming: its workflow is not needed")


def _start_kept(clients, settings, stream_id: str):
    """Start the workflows whose StartExecution failed before; one that fails again is kept again."""
    for workflow_input in manifest.take_starts(clients.ddb, settings.table_name, stream_id):
        _start_or_keep(clients, settings, stream_id, workflow_input)


def _begin_and_start(clients, settings, stream_id: str, content_hash: str, workflow_input: dict, *, clock,
                     restart_after_ms: int = manifest.RESTART_AFTER_MS, replace_ended: bool = False):
    """Create the stream and start its workflow (which plans it) once, however often Connect retries the
    request. If StartExecution fails, the workflow's input is kept for the next request to start."""
    created, found = manifest.begin(clients.ddb, settings.table_name, stream_id, content_hash,
                                    now_ms=clock.now_ms(), ttl_hours=settings.manifest_ttl_hours)
    if not created and replace_ended and _ended_unheard(found, settings, clock.now_ms()):
        raise _EndedUnheard
    # A retry may start the workflow again only while the stream is still `starting` and the last attempt is
    # old (it may have died before its workflow ran); the claim lets one concurrent retry do it, not all.
    if created or (found.status == manifest.STATUS_STARTING
                   and manifest.claim_restart(clients.ddb, settings.table_name, stream_id, now_ms=clock.now_ms(),
                                              after_ms=restart_after_ms)):
        _start_or_keep(clients, settings, stream_id, {**workflow_input, "input_hash": content_hash})


def _plan_and_start(clients, settings, request: Request, stream_id: str, content_hash: str, split, batch_size: int,
                    workflow_input: dict, *, clock,
                    replace_ended: bool = False) -> tuple[batches.Batch, manifest.Manifest] | None:
    """Plan the stream here and speak its part 0 while the workflow starts on the rest (its Plan step finds the
    stream planned, and leaves part 0 alone). Returns the first batch, or None for a retry of an existing stream.

    Part 0 is spoken after one prompt-cache lookup for every part, in parallel with the one write that creates
    the planned stream and with StartExecution. A one-part answer, or one whose other parts are all cached,
    starts no workflow at all."""
    now_ms = clock.now_ms()
    try:
        cached = pipeline.cached_parts(clients.ddb, settings, split, now_ms=now_ms)
    except (ClientError, BotoCoreError):
        logger.warning("prompt cache lookup failed; every part is spoken", exc_info=True)
        cached = {}
    part0 = pipeline.part_item(stream_id, 0, split.texts[0], split, cache_on=bool(split.keys), now_ms=now_ms)
    speaking = None if 0 in cached else _FirstPart(clients, settings, part0, clock=clock)
    created, workflow = False, False
    try:
        created, planned = manifest.begin_planned(
            clients.ddb, settings.table_name, stream_id, content_hash, texts=split.texts, engine=split.engine,
            voice=split.voice, language=split.language, now_ms=now_ms, ttl_hours=settings.manifest_ttl_hours,
            engine_settings=split.engine_settings, cached=cached)
        # Not created: a retry, or a stream its workflow began and has not planned yet (no total to look at)
        workflow = created and any(i not in planned.ready for i in range(1, planned.total))
    finally:
        if speaking:
            speaking.begun(created, index_here=not workflow)
    if not created:
        if replace_ended and _ended_unheard(planned, settings, clock.now_ms()):
            raise _EndedUnheard
        return None
    metrics.add_metric("StreamsPlanned", MetricUnit.Count, 1)
    if 0 in cached:  # playable the moment it was planned, as Plan counts a cached part 0
        metrics.add_metric("TimeToFirstPart", MetricUnit.Milliseconds, 0)
    workflow_input = {**workflow_input, "input_hash": content_hash}
    inline = {**workflow_input, "first_part": pipeline.FIRST_PART_INLINE}
    starting = _Background(lambda: _start_workflow(clients, settings, stream_id, inline), "start-workflow") \
        if workflow else None
    played = cached.get(0) or speaking.ready(deadline_ms=request.deadline_ms)
    if starting:
        _start_or_keep(clients, settings, stream_id, inline, start=starting.result)
    if played is None:  # not spoken here: a run of its own speaks part 0, with the workflow's retries
        _start_or_keep(clients, settings, stream_id, {**workflow_input, "first_part": pipeline.FIRST_PART_ONLY})
    if played == "":  # cancelled meanwhile: say so, as the manifest does
        return _wait_for_batch(clients, settings, request, stream_id, 0, batch_size, wait_ms=0, clock=clock)
    if played:  # what this request knows without reading the manifest again
        planned = manifest.with_ready(planned, 0, played, now_ms=clock.now_ms())
    return batches.next_batch(planned, 0, batch_size, now_ms=clock.now_ms(),
                              timeout_ms=settings.stream_timeout_seconds * 1000), planned


def start_stream(clients: Clients, settings: Settings, request: Request, *, clock: Clock) -> dict[str, str]:
    params = request.params
    batch_size = _batch_size(params)
    text, voice, language = pipeline.check_content(params.get("Text"), params.get("Voice"), params.get("Language"),
                                                   settings)
    content_hash = pipeline.input_hash(text, voice, language)
    named = params.get("StreamId") or ""
    if not named and not request.contact_id:
        raise InvalidInput("StreamId is missing and the event has no ContactId to derive one from")
    # A retried start (same contact, same answer) maps to the same stream; a new answer to a new one.
    base = named or f"{request.contact_id}-{content_hash[:12]}"
    check_stream_id(base)
    # The same answer started again after its stream ended unheard (the caller stopped it, it failed, or it timed
    # out: "press 9 to hear that again") is a new stream, BASE-r1, BASE-r2 ...; a stream the flow named keeps its id.
    replays = 0 if named or len(base) + len(f"-r{MAX_REPLAYS}") > MAX_STREAM_ID_CHARS else MAX_REPLAYS
    start = functools.partial(_start, clients, settings, request, text=text, voice=voice, language=language,
                              content_hash=content_hash, batch_size=batch_size, clock=clock)
    try:
        return start(base, replace_ended=replays > 0)
    except _EndedUnheard:
        pass
    # Its replays in one read: the first that has not ended unheard (or does not exist yet) is this start's
    replayed = [f"{base}-r{replay}" for replay in range(1, replays + 1)]
    found = manifest.read_many(clients.ddb, settings.table_name, replayed)
    for replay, stream_id in enumerate(replayed, start=1):
        last = replay == replays
        if not last and stream_id in found and _ended_unheard(found[stream_id], settings, clock.now_ms()):
            continue
        try:
            return start(stream_id, replace_ended=not last)
        except _EndedUnheard:  # it ended between the read and this start
            continue
    raise AssertionError("the last replay never raises _EndedUnheard")


MAX_REPLAYS = 20  # the same answer started again this often in one contact; then its last stream is served


class _EndedUnheard(Exception):
    """The stream a start maps to ended without being heard to the end: start it again under a new id."""


def _ended_unheard(found: manifest.Manifest, settings: Settings, now_ms: int) -> bool:
    return found.status in (manifest.STATUS_CANCELLED, manifest.STATUS_FAILED) or (
        found.status != manifest.STATUS_COMPLETE and now_ms - found.created_ms > settings.stream_timeout_seconds * 1000)


def _start(clients: Clients, settings: Settings, request: Request, stream_id: str, *, text: str, voice: str,
           language: str, content_hash: str, batch_size: int, replace_ended: bool, clock: Clock) -> dict[str, str]:
    """start_stream for one stream id; _EndedUnheard (with `replace_ended`) when that stream exists and ended
    unheard, so the caller tries the next id."""
    workflow_input = {"stream_id": stream_id, "text": text}
    if voice:
        workflow_input["voice"] = voice
    if language != "auto":
        workflow_input["language"] = language
    if settings.inline_first_part and settings.tts_engine in pipeline.INLINE_ENGINES:
        try:
            split = pipeline.split_answer(settings, text, voice, language)
        except InvalidInput:
            split = None  # nothing to speak, or too much: the workflow's plan says so, and the flow hears it
        if split is not None:
            first = _plan_and_start(clients, settings, request, stream_id, content_hash, split, batch_size,
                                    workflow_input, replace_ended=replace_ended, clock=clock)
            if first is not None:
                return _batch_reply(clients, settings, first, batch_size)
            # A retry of a stream that exists: serve it as it stands.
            return _batch_reply(clients, settings, _wait_for_batch(
                clients, settings, request, stream_id, 0, batch_size, wait_ms=settings.start_wait_ms, clock=clock),
                batch_size)
    _begin_and_start(clients, settings, stream_id, content_hash, workflow_input, replace_ended=replace_ended,
                     clock=clock)
    waited = _wait_for_batch(clients, settings, request, stream_id, 0, batch_size, wait_ms=settings.start_wait_ms,
                            clock=clock)
    return _batch_reply(clients, settings, waited, batch_size)


def chat_and_stream(clients: Clients, settings: Settings, request: Request, *, clock: Clock) -> dict[str, str]:
    """Start the next turn of the conversation: the chatbot is asked inside the workflow, never on Connect's
    8-second path, so this returns within its budget however slow the bot is; the flow then loops
    get_next_batch. Starting a turn cancels the one before it."""
    params = request.params
    batch_size = _batch_size(params)
    if not request.contact_id:
        raise InvalidInput("chat_and_stream needs the event's ContactId (Details.ContactData.ContactId): a "
                           "conversation is kept per contact")
    check_stream_id(request.contact_id)
    # Every turn's stream id (CONTACTID-tN) must be a valid one, checked before anything is written
    longest = MAX_STREAM_ID_CHARS - len(f"-t{batches.MAX_INDEX}")
    if len(request.contact_id) > longest:
        raise InvalidInput(f"the event's ContactId has {len(request.contact_id)} characters; turns need it to "
                           f"have at most {longest}")
    question = pipeline.check_question(params.get("Question"), settings)
    _, voice, language = pipeline.check_content("x", params.get("Voice"), params.get("Language"), settings)
    previous = batches.parse_index(params.get("PreviousTurn") or "0", "PreviousTurn")
    if previous >= batches.MAX_INDEX:  # its next turn could never come back as a PreviousTurn
        raise InvalidInput(f"PreviousTurn must be below {batches.MAX_INDEX}: pass the Turn of the last reply")
    question_hash = pipeline.input_hash(f"chat:{question}", voice, language)
    try:
        turn, replaced = conversation.start_turn(clients.ddb, settings.conversation_table, request.contact_id,
                                                 previous, question_hash, now_ms=clock.now_ms(),
                                                 ttl_hours=settings.manifest_ttl_hours)
    except conversation.StaleTurn as error:
        return error_reply("error", str(error), batch_size=batch_size)
    stream_id = f"{request.contact_id}-t{turn}"
    if replaced and replaced != stream_id:
        manifest.cancel(clients.ddb, settings.table_name, replaced)
    workflow_input = {"stream_id": stream_id, "question": question, "contact_id": request.contact_id, "turn": turn}
    if voice:
        workflow_input["voice"] = voice
    if language != "auto":
        workflow_input["language"] = language
    content_hash = pipeline.input_hash(f"chat:{turn}:{question}", voice, language)
    # Never a second workflow while the first may still be asking the bot (it would ask twice).
    _begin_and_start(clients, settings, stream_id, content_hash, workflow_input, clock=clock,
                     restart_after_ms=settings.chat_timeout_ms + 10_000)
    waited = _wait_for_batch(clients, settings, request, stream_id, 0, batch_size, wait_ms=settings.start_wait_ms,
                            clock=clock)
    return _batch_reply(clients, settings, waited, batch_size, Turn=str(turn))


def get_next_batch(clients: Clients, settings: Settings, request: Request, *, clock: Clock) -> dict[str, str]:
    params = request.params
    batch_size = _batch_size(params)
    stream_id = check_stream_id(params.get("StreamId"))
    next_index = batches.parse_index(params.get("NextIndex", "0"), "NextIndex")
    waited = _wait_for_batch(clients, settings, request, stream_id, next_index, batch_size,
                            wait_ms=settings.batch_wait_ms, clock=clock)
    return _batch_reply(clients, settings, waited, batch_size)


def stop(clients: Clients, settings: Settings, request: Request, *, clock: Clock) -> dict[str, str]:
    """Barge-in: the caller interrupted. Nothing more of this stream plays and its synthesis stops."""
    stream_id = check_stream_id(request.params.get("StreamId"))
    batch_size = _batch_size(request.params)  # a request refused for its BatchSize must not have cancelled anything
    manifest.cancel(clients.ddb, settings.table_name, stream_id)
    found = manifest.read(clients.ddb, settings.table_name, stream_id)
    if found is None:
        return error_reply("not_found", f"stream {stream_id} does not exist (or has expired)", stream_id=stream_id,
                           batch_size=batch_size)
    batch = batches.Batch(stream_id, found.status, (), 0, True, "")
    return reply(batch, [], batch_size)


_HANDLERS = {"start_stream": start_stream, "chat_and_stream": chat_and_stream, "get_next_batch": get_next_batch,
             "stop": stop}


def handle(clients: Clients, settings: Settings, event, *, remaining_ms: int, clock: Clock = Clock()) -> dict:
    """Dispatch one Connect invocation. Bad input, unknown streams and AWS failures become replies that say
    what went wrong, never exceptions that send the caller down the flow's error branch unexplained."""
    deadline_ms = clock.now_ms() + remaining_ms - _REPLY_MARGIN_MS
    params, stream_id = {}, ""
    try:
        params, contact_id = parameters(event)
        given = params.get("StreamId", "")
        stream_id = given if isinstance(given, str) and STREAM_ID_PATTERN.fullmatch(given) else ""
        action = params.get("Action")
        handler = _HANDLERS.get(action) if isinstance(action, str) else None
        if handler is None:
            raise InvalidInput(f"Action {shown(action)} is not known; use one of {', '.join(ACTIONS)}")
        return handler(clients, settings, Request(params, contact_id, deadline_ms), clock=clock)
    except (InvalidInput, StreamConflict) as error:
        return error_reply("error", str(error), stream_id=stream_id, batch_size=_batch_size_or_max(params))
    except (ClientError, BotoCoreError) as error:
        if params.get("Action") == "get_next_batch" and stream_id and (
                isinstance(error, BotoCoreError) or is_transient_aws_error(error)):
            # A passing AWS hiccup must not end the call: nothing this time, ask again from the same place. Not at
            # once: the flow would call again as fast as it is answered, for as long as the failure lasts (the
            # stream's own timeout is read from the manifest, which is what cannot be read). Waiting out the batch
            # wait first paces it like an empty batch: one request every BatchWaitMs.
            clock.sleep(max(0, min(settings.batch_wait_ms, deadline_ms - clock.now_ms())) / 1000)
            return reply(batches.Batch(stream_id, manifest.STATUS_STREAMING, (), _next_index_or_zero(params), False,
                                       "temporary AWS failure; ask again"), [], _batch_size_or_max(params))
        message = f"AWS request failed ({error.__class__.__name__}); the stream cannot be served right now"
        return error_reply("error", message, stream_id=stream_id, batch_size=_batch_size_or_max(params))


def _next_index_or_zero(params) -> int:
    try:
        return batches.parse_index(params.get("NextIndex", "0"), "NextIndex")
    except InvalidInput:
        return 0


def _batch_size_or_max(params) -> int:
    try:
        return _batch_size(params)
    except InvalidInput:
        return batches.MAX_BATCH_SIZE
