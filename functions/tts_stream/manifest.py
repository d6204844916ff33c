"""The manifest: one DynamoDB item per stream, the single place that says which parts are ready.

Item attributes:
    stream_id       partition key
    status          starting | streaming | complete | failed
    input_hash      what the stream was started with, so a retried start is recognised and a reused id is not
    total           number of parts (once planned)
    engine, voice, language   pinned when the stream is planned: every part uses exactly these
    engine_settings the engine's settings that shape its audio (Polly engine type, TTS server URL), pinned too
    keys            map of part index -> the S3 key it plays from: its own object under streams/STREAM_ID/,
                    or a prompt-cache object; set with its ready mark, by whoever marks it first
    texts           the chunk text of each part (read only when asked for: batches never need it)
    ready           map of part index -> epoch ms when it became ready (a map key is one ready mark, however
                    often a part is delivered)
    failed_index    the lowest index that failed for good; error: what went wrong
    kept_starts     workflow inputs whose StartExecution failed, until a Connect request starts them (rare);
                    taken_starts, taken_by: the last ones taken, and the token of the request that took them;
                    claimed_by: the token of the last claim to restart a stuck start
    begun_by        a token of the request that created the item: the SDK resending a create whose answer was
                    lost finds its own token, and knows the stream is its own (not someone else's retry)
    created_ms, expires_at (TTL, epoch seconds)

Every write is a single conditional UpdateItem, so concurrent and repeated deliveries cannot corrupt an item.
"""

import json
import time
import uuid
from dataclasses import dataclass, field, replace

from tts_stream.config import part_key
from tts_stream.errors import StreamConflict

STATUS_STARTING = "starting"
STATUS_STREAMING = "streaming"
STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"
STATUS_CANCELLED = "cancelled"  # the caller moved on (barge-in or a newer turn): nothing more plays
# A retried start may start the workflow again only if the last attempt is older than this: concurrent
# retries then start one workflow, not several.
RESTART_AFTER_MS = 2000

# Attributes a batch needs: everything but the texts, which can be tens of kilobytes.
# DynamoDB reserves many plain words (status, total, language...): every expression names attributes by alias.
_NAMES = {f"#{name}": name for name in ("status", "error", "language", "total", "texts", "ready", "engine", "voice",
                                         "keys")}
_BATCH_ATTRIBUTES = ("stream_id, #status, #total, #ready, #keys, failed_index, #error, created_ms, #engine, #voice, "
                     "#language, engine_settings")


@dataclass(frozen=True)
class Manifest:
    stream_id: str
    status: str
    input_hash: str = ""
    start_attempt_ms: int = 0
    total: int | None = None
    engine: str = ""
    voice: str = ""
    language: str = ""
    ready: dict[int, int] = field(default_factory=dict)
    keys: dict[int, str] = field(default_factory=dict)
    engine_settings: dict[str, str] = field(default_factory=dict)
    failed_index: int | None = None
    error: str = ""
    created_ms: int = 0
    texts: list[str] | None = None
    kept_starts: int = 0  # workflow starts that failed, kept for the next request that reads the stream
    begun_by: str = ""  # the token of the request that created the item

    def key_of(self, index: int) -> str:
        """The S3 key part `index` plays from: its prompt-cache object, or its own object under the stream."""
        return self.keys.get(index) or part_key(self.stream_id, index)


def _number(item, name):
    return int(item[name]["N"]) if name in item else None


