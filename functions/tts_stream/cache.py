"""The prompt cache: a part whose engine, engine settings, voice and text were spoken before is not spoken
again. Its audio is a content-addressed object `cache/KEY.wav`; a small DynamoDB item per key says it exists
(so a stream's plan finds every cached part in one BatchGetItem, not one S3 request per part).
"""

import hashlib
import json
import re

_SPACES = re.compile(r"\s+")
# Bump when what we do to audio changes (filter, level, encoding): older cache objects then stop matching.
AUDIO_VERSION = 1
# An entry is only trusted while its object will outlive the call that plays it (DynamoDB's TTL deletes late).
_MIN_REMAINING_S = 3600


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
    """
    keep_ms = max(retention_days - 1, 0) * 86_400_000
    found: set[str] = set()
    wanted = sorted(set(keys))
    for start in range(0, len(wanted), 100):  # BatchGetItem takes at most 100 keys
        request = {table: {"Keys": [{"cache_key": {"S": k}} for k in wanted[start:start + 100]],
                           "ProjectionExpression": "cache_key, written_ms"}}
        while request:
            response = ddb.batch_get_item(RequestItems=request)
            for item in response.get("Responses", {}).get(table, []):
                if "written_ms" in item and int(item["written_ms"]["N"]) + keep_ms > now_ms + _MIN_REMAINING_S * 1000:
                    found.add(item["cache_key"]["S"])
            request = response.get("UnprocessedKeys") or None
    return found


def remember(ddb, table: str, key: str, *, now_ms: int, retention_days: int) -> None:
    """Index a freshly written cache object. Lookups trust it only until a day before the lifecycle rule deletes
    the object; `expires_at` merely lets DynamoDB's TTL clean it up afterwards."""
    expires = now_ms // 1000 + retention_days * 86400
    ddb.put_item(TableName=table, Item={"cache_key": {"S": key}, "written_ms": {"N": str(now_ms)},
                                        "expires_at": {"N": str(expires)}})
