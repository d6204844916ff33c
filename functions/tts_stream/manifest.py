"""The manifest: one DynamoDB item per stream, the single place that says which parts are ready.

Item attributes:
    stream_id       partition key
    status          starting | streaming | complete | failed
    input_hash      what the stream was started with, so a retried start is recognised and a reused id is not
    total           number of parts (once planned)
    engine, voice, language   pinned when the stream is planned: every part uses exactly these
    texts           the chunk text of each part (read only when asked for: batches never need it)
    ready           map of part index -> epoch ms when it became ready (a map key is one ready mark, however
                    often a part is delivered)
    failed_index    the lowest index that failed for good; error: what went wrong
    created_ms, expires_at (TTL, epoch seconds)

Every write is a single conditional UpdateItem, so concurrent and repeated deliveries cannot corrupt an item.
"""

from dataclasses import dataclass, field

from tts_stream.errors import StreamConflict

STATUS_STARTING = "starting"
STATUS_STREAMING = "streaming"
STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"

# Attributes a batch needs: everything but the texts, which can be tens of kilobytes.
# DynamoDB reserves many plain words (status, total, language...): every expression names attributes by alias.
_NAMES = {f"#{name}": name for name in ("status", "error", "language", "total", "texts", "ready", "engine", "voice")}
_BATCH_ATTRIBUTES = "stream_id, #status, #total, #ready, failed_index, #error, created_ms, #engine, #voice, #language"


@dataclass(frozen=True)
class Manifest:
    stream_id: str
    status: str
    input_hash: str = ""
    total: int | None = None
    engine: str = ""
    voice: str = ""
    language: str = ""
    ready: dict[int, int] = field(default_factory=dict)
    failed_index: int | None = None
    error: str = ""
    created_ms: int = 0
    texts: list[str] | None = None


def _number(item, name):
    return int(item[name]["N"]) if name in item else None


def _from_item(item) -> Manifest:
    ready = {int(k): int(v["N"]) for k, v in item.get("ready", {}).get("M", {}).items()}
    texts = [t["S"] for t in item["texts"]["L"]] if "texts" in item else None
    return Manifest(
        stream_id=item["stream_id"]["S"],
        status=item["status"]["S"],
        input_hash=item.get("input_hash", {}).get("S", ""),
        total=_number(item, "total"),
        engine=item.get("engine", {}).get("S", ""),
        voice=item.get("voice", {}).get("S", ""),
        language=item.get("language", {}).get("S", ""),
        ready=ready,
        failed_index=_number(item, "failed_index"),
        error=item.get("error", {}).get("S", ""),
        created_ms=_number(item, "created_ms") or 0,
        texts=texts,
    )


def read(ddb, table: str, stream_id: str, *, with_texts: bool = False) -> Manifest | None:
    """One strongly consistent GetItem: a part marked ready is seen by the very next read."""
    request = {"TableName": table, "Key": {"stream_id": {"S": stream_id}}, "ConsistentRead": True}
    if not with_texts:
        request["ProjectionExpression"] = _BATCH_ATTRIBUTES + ", input_hash"
        request["ExpressionAttributeNames"] = {k: v for k, v in _NAMES.items() if k != "#texts"}
    item = ddb.get_item(**request).get("Item")
    return _from_item(item) if item else None


def _conditional(ddb, request) -> bool:
    try:
        ddb.update_item(**request)
        return True
    except ddb.exceptions.ConditionalCheckFailedException:
        return False


