"""Fifty callers in progress at once on the shared local cloud: each hears exactly their own answer, in order, to
its end. `make load` runs more of them (tests/bench/load.py)."""

from tests.bench.load import describe, run_load

CALLS = 50


def test_fifty_calls_at_once_each_hear_their_own_answer_in_order(cloud):
    # Given 50 callers arriving over 25 s, each listening in real time to a ~30 s answer of their own (at ~25 s,
    # the first answers could end before the last caller came)
    figures = run_load(cloud, CALLS, rate=2, speed=1)
    print("\n" + describe(figures))

    # Then all of them are on the line together, and every one heard their own answer, in order, to its end
    assert figures["most_at_once"] == CALLS
    assert figures["failures"] == 0, figures["problems"]
    assert figures["parts"] >= 2 * CALLS