def _from_item(item) -> Manifest:
    ready = {int(k): int(v["N"]) for k, v in item.get("ready", {}).get("M", {}).items()}
    texts = [t["S"] for t in item["texts"]["L"]] if "texts" in item else None
    keys = {int(k): v["S"] for k, v in item.get("keys", {}).get("M", {}).items()}
    engine_settings = {k: v["S"] for k, v in item.get("engine_settings", {}).get("M", {}).items()}
    return _settled(Manifest(
        stream_id=item["stream_id"]["S"],
        status=item["status"]["S"],
        input_hash=item.get("input_hash", {}).get("S", ""),
        total=_number(item, "total"),
        engine=item.get("engine", {}).get("S", ""),
        voice=item.get("voice", {}).get("S", ""),
        language=item.get("language", {}).get("S", ""),
        ready=ready,
        keys=keys,
        engine_settings=engine_settings,
        failed_index=_number(item, "failed_index"),
        error=item.get("error", {}).get("S", ""),
        created_ms=_number(item, "created_ms") or 0,
        start_attempt_ms=_number(item, "start_attempt_ms") or 0,
        texts=texts,
        kept_starts=len(item.get("kept_starts", {}).get("L", [])),
        begun_by=item.get("begun_by", {}).get("S", ""),
    ))


def _settled(manifest: Manifest) -> Manifest:
    """Every part ready: the stream is complete whether or not Finish has written so yet (part 0, spoken by
    ConnectFunction, may become ready after the workflow has finished the rest, or with no workflow at all)."""
    if manifest.status == STATUS_STREAMING and manifest.total is not None and manifest.failed_index is None and all(
            i in manifest.ready for i in range(manifest.total)):
        return replace(manifest, status=STATUS_COMPLETE)
    return manifest


def with_ready(manifest: Manifest, index: int, key: str, *, now_ms: int) -> Manifest:
    """The manifest as it stands after part `index` was marked ready with `key` (without reading it again)."""
    return _settled(replace(manifest, ready={**manifest.ready, index: now_ms}, keys={**manifest.keys, index: key}))


# Everything but the parts' texts (the bulk of an item): what a read that does not plan or speak needs
_WITHOUT_TEXTS = {
    "ProjectionExpression": _BATCH_ATTRIBUTES + ", input_hash, start_attempt_ms, kept_starts, begun_by, expires_at",
    "ExpressionAttributeNames": {k: v for k, v in _NAMES.items() if k != "#texts"},
}


def read(ddb, table: str, stream_id: str, *, with_texts: bool = False) -> Manifest | None:
    """One strongly consistent GetItem: a part marked ready is seen by the very next read."""
    request = {"TableName": table, "Key": {"stream_id": {"S": stream_id}}, "ConsistentRead": True}
    if not with_texts:
        request.update(_WITHOUT_TEXTS)
    item = ddb.get_item(**request).get("Item")
    return _from_item(item) if item and not _expired(item) else None


def read_many(ddb, table: str, stream_ids: list[str]) -> dict[str, Manifest]:
    """The streams among `stream_ids` (at most 100) that exist, in one strongly consistent BatchGetItem; a key
    DynamoDB leaves unprocessed is left out, as if the stream did not exist (a create then finds it)."""
    if not stream_ids:
        return {}
    response = ddb.batch_get_item(RequestItems={table: {
        "Keys": [{"stream_id": {"S": stream_id}} for stream_id in stream_ids], "ConsistentRead": True,
        **_WITHOUT_TEXTS}})
    items = response.get("Responses", {}).get(table, [])
    return {found.stream_id: found for found in map(_from_item, (i for i in items if not _expired(i)))}


def _expired(item) -> bool:
    """Past its TTL: DynamoDB deletes such an item late (within days), and until then it is gone for us too (its
    parts may be deleted already; a reused StreamId starts afresh)."""
    return "expires_at" in item and int(item["expires_at"]["N"]) <= time.time()


def _conditional(ddb, request) -> bool:
    try:
        ddb.update_item(**request)
        return True
    except ddb.exceptions.ConditionalCheckFailedException:
        return False


def _conflict(stream_id: str) -> StreamConflict:
    return StreamConflict(f"stream {stream_id} already exists with a different text; start it with a new StreamId")


# A stream is created where there is none, or where one has outlived its TTL (DynamoDB deletes it late), and then
# nothing of the old one may remain.
_NEW_OR_EXPIRED = "attribute_not_exists(stream_id) OR expires_at <= :now_s"
_LEFTOVERS = "failed_index, #error, kept_starts, taken_starts, taken_by, claimed_by"


