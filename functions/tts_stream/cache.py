"""The prompt cache: a part whose engine, engine settings, voice and text were spoken before is not spoken
again. Its audio is a content-addressed object `cache/KEY.wav`; a small DynamoDB item per key says it exists
(so a stream's plan finds every cached part in one BatchGetItem, not one S3 request per part).
"""

import hashlib
import json
import re
import time

from tts_stream.errors import RetryableError

_SPACES = re.compile(r"\s+")
# Bump when what we do to audio changes (filter, level, encoding): older cache objects then stop matching.
AUDIO_VERSION = 1
# An entry is only trusted while its object will outlive the call that plays it (DynamoDB's TTL deletes late).
_MIN_REMAINING_S = 3600
_OBJECT_KEY = re.compile(r"cache/([0-9a-f]{64})\.wav")
_BATCH_WRITE_MAX = 25  # BatchWriteItem takes at most 25 items
_UNPROCESSED_TRIES = 5
# A lookup is on the caller's path (ConnectFunction waits for it before speaking part 0): keys DynamoDB still
# leaves unprocessed after this many tries (50 + 100 ms of backoff) are misses, and those parts are spoken.
_LOOKUP_TRIES = 3


def key_for(engine: str, identity: dict[str, str], voice: str, text: str) -> str:
    """Same engine, settings, voice and (whitespace-normalized) text: same audio, same key."""
    spoken = _SPACES.sub(" ", text).strip()
    blob = json.dumps([AUDIO_VERSION, engine, sorted(identity.items()), voice, spoken], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def object_key(key: str) -> str:
    return f"cache/{key}.wav"


def lookup(ddb, table: str, keys: list[str], *, now_ms: int, retention_days: int) -> set[str]:
    """Which of these keys have a cached object that will still be there for this call.

    Judged by when the object was written and the retention in force now, so lowering CacheRetentionDays
    (which makes the lifecycle rule delete objects sooner) never leaves an entry pointing at deleted audio.
    Keys DynamoDB keeps leaving unprocessed (throttling) are misses after a few short tries, never a wait
    without end.
    """
    keep_ms = max(retention_days - 1, 0) * 86_400_000
    found: set[str] = set()
    wanted = sorted(set(keys))
    for start in range(0, len(wanted), 100):  # BatchGetItem takes at most 100 keys
        request = {table: {"Keys": [{"cache_key": {"S": k}} for k in wanted[start:start + 100]],
                           "ProjectionExpression": "cache_key, written_ms"}}
        for attempt in range(_LOOKUP_TRIES):
            if attempt:
                time.sleep(0.05 * 2 ** (attempt - 1))  # what DynamoDB asks for when it leaves keys unprocessed
            response = ddb.batch_get_item(RequestItems=request)
            for item in response.get("Responses", {}).get(table, []):
                if "written_ms" in item and int(item["written_ms"]["N"]) + keep_ms > now_ms + _MIN_REMAINING_S * 1000:
                    found.add(item["cache_key"]["S"])
            request = response.get("UnprocessedKeys") or None
            if not request:
                break
    return found


def remember(ddb, table: str, written: dict[str, int], *, retention_days: int) -> None:
    """Index freshly written cache objects (cache key -> epoch ms it was written), up to 25 per BatchWriteItem:
    a stream's parts cost one request, not one each. Lookups trust an entry only until a day before the lifecycle
    rule deletes its object; `expires_at` merely lets DynamoDB's TTL clean it up afterwards.

    Raises RetryableError if DynamoDB keeps leaving items unprocessed (throttling): rewriting an entry is harmless."""
    items = [{"PutRequest": {"Item": {"cache_key": {"S": key}, "written_ms": {"N": str(ms)},
                                      "expires_at": {"N": str(ms // 1000 + retention_days * 86400)}}}}
             for key, ms in sorted(written.items())]
    for start in range(0, len(items), _BATCH_WRITE_MAX):
        request = {table: items[start:start + _BATCH_WRITE_MAX]}
        for attempt in range(_UNPROCESSED_TRIES):
            request = ddb.batch_write_item(RequestItems=request).get("UnprocessedItems") or None
            if not request:
                break
            time.sleep(0.05 * 2 ** attempt)  # what DynamoDB asks for when it returns items unprocessed: back off
        if request:
            raise RetryableError(f"DynamoDB left {len(request[table])} prompt-cache entries unprocessed")


def key_of_object(object_key: str) -> str | None:
    """The cache key of a prompt-cache object key (`cache/KEY.wav`); None for any other key."""
    match = _OBJECT_KEY.fullmatch(object_key)
    return match.group(1) if match else None