def begin(ddb, table: str, stream_id: str, input_hash: str, *, now_ms: int, ttl_hours: int) -> bool:
    """Create the stream in `starting` state. False when it already exists with the same input (a retry).

    Raises StreamConflict when the id is taken by a different input: reusing it would mix two answers.
    """
    created = _conditional(ddb, {
        "TableName": table,
        "Key": {"stream_id": {"S": stream_id}},
        "UpdateExpression": "SET #status = :starting, input_hash = :h, created_ms = :now, expires_at = :exp, "
                            "#ready = :empty",
        "ConditionExpression": "attribute_not_exists(stream_id)",
        "ExpressionAttributeNames": {"#status": "status", "#ready": "ready"},
        "ExpressionAttributeValues": {
            ":starting": {"S": STATUS_STARTING}, ":h": {"S": input_hash}, ":now": {"N": str(now_ms)},
            ":exp": {"N": str(now_ms // 1000 + ttl_hours * 3600)}, ":empty": {"M": {}},
        },
    })
    if created:
        return True
    existing = read(ddb, table, stream_id)
    if existing is None or existing.input_hash != input_hash:
        raise StreamConflict(f"stream {stream_id} already exists with a different text; start it with a new StreamId")
    return False


def plan(ddb, table: str, stream_id: str, input_hash: str, *, texts: list[str], engine: str, voice: str,
         language: str, now_ms: int, ttl_hours: int) -> Manifest:
    """Record the parts and pin engine and voice; return the manifest as it now stands.

    A stream planned before with the same input (the workflow delivered twice) keeps what it has, pinned
    voice and ready parts included, so a second run only fills in what is missing.
    """
    first_time = _conditional(ddb, {
        "TableName": table,
        "Key": {"stream_id": {"S": stream_id}},
        "UpdateExpression": "SET #status = :streaming, input_hash = :h, #total = :total, #texts = :texts, "
                            "#engine = :engine, #voice = :voice, #language = :language, "
                            "created_ms = if_not_exists(created_ms, :now), expires_at = if_not_exists(expires_at, :exp), "
                            "#ready = if_not_exists(#ready, :empty)",
        "ConditionExpression": "attribute_not_exists(stream_id) OR (input_hash = :h AND #status = :starting)",
        "ExpressionAttributeNames": {n: _NAMES[n] for n in ("#status", "#total", "#texts", "#engine", "#voice",
                                                             "#language", "#ready")},
        "ExpressionAttributeValues": {
            ":streaming": {"S": STATUS_STREAMING}, ":starting": {"S": STATUS_STARTING}, ":h": {"S": input_hash},
            ":total": {"N": str(len(texts))}, ":texts": {"L": [{"S": t} for t in texts]},
            ":engine": {"S": engine}, ":voice": {"S": voice}, ":language": {"S": language},
            ":now": {"N": str(now_ms)}, ":exp": {"N": str(now_ms // 1000 + ttl_hours * 3600)}, ":empty": {"M": {}},
        },
    })
    manifest = read(ddb, table, stream_id, with_texts=True)
    if not first_time and (manifest is None or manifest.input_hash != input_hash):
        raise StreamConflict(f"stream {stream_id} already exists with a different text; start it with a new StreamId")
    return manifest


def mark_ready(ddb, table: str, stream_id: str, index: int, *, now_ms: int) -> None:
    """One ready mark per part: a repeated delivery keeps the first mark and its time."""
    ddb.update_item(
        TableName=table,
        Key={"stream_id": {"S": stream_id}},
        UpdateExpression="SET #ready.#i = if_not_exists(#ready.#i, :now)",
        ConditionExpression="attribute_exists(stream_id)",
        ExpressionAttributeNames={"#ready": "ready", "#i": str(index)},
        ExpressionAttributeValues={":now": {"N": str(now_ms)}},
    )


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
                               "AND (attribute_not_exists(failed_index) OR failed_index > :i)",
        "ExpressionAttributeNames": {"#status": "status", "#error": "error", "#ready": "ready", "#k": str(index)},
        "ExpressionAttributeValues": {":failed": {"S": STATUS_FAILED}, ":i": {"N": str(index)}, ":m": {"S": message}},
    })


def fail_stream(ddb, table: str, stream_id: str, message: str) -> bool:
    """The stream cannot be planned at all (bad input): failed before its first part. False if it does not exist."""
    return _conditional(ddb, {
        "TableName": table,
        "Key": {"stream_id": {"S": stream_id}},
        "UpdateExpression": "SET #status = :failed, failed_index = :zero, #error = :m",
        "ConditionExpression": "attribute_exists(stream_id) AND #status = :starting",
        "ExpressionAttributeNames": {"#status": "status", "#error": "error"},
        "ExpressionAttributeValues": {
            ":failed": {"S": STATUS_FAILED}, ":starting": {"S": STATUS_STARTING}, ":zero": {"N": "0"},
            ":m": {"S": message},
        },
    })


def finish(ddb, table: str, stream_id: str) -> Manifest:
    """Record the outcome once every part has been tried: `complete`, or `failed` with the first failed index.

    The outcome is derived from the ready marks, not from what the workflow believes, so a part lost on the
    way cannot leave the stream `complete` with a hole in it.
    """
    manifest = read(ddb, table, stream_id)
    if manifest is None:
        raise StreamConflict(f"stream {stream_id} has no manifest to finish")
    missing = [i for i in range(manifest.total or 0) if i not in manifest.ready]
    if manifest.failed_index is not None or missing:
        first_failed = min([*missing, *([manifest.failed_index] if manifest.failed_index is not None else [])])
        error = manifest.error or f"part {first_failed} was never synthesized"
        mark_part_failed(ddb, table, stream_id, first_failed, error)
    else:
        ddb.update_item(
            TableName=table,
            Key={"stream_id": {"S": stream_id}},
            UpdateExpression="SET #status = :complete",
            ConditionExpression="attribute_not_exists(failed_index)",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":complete": {"S": STATUS_COMPLETE}},
        )
    return read(ddb, table, stream_id)
