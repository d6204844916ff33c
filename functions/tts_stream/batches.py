"""Which parts the contact flow plays next: pure functions over a manifest.

A batch is always the contiguous ready prefix from NextIndex. Handing out part k+1 before part k is ready
would play the answer out of order; handing out a part before NextIndex would replay it. Both are
impossible by construction here, so the flow only has to pass back the NextIndex it was given.
"""

import re
from dataclasses import dataclass

from tts_stream.errors import InvalidInput, shown
from tts_stream.manifest import (
    STATUS_CANCELLED,
    STATUS_COMPLETE,
    STATUS_FAILED,
    STATUS_STARTING,
    STATUS_STREAMING,
    Manifest,
)

# The reply carries Part0Url..Part{MAX_BATCH_SIZE-1}Url; Connect's reply limit (32 KB) fits far more, but a
# flow never has this many Play blocks in a row.
MAX_BATCH_SIZE = 10
_INDEX = re.compile(r"[0-9]{1,6}")  # ASCII digits only: str.isdigit() also accepts other scripts' digits
MAX_INDEX = 999_999


@dataclass(frozen=True)
class Batch:
    stream_id: str
    status: str
    indexes: tuple[int, ...]
    next_index: int
    final: bool
    error: str = ""


def clamp_batch_size(raw) -> int:
    """The flow says how many Play blocks it has; more than MAX_BATCH_SIZE cannot be carried."""
    size = parse_index(raw, "BatchSize")
    if size < 1:
        raise InvalidInput(f"BatchSize must be at least 1, got {size}")
    return min(size, MAX_BATCH_SIZE)


def parse_index(raw, name: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise InvalidInput(f"{name} must be a whole number given as a string, got {type(raw).__name__}")
    text = str(raw).strip()
    if not _INDEX.fullmatch(text):
        raise InvalidInput(f"{name} must be a whole number from 0 to {MAX_INDEX}, got {shown(raw)}")
    return int(text)


def playable_end(manifest: Manifest) -> int | None:
    """Index after the last part that will ever play; None while the number of parts is not known."""
    if manifest.total is None:
        return 0 if manifest.status == STATUS_FAILED else None
    if manifest.failed_index is not None:
        return min(manifest.total, manifest.failed_index)
    return manifest.total


def next_batch(manifest: Manifest, next_index: int, batch_size: int, *, now_ms: int, timeout_ms: int) -> Batch:
    if manifest.status == STATUS_CANCELLED:
        return Batch(manifest.stream_id, STATUS_CANCELLED, (), next_index, True, "")
    end = playable_end(manifest)
    if end is not None and next_index > end:
        raise InvalidInput(f"NextIndex {next_index} is past the end of stream {manifest.stream_id} ({end} parts)")
    indexes = []
    index = next_index
    while len(indexes) < batch_size and (end is None or index < end) and index in manifest.ready:
        indexes.append(index)
        index += 1
    # Connect sees a stream that has not been planned yet as streaming: it only needs to keep asking.
    status = STATUS_STREAMING if manifest.status == STATUS_STARTING else manifest.status
    error = manifest.error
    final = status in (STATUS_COMPLETE, STATUS_FAILED) and end is not None and index >= end
    if not final and not indexes and now_ms - manifest.created_ms > timeout_ms:
        # The workflow died without recording an outcome (Express runs end at 5 minutes): end the call
        # rather than loop on a stream that will never move.
        status, error, final = STATUS_FAILED, f"stream {manifest.stream_id} timed out waiting for part {index}", True
    return Batch(manifest.stream_id, status, tuple(indexes), index, final, error)
