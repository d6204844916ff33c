"""Which parts a batch holds: the contiguous ready prefix, the final sentinel, bad indexes."""

import pytest

from tts_stream.batches import MAX_BATCH_SIZE, Batch, clamp_batch_size, next_batch, parse_index
from tts_stream.errors import InvalidInput
from tts_stream.manifest import Manifest

NOW = 1_000_000
TIMEOUT = 330_000


def stream(status="streaming", total=6, ready=(), failed_index=None, created_ms=NOW):
    return Manifest(stream_id="s1", status=status, total=total, ready={i: NOW for i in ready},
                    failed_index=failed_index, created_ms=created_ms)


def batch(manifest, next_index=0, size=5):
    return next_batch(manifest, next_index, size, now_ms=NOW, timeout_ms=TIMEOUT)


def test_a_batch_never_skips_a_part_that_is_not_ready_even_when_later_ones_are():
    # Given parts 0, 1, 3 and 4 ready but not 2
    found = stream(ready=[0, 1, 3, 4])
    # Then the batch stops before 2 and the flow will continue from 2
    result = batch(found)
    assert result.indexes == (0, 1)
    assert result.next_index == 2
    assert not result.final
    # and from 2 nothing plays until 2 is ready
    assert batch(found, 2).indexes == ()


def test_following_next_index_hands_out_every_part_once_in_order():
    # Given parts that become ready out of order while the flow loops
    order = [3, 0, 5, 1, 2, 4]
    ready, played, next_index, final = set(), [], 0, False
    for index in order:
        ready.add(index)
        result = batch(stream(ready=ready, status="complete" if len(ready) == 6 else "streaming"), next_index, 2)
        played.extend(result.indexes)
        next_index, final = result.next_index, result.final
    while not final:
        result = batch(stream(ready=ready, status="complete"), next_index, 2)
        played.extend(result.indexes)
        next_index, final = result.next_index, result.final
    # Then each part was handed out exactly once, in order, and the stream ended final
    assert played == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("size", [1, 2, 5])
def test_a_batch_holds_at_most_the_flows_play_blocks_and_the_next_one_goes_on_from_there(size):
    # The flow plays Part0Url..Part{size-1}Url: a part handed out past them would be skipped.
    result = batch(stream(status="complete", ready=range(6)), 0, size)
    assert result.indexes == tuple(range(size))
    assert result.next_index == size and not result.final


def test_the_same_request_gives_the_same_batch():
    found = stream(ready=[0, 1, 2])
    assert batch(found, 1) == batch(found, 1)


def test_final_only_once_the_last_part_is_handed_out_and_the_stream_is_complete():
    assert not batch(stream(status="streaming", ready=range(6)), 0, 10).final  # all ready, outcome not recorded
    assert not batch(stream(status="complete", ready=range(6)), 0, 3).final  # parts remain
    last = batch(stream(status="complete", ready=range(6)), 3, 3)
    assert last.indexes == (3, 4, 5) and last.final
    assert batch(stream(status="complete", ready=range(6)), 6, 3).final


def test_a_failed_stream_hands_out_every_part_before_the_failure_then_final():
    found = stream(status="failed", ready=[0, 1, 3, 4, 5], failed_index=2)
    result = batch(found, 0, 5)
    assert result.indexes == (0, 1)
    assert result.final and result.status == "failed"


def test_a_failed_stream_waits_for_parts_before_the_failure():
    found = stream(status="failed", ready=[0, 2, 4], failed_index=3)
    assert batch(found, 0).indexes == (0,)
    assert not batch(found, 0).final  # part 1 may still come


def test_a_failed_stream_stops_at_the_failure_even_if_that_part_turns_up_later():
    # A twin run may mark the failed part ready after the failure was recorded: the stream still ends there.
    found = stream(status="failed", ready=[0, 1, 2, 3, 4, 5], failed_index=2)
    result = batch(found, 0)
    assert result.indexes == (0, 1) and result.next_index == 2 and result.final


def test_a_stream_that_failed_before_it_was_planned_is_final_with_nothing_to_play():
    found = Manifest(stream_id="s1", status="failed", error="the chatbot did not answer", created_ms=NOW)
    result = batch(found)
    assert result.indexes == () and result.final
    assert result.status == "failed" and result.error == "the chatbot did not answer"


def test_a_cancelled_stream_plays_nothing_more_however_much_is_ready():
    result = batch(stream(status="cancelled", ready=range(6)), 2)
    assert result == Batch("s1", "cancelled", (), 2, True, "")


def test_a_stream_that_never_moves_ends_as_failed_after_the_timeout():
    found = stream(status="streaming", ready=[0], created_ms=NOW - TIMEOUT - 1)
    result = batch(found, 1)
    assert result.final and result.status == "failed"
    assert "timed out waiting for part 1" in result.error
    # Not a moment before: at the timeout itself the flow still waits.
    on_time = batch(stream(status="streaming", ready=[0], created_ms=NOW - TIMEOUT), 1)
    assert not on_time.final and on_time.status == "streaming"


def test_a_starting_stream_has_no_parts_and_is_not_final():
    found = Manifest(stream_id="s1", status="starting", created_ms=NOW)
    result = batch(found)
    assert result.indexes == () and not result.final


def test_next_index_past_the_end_is_an_error():
    with pytest.raises(InvalidInput, match="NextIndex 9 is past the end"):
        batch(stream(status="complete", ready=range(6)), 9)


@pytest.mark.parametrize("raw, expected", [("1", 1), ("5", 5), (" 3 ", 3), ("10", 10), ("11", 10), ("999999", 10)])
def test_batch_size_is_clamped_to_what_a_reply_carries(raw, expected):
    # Ten: the README says BatchSize is clamped to 10 (Part0Url..Part9Url at most).
    assert MAX_BATCH_SIZE == 10
    assert clamp_batch_size(raw) == expected


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "", "1.5", None, True, "1e3", "9999999"])
def test_bad_batch_sizes_are_rejected_with_the_parameter_named(raw):
    with pytest.raises(InvalidInput, match="BatchSize"):
        clamp_batch_size(raw)


@pytest.mark.parametrize("raw, said", [(True, "got bool"), (1.0, "got float"), ([1], "got list"), (None, "got NoneType")])
def test_a_batch_size_that_is_not_a_string_says_what_it_was(raw, said):
    with pytest.raises(InvalidInput, match=f"BatchSize must be a whole number given as a string, {said}"):
        clamp_batch_size(raw)


@pytest.mark.parametrize("raw", ["-1", "x", "1000000", "", None, [], "٣"])
def test_bad_next_index_is_rejected(raw):
    with pytest.raises(InvalidInput, match="NextIndex"):
        parse_index(raw, "NextIndex")