def begin(ddb, table: str, stream_id: str, input_hash: str, *, now_ms: int, ttl_hours: int) -> tuple[bool, Manifest]:
    """Create the stream in `starting` state; (True, manifest) if this call created it, (False, manifest) if it
    exists with the same input (a retry).

    Raises StreamConflict when the id is taken by a different input: reusing it would mix two answers.
    """
    existing = _create(ddb, table, stream_id, input_hash, {
        "TableName": table,
        "Key": {"stream_id": {"S": stream_id}},
        "UpdateExpression": "SET #status = :starting, input_hash = :h, created_ms = :now, start_attempt_ms = :now, "
                            "expires_at = :exp, #ready = :empty, #keys = :empty, begun_by = :token "
                            "REMOVE #total, #texts, #engine, #voice, #language, engine_settings, " + _LEFTOVERS,
        "ConditionExpression": _NEW_OR_EXPIRED,
        "ExpressionAttributeNames": {n: _NAMES[n] for n in ("#status", "#ready", "#keys", "#total", "#texts",
                                                           "#engine", "#voice", "#language", "#error")},
        "ExpressionAttributeValues": {
            ":starting": {"S": STATUS_STARTING}, ":h": {"S": input_hash}, ":now": {"N": str(now_ms)},
            ":exp": {"N": str(now_ms // 1000 + ttl_hours * 3600)}, ":empty": {"M": {}},
            ":now_s": {"N": str(now_ms // 1000)},
        },
    })
    if existing is None:
        return True, Manifest(stream_id, STATUS_STARTING, input_hash, created_ms=now_ms, start_attempt_ms=now_ms)
    return False, existing


def _create(ddb, table: str, stream_id: str, input_hash: str, request: dict) -> Manifest | None:
    """Run a stream's conditional create (`request` sets `begun_by = :token`). None if this request created the
    stream, its first send included: the SDK resends a write whose answer was lost, and the resend finds the
    item the first send made, with this request's token. Otherwise the stream as an earlier request with the same
    input made it; StreamConflict if the id is taken by a different input."""
    token = uuid.uuid4().hex
    request["ExpressionAttributeValues"][":token"] = {"S": token}
    if _conditional(ddb, request):
        return None
    existing = read(ddb, table, stream_id)
    if existing is not None and existing.begun_by == token:
        return None
    if existing is None or existing.input_hash != input_hash:
        raise _conflict(stream_id)
    return existing


# What planning a stream sets, whether it is planned as it is created (begin_planned) or later (plan).
_PLAN = ("#total = :total, #texts = :texts, #engine = :engine, #voice = :voice, #language = :language, "
         "engine_settings = :settings")


def _plan_values(texts: list[str], engine: str, voice: str, language: str,
                 engine_settings: dict[str, str] | None) -> dict:
    return {":total": {"N": str(len(texts))}, ":texts": {"L": [{"S": t} for t in texts]},
            ":engine": {"S": engine}, ":voice": {"S": voice}, ":language": {"S": language},
            ":settings": {"M": {k: {"S": v} for k, v in (engine_settings or {}).items()}}}


def begin_planned(ddb, table: str, stream_id: str, input_hash: str, *, texts: list[str], engine: str, voice: str,
                  language: str, now_ms: int, ttl_hours: int, engine_settings: dict[str, str] | None = None,
                  cached: dict[int, str] | None = None) -> tuple[bool, Manifest]:
    """Create the stream already planned (begin and plan in one write), as ConnectFunction does for an answer
    it splits itself: (True, manifest) if this call created it, (False, manifest) for a retry of the same
    input; StreamConflict if the id is taken by a different input. Cached parts (index -> key) start ready."""
    cached = cached or {}
    existing = _create(ddb, table, stream_id, input_hash, {
        "TableName": table,
        "Key": {"stream_id": {"S": stream_id}},
        "UpdateExpression": "SET #status = :streaming, input_hash = :h, created_ms = :now, start_attempt_ms = :now, "
                            "expires_at = :exp, #ready = :ready, #keys = :keys, begun_by = :token, " + _PLAN
                            + " REMOVE " + _LEFTOVERS,
        "ConditionExpression": _NEW_OR_EXPIRED,
        "ExpressionAttributeNames": {n: _NAMES[n] for n in ("#status", "#ready", "#keys", "#total", "#texts",
                                                           "#engine", "#voice", "#language", "#error")},
        "ExpressionAttributeValues": {
            ":streaming": {"S": STATUS_STREAMING}, ":h": {"S": input_hash}, ":now": {"N": str(now_ms)},
            ":exp": {"N": str(now_ms // 1000 + ttl_hours * 3600)},
            ":ready": {"M": {str(i): {"N": str(now_ms)} for i in cached}},
            ":keys": {"M": {str(i): {"S": key} for i, key in cached.items()}},
            ":now_s": {"N": str(now_ms // 1000)},
            **_plan_values(texts, engine, voice, language, engine_settings),
        },
    })
    if existing is None:
        return True, _settled(Manifest(
            stream_id, STATUS_STREAMING, input_hash, start_attempt_ms=now_ms, total=len(texts), engine=engine,
            voice=voice, language=language, ready=dict.fromkeys(cached, now_ms), keys=dict(cached),
            engine_settings=dict(engine_settings or {}), created_ms=now_ms, texts=list(texts)))
    return False, existing


def read_planned(ddb, table: str, stream_id: str, input_hash: str) -> Manifest | None:
    """The stream with its texts if it is planned already, else None; StreamConflict if another input planned it."""
    found = read(ddb, table, stream_id, with_texts=True)
    if found is None or found.total is None:
        return None
    if found.input_hash != input_hash:
        raise _conflict(stream_id)
    return found


def claim_restart(ddb, table: str, stream_id: str, *, now_ms: int, after_ms: int = RESTART_AFTER_MS) -> bool:
    """True for exactly one caller when a stream is still `starting` and its last start attempt is older than
    `after_ms`: that attempt may have died before its workflow ran, so one retry may start it again. A chat
    turn's workflow stays `starting` while the bot thinks, so its callers wait longer than the bot may take."""
    return _conditional(ddb, {
        "TableName": table,
        "Key": {"stream_id": {"S": stream_id}},
        "UpdateExpression": "SET start_attempt_ms = :now, claimed_by = :token",
        # ... or this very claim, applied already: the SDK resends a write whose answer was lost
        "ConditionExpression": "#status = :starting AND (start_attempt_ms < :cutoff OR claimed_by = :token)",
        "ExpressionAttributeNames": {"#status": "status"},
        "ExpressionAttributeValues": {":starting": {"S": STATUS_STARTING}, ":now": {"N": str(now_ms)},
                                      ":cutoff": {"N": str(now_ms - after_ms)}, ":token": {"S": uuid.uuid4().hex}},
    })


# DynamoDB refuses an expression string longer than 4 KB ("Expression parameters", DynamoDB constraints).
EXPRESSION_MAX_BYTES = 4096


def plan(ddb, table: str, stream_id: str, input_hash: str, *, texts: list[str], engine: str, voice: str,
         language: str, now_ms: int, ttl_hours: int, engine_settings: dict[str, str] | None = None,
         cached: dict[int, str] | None = None) -> tuple[Manifest, bool]:
    """Record the parts and pin engine and voice; return the manifest as it now stands, and whether this call's
    write planned it (so a stream is counted planned once, however often its plan is delivered; a write whose
    answer was lost, then retried, counts none).

    One UpdateItem on the stream that ConnectFunction began. Parts found in the prompt cache (`cached`: index
    -> S3 key) are made ready in that same write, as many as its expression holds (DynamoDB's 4 KB: about 45; the
    rest are spoken again); ready marks made before it (part 0, spoken by ConnectFunction
    while the workflow started) are kept. A stream planned before with the same input (the workflow delivered
    twice) keeps what it has, so a second run only fills in what is missing. A workflow started directly,
    without ConnectFunction, begins its stream here first.
    """
    names = {n: _NAMES[n] for n in ("#status", "#total", "#texts", "#engine", "#voice", "#language")}
    expression = "SET #status = :streaming, " + _PLAN
    keys = {}
    for i, key in sorted((cached or {}).items()):
        # A part made ready before the plan keeps its own mark and key: its URL must not change under a retry.
        mark = f", #r.#c{i} = if_not_exists(#r.#c{i}, :now), #k.#c{i} = if_not_exists(#k.#c{i}, :k{i})"
        if len((expression + mark).encode()) > EXPRESSION_MAX_BYTES:
            break  # a long answer's later cached parts are spoken again: one write, within DynamoDB's limit
        expression += mark
        names.update({"#r": "ready", "#k": "keys", f"#c{i}": str(i)})
        keys[f":k{i}"] = {"S": key}
    request = {
        "TableName": table,
        "Key": {"stream_id": {"S": stream_id}},
        "UpdateExpression": expression,
        "ConditionExpression": "input_hash = :h AND #status = :starting",
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": {
            ":streaming": {"S": STATUS_STREAMING}, ":starting": {"S": STATUS_STARTING}, ":h": {"S": input_hash},
            **_plan_values(texts, engine, voice, language, engine_settings),
            **keys,
            **({":now": {"N": str(now_ms)}} if keys else {}),
        },
        "ReturnValues": "ALL_NEW",
    }
    try:
        return _from_item(ddb.update_item(**request)["Attributes"]), True
    except ddb.exceptions.ConditionalCheckFailedException:
        pass
    existing = read(ddb, table, stream_id, with_texts=True)
    if existing is not None and existing.input_hash != input_hash:
        raise _conflict(stream_id)
    if existing is None or existing.status == STATUS_STARTING:
        # Not begun yet (a workflow started directly), or begun between our write and our read (a twin run of
        # the same stream began it): plan it now. A twin that plans first makes our next write find it planned.
        if existing is None:
            begin(ddb, table, stream_id, input_hash, now_ms=now_ms, ttl_hours=ttl_hours)
        return plan(ddb, table, stream_id, input_hash, texts=texts, engine=engine, voice=voice, language=language,
                    now_ms=now_ms, ttl_hours=ttl_hours, engine_settings=engine_settings, cached=cached)
    return existing, False  # planned before (or failed, or cancelled): nothing to change


def mark_ready(ddb, table: str, stream_id: str, index: int, *, now_ms: int, key: str = "") -> bool:
    """One ready mark per part, with the S3 key it plays from: a repeated delivery keeps the first mark.

    False when the stream was cancelled (or no longer exists): the part must not play, and the workflow
    should stop synthesizing the rest. False too for an index past the stream's parts: the number of ready
    marks is how Finish and cancel tell that every part is ready, so no mark may stand for a part there is not.
    """
    return _conditional(ddb, {
        "TableName": table,
        "Key": {"stream_id": {"S": stream_id}},
        "UpdateExpression": "SET #ready.#i = if_not_exists(#ready.#i, :now), #keys.#i = if_not_exists(#keys.#i, :key)",
        "ConditionExpression": "attribute_exists(stream_id) AND #status <> :cancelled "
                               "AND (attribute_not_exists(#total) OR #total > :index)",
        "ExpressionAttributeNames": {"#ready": "ready", "#keys": "keys", "#i": str(index), "#status": "status",
                                     "#total": "total"},
        "ExpressionAttributeValues": {":now": {"N": str(now_ms)}, ":key": {"S": key or part_key(stream_id, index)},
                                      ":cancelled": {"S": STATUS_CANCELLED}, ":index": {"N": str(index)}},
    })


def mark_part_failed(ddb, table: str, stream_id: str, index: int, message: str) -> bool:
    """Record that part `index` failed for good, keeping the lowest failed index.

    The stream turns `failed` at once so a caller is not kept waiting for a part that will never come; parts
    before the failure still play. A part that is already ready (a duplicate delivery failed after the first
    succeeded) is not a failure.
    """
    return _conditional(ddb, {
        "TableName": table,
        "Key": {"stream_id": {"S": stream_id}},
        "UpdateExpression": "SET #status = :failed, failed_index = :i, #error = :m",
        "ConditionExpression": "attribute_exists(stream_id) AND attribute_not_exists(#ready.#k) "
                               "AND #status <> :cancelled AND (attribute_not_exists(failed_index) OR failed_index > :i)",
        "ExpressionAttributeNames": {"#status": "status", "#error": "error", "#ready": "ready", "#k": str(index)},
        "ExpressionAttributeValues": {":failed": {"S": STATUS_FAILED}, ":i": {"N": str(index)}, ":m": {"S": message},
                                      ":cancelled": {"S": STATUS_CANCELLED}},
    })


def fail_stream(ddb, table: str, stream_id: str, message: str, *, owned: set[int] | None = None) -> bool:
    """The workflow failed outside any one part (bad input, a step that kept failing): the stream fails at its
    first part that is not ready, so everything before it still plays. `owned`: the parts the failed run answers
    for (default all; a part another run is speaking is not its failure). False if there is nothing to fail."""
    found = read(ddb, table, stream_id)
    if found is None or found.status in (STATUS_COMPLETE, STATUS_CANCELLED):
        return False
    missing = [i for i in range(found.total or 0) if i not in found.ready and (owned is None or i in owned)]
    first = missing[0] if missing else (0 if found.total is None else None)
    if first is None:
        return False  # every part is ready: finish() records it complete
    return mark_part_failed(ddb, table, stream_id, first, message)


def still_plays(found: Manifest) -> bool:
    """Parts of this stream may still be spoken: it is starting or streaming, or it failed after its first part
    (the parts before the failure play first; part 0 may be a workflow run of its own)."""
    return found.status in (STATUS_STARTING, STATUS_STREAMING) or (
        found.status == STATUS_FAILED and bool(found.failed_index))


# still_plays, as a condition on the item.
_STILL_PLAYS = "(#status IN (:starting, :streaming) OR (#status = :failed AND failed_index > :zero))"
_STILL_PLAYS_VALUES = {":starting": {"S": STATUS_STARTING}, ":streaming": {"S": STATUS_STREAMING},
                       ":failed": {"S": STATUS_FAILED}, ":zero": {"N": "0"}}


def keep_start(ddb, table: str, stream_id: str, workflow_input: dict) -> bool:
    """Keep a workflow input whose StartExecution failed, for the next request that reads the stream to start
    (`take_starts`). False if nothing more of the stream will play (`still_plays`)."""
    kept = json.dumps(workflow_input, ensure_ascii=False, sort_keys=True)
    if _conditional(ddb, {
        "TableName": table,
        "Key": {"stream_id": {"S": stream_id}},
        "UpdateExpression": "SET kept_starts = list_append(if_not_exists(kept_starts, :none), :input)",
        # Kept once, however often the write is sent (the SDK resends one whose answer was lost).
        "ConditionExpression": f"{_STILL_PLAYS} AND "
                               "(attribute_not_exists(kept_starts) OR NOT contains(kept_starts, :one))",
        "ExpressionAttributeNames": {"#status": "status"},
        "ExpressionAttributeValues": {**_STILL_PLAYS_VALUES, ":none": {"L": []}, ":input": {"L": [{"S": kept}]},
                                      ":one": {"S": kept}},
    }):
        return True
    found = read(ddb, table, stream_id)
    return found is not None and still_plays(found)  # kept already


def take_starts(ddb, table: str, stream_id: str) -> list[dict]:
    """The kept workflow inputs of a stream that still plays, removed in the same write: exactly one caller
    gets them. They move to `taken_starts` under this call's token, so a resend of the write (its answer lost)
    still gets them back."""
    token = uuid.uuid4().hex
    try:
        item = ddb.update_item(
            TableName=table, Key={"stream_id": {"S": stream_id}},
            UpdateExpression="SET taken_by = :token, taken_starts = kept_starts REMOVE kept_starts",
            ConditionExpression=f"attribute_exists(kept_starts) AND {_STILL_PLAYS}",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={**_STILL_PLAYS_VALUES, ":token": {"S": token}},
            ReturnValues="ALL_NEW",  # UPDATED_NEW may leave out taken_starts when it equals the last ones taken
        )["Attributes"]
    except ddb.exceptions.ConditionalCheckFailedException:
        item = ddb.get_item(TableName=table, Key={"stream_id": {"S": stream_id}}, ConsistentRead=True,
                            ProjectionExpression="taken_by, taken_starts").get("Item", {})
    if item.get("taken_by", {}).get("S") != token:
        return []  # someone else took them (or there were none)
    return [json.loads(kept["S"]) for kept in item["taken_starts"]["L"]]


def cancel(ddb, table: str, stream_id: str) -> bool:
    """The caller moved on: nothing more of this stream plays, and its remaining parts are not synthesized."""
    return _conditional(ddb, {
        "TableName": table,
        "Key": {"stream_id": {"S": stream_id}},
        "UpdateExpression": "SET #status = :cancelled",
        # A stream whose parts are all ready is complete (see _from_item), even before Finish says so.
        "ConditionExpression": "#status IN (:starting, :streaming) AND NOT size(#ready) = #total",
        "ExpressionAttributeNames": {"#status": "status", "#ready": "ready", "#total": "total"},
        "ExpressionAttributeValues": {":cancelled": {"S": STATUS_CANCELLED}, ":starting": {"S": STATUS_STARTING},
                                      ":streaming": {"S": STATUS_STREAMING}},
    })


def finish(ddb, table: str, stream_id: str, *, reason: str = "", owned: set[int] | None = None) -> Manifest:
    """Record the outcome once every part has been tried: `complete`, or `failed` with the first failed index.

    The outcome is derived from the ready marks, not from what the workflow believes, so a part lost on the
    way cannot leave the stream `complete` with a hole in it. `owned`: the parts this workflow run answers for
    (default all); a missing part someone else is speaking (part 0, by ConnectFunction) is not this run's
    failure, and the stream is complete once that part is ready too. A cancelled stream stays cancelled.

    The usual case, every part ready, is one conditional write that returns the item; any other case gets the
    item back from the failed condition, so nothing is read first.
    """
    try:
        return _from_item(ddb.update_item(
            TableName=table, Key={"stream_id": {"S": stream_id}},
            UpdateExpression="SET #status = :complete",
            ConditionExpression="#status = :streaming AND attribute_not_exists(failed_index) "
                                "AND size(#ready) = #total",  # every mark is a part (mark_ready)
            ExpressionAttributeNames={"#status": "status", "#total": "total", "#ready": "ready"},
            ExpressionAttributeValues={":complete": {"S": STATUS_COMPLETE}, ":streaming": {"S": STATUS_STREAMING}},
            ReturnValues="ALL_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD")["Attributes"])
    except ddb.exceptions.ConditionalCheckFailedException as error:
        item = error.response.get("Item")
    if not item:
        raise StreamConflict(f"stream {stream_id} has no manifest to finish")
    manifest = _from_item(item)
    if manifest.status == STATUS_CANCELLED:
        return manifest
    missing = [i for i in range(manifest.total or 0) if i not in manifest.ready and (owned is None or i in owned)]
    # Never planned: it fails at part 0. Else at its first missing part (or stays failed at an earlier one).
    first = 0 if manifest.total is None else next(iter(missing), None)
    if first is None:
        # Nothing failed here: the stream is as it stands (recorded complete before, or waiting for a part
        # someone else speaks; the part that makes it complete makes it read as complete).
        return manifest
    mark_part_failed(ddb, table, stream_id, first, manifest.error or reason or f"part {first} was never synthesized")
    return read(ddb, table, stream_id)
