"""What a reliability test checks after a simulated call, from the caller's side and from the store's side.

Caller: the parts heard are the stream's own parts 0..k-1, in order, once each, each with the text of the
caller's own answer; the call ends, either with every part and the final flag or with the spoken apology.
Store: every object under streams/<id>/ and every part marked ready is a complete Connect WAV, one per ready part;
nothing is written outside the stream's prefix (but the prompt cache's content-addressed objects).
"""

from urllib.parse import unquote, urlsplit

from localcloud import faults
from tts_stream import audio, manifest, pipeline
from tts_stream.config import part_key

APOLOGY_END = "EndAfterFallback"
NORMAL_END = "EndCall"
CACHE_PREFIX = "cache/"


def bucket_keys(cloud, prefix: str = "") -> set[str]:
    s3, bucket = cloud.kept_client("s3"), cloud.physical("AudioBucket")
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update(obj["Key"] for obj in page.get("Contents", []))
    return keys


def read_manifest(cloud, stream_id):
    return manifest.read(cloud.kept_client("dynamodb"), cloud.physical("ManifestTable"), stream_id, with_texts=True)


def key_of(url: str) -> str:
    """The S3 key an object URL or a presigned URL points at."""
    path = unquote(urlsplit(url).path).lstrip("/")
    host = urlsplit(url).netloc
    return path if ".s3." in host else path.split("/", 1)[1]  # path-style (presigned on localcloud): bucket/key


def _object(cloud, key):
    return cloud.kept_client("s3").get_object(Bucket=cloud.physical("AudioBucket"), Key=key)["Body"].read()


def stream_of(text: str, result: dict) -> str:
    """The call's stream: as the replies name it, or (when the first reply was an error that could not name it)
    as start_stream derives it from the contact and the answer."""
    return result["stream_id"] or f"{result['contact_id']}-{pipeline.input_hash(text, '', 'auto')[:12]}"


def caller_heard(cloud, text: str, result: dict, *, expect: str) -> dict:
    """Check one call's report; `expect` is "complete" (every part, final) or "apology". Returns facts for tables."""
    stream_id = stream_of(text, result)
    found = read_manifest(cloud, stream_id) if stream_id else None
    heard = [part.get("text", "") for part in result["parts"]]
    facts = {"stream_id": stream_id, "parts_heard": len(heard), "total": found.total if found else None,
             "status": found.status if found else None, "messages": list(result["messages"]),
             "ended_by": result["ended_by"], "final": result["final"]}
    # The call ended, and how
    if expect == "complete":
        assert result["ended_by"] == NORMAL_END, (result["ended_by"], result["errors"], result["messages"])
        assert result["final"] is True and result["status"] == "complete"
        assert result["messages"] == []
        assert found is not None and found.status == manifest.STATUS_COMPLETE
        assert len(heard) == found.total
    else:
        assert result["ended_by"] == APOLOGY_END, (result["ended_by"], result["errors"])
        assert len(result["messages"]) == 1 and result["messages"][0].startswith("Sorry")
    # Parts 0..k-1 of this stream, in order, none twice, each the caller's own words
    expected = [t.strip() for t in faults.parts_of(text)]
    if found is not None and found.texts is not None:
        assert [t.strip() for t in found.texts] == expected, "the stream holds another answer than the caller's"
    cached = getattr(found, "keys", None) or {}
    for position, (part, url) in enumerate(zip(result["parts"], [p["url"] for p in result["parts"]])):
        assert part["index"] == position, [p["index"] for p in result["parts"]]
        assert key_of(url) in (part_key(stream_id, position), cached.get(position)), url
        assert heard[position] == expected[position]
    if found is not None and found.status == manifest.STATUS_FAILED:
        assert len(heard) == found.failed_index, (len(heard), found.failed_index, found.error)
    return facts


def store_is_sound(cloud, stream_id: str, before: set[str] | None = None) -> dict:
    """Check the stream's objects and ready marks; with `before` (the bucket's keys before the call), check that
    nothing was written outside streams/<stream_id>/ but prompt-cache objects. Returns counts for reports."""
    found = read_manifest(cloud, stream_id)
    prefix = f"streams/{stream_id}/"
    after = bucket_keys(cloud, "" if before is not None else prefix)
    own = {key for key in after if key.startswith(prefix)}
    if found is None:
        assert own == set(), own
        return {"objects": 0, "ready": 0}
    assert found.status in (manifest.STATUS_COMPLETE, manifest.STATUS_FAILED, manifest.STATUS_CANCELLED), found.status
    cached = getattr(found, "keys", None) or {}
    allowed = {part_key(stream_id, i) for i in range(found.total or 0)}
    assert own <= allowed, sorted(own - allowed)
    for key in own:  # nothing half-written anywhere under the stream, ready or not
        audio.read_connect_wav(_object(cloud, key))
    for index in found.ready:
        key = cached.get(index) or part_key(stream_id, index)
        assert key in after or (before is None and key.startswith(CACHE_PREFIX)), f"part {index}: no {key}"
        assert audio.read_connect_wav(_object(cloud, key)).duration_ms > 0
    # One object per ready part (a part that is not ready may have left its object from an attempt that failed
    # after writing it; it is never handed out).
    assert {i for i in found.ready if i not in cached} <= {int(k[-8:-4]) for k in own}
    if before is not None:
        outside = {key for key in after - before if not key.startswith(prefix)}
        assert all(key.startswith(CACHE_PREFIX) for key in outside), sorted(outside)
        for key in outside:
            audio.read_connect_wav(_object(cloud, key))
    return {"objects": len(own), "ready": len(found.ready)}
