"""Many callers at once on one local cloud: does every caller hear exactly their own answer, in order?

    .venv/bin/python tests/bench/load.py --calls 200 [--rate 1.5] [--speed 1] [--json]
    .venv/bin/python tests/bench/load.py --calls 50 --rate 0 --speed 50      # all in the same instant

Starts localcloud (template.yaml on moto, the real workflow, eSpeak) and runs CALLS simulated phone calls through
the template's contact flow, each with its own contact id and its own answer, arriving RATE calls per second
(0: all at once). At speed 1 a call lasts as long as its audio (~30 s), so calls overlap: `most_at_once` says how
many were in progress together. Prints calls, parts heard, failures (apologies, and any call that heard a part
that was not its own, out of order or twice: `wrong_audio`), time to first audio (p50, p95, max), and exits 1 on
any failure.

The local cloud is one Python process (moto's server accepts on one thread, everything shares one GIL, and each
part's encoding to 8 kHz, the largest user of it, holds it): on a 2-core machine it sustains about 1.5 new calls per
second at real-time speed (200 calls: 0 failures, first audio p95 264 ms). At 2 per second arrivals queue up there,
not in AWS, and show up as late first audio and then as apologies when a Lambda passes Connect's 8-second limit
(200 calls: 48 apologies, none heard another caller's audio). `make test`'s 50 calls arrive at 2 per second for
25 s, a burst it absorbs (first audio p95 0.9 s), so that all 50 are on the line at once.
"""

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "functions"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from localcloud import runs  # noqa: E402
from tests.reliability.checks import APOLOGY_END, caller_heard, store_is_sound  # noqa: E402

SUBJECTS = ("order", "parcel", "refund", "ticket", "booking", "invoice", "claim", "repair")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")


def answer(number: int) -> str:
    """A different answer per caller, about 30 seconds long (its number in every sentence: no two calls share a
    part, so the prompt cache cannot stand in for one)."""
    subject, day = SUBJECTS[number % len(SUBJECTS)], DAYS[number % len(DAYS)]
    return (f"Your {subject} {number} is confirmed. It was updated on {day} for caller {number}, and nothing else "
            f"is needed from you for {subject} {number} right now. We will call back about {subject} {number} "
            f"within one working day, from the number you called today. If you need to change {subject} {number}, "
            f"say change at any time, or press one. We keep the notes on {subject} {number} for one year. "
            f"Thank you for calling about {subject} {number}, and goodbye.")


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most calls in progress at one moment (from the first Lambda call to the end of the last part)."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


@contextlib.contextmanager
def _one_wait_at_the_end(cloud):
    """run_call waits for every running execution when its call ends; with many calls at once that is every call
    polling every execution, which loads the local cloud more than the calls do. Wait once, after all of them."""
    wait = runs.wait_for_executions
    runs.wait_for_executions = lambda cloud, timeout_s=120: None
    try:
        yield
    finally:
        runs.wait_for_executions = wait
    wait(cloud)


def run_load(cloud, calls: int, *, rate: float = 1.5, speed: float = 1.0, first_number: int | None = None) -> dict:
    """Run `calls` calls arriving `rate` per second (0: all at once); return the figures and why each failure failed."""
    base = first_number if first_number is not None else 1000 + time.time_ns() % 8000  # short numbers, short audio
    texts = [answer(base + i) for i in range(calls)]
    results: list[dict | None] = [None] * calls
    problems: dict[int, str] = {}
    wrong_audio: set[int] = set()
    spans: list[tuple[float, float]] = []
    gate = threading.Barrier(calls)

    def one(i: int):
        try:
            gate.wait()
            time.sleep(i / rate if rate > 0 else 0)
            began = time.monotonic()
            result = results[i] = runs.run_call(cloud, texts[i], speed=speed)
            last = result["parts"][-1] if result["parts"] else {"played_ms": 0, "duration_ms": 0}
            spans.append((began, began + (last["played_ms"] + last["duration_ms"] / speed) / 1000))
            apology = result["ended_by"] == APOLOGY_END
            caller_heard(cloud, texts[i], result, expect="apology" if apology else "complete")
            if apology:
                problems[i] = f"call {i}: apology after {len(result['parts'])} parts: {'; '.join(result['errors'])}"
        except AssertionError as error:
            wrong_audio.add(i)
            problems[i] = f"call {i}: heard something else than its own answer in order: {error}"[:500]
        except Exception as error:  # noqa: BLE001 - every failure is counted and explained, not raised
            problems[i] = f"call {i}: {type(error).__name__}: {error}"[:500]

    started = time.monotonic()
    with _one_wait_at_the_end(cloud):
        threads = [threading.Thread(target=one, args=(i,), name=f"caller-{i}") for i in range(calls)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    elapsed = time.monotonic() - started
    for i, result in enumerate(results):  # once every workflow has ended: nothing half-written anywhere
        if result is not None and result["stream_id"] and i not in problems:
            try:
                store_is_sound(cloud, result["stream_id"])
            except AssertionError as error:
                problems[i] = f"call {i}: the store of stream {result['stream_id']} is not sound: {error}"[:500]
    ttfa = [r["ttfa_ms"] for r in results if r and r["ttfa_ms"] is not None]
    return {
        "calls": calls,
        "rate_per_s": rate,
        "speed": speed,
        "most_at_once": most_at_once(spans),
        "parts": sum(len(r["parts"]) for r in results if r),
        "failures": len(problems),
        "wrong_audio": len(wrong_audio),
        "ttfa_p50_ms": percentile(ttfa, 0.50),
        "ttfa_p95_ms": percentile(ttfa, 0.95),
        "ttfa_max_ms": max(ttfa) if ttfa else None,
        "lambda_invocations": sum(r["lambda_invocations"] for r in results if r),
        "elapsed_s": round(elapsed, 1),
        "problems": [problems[i] for i in sorted(problems)],
    }


def describe(figures: dict) -> str:
    arrivals = f"{figures['rate_per_s']} per second" if figures["rate_per_s"] > 0 else "all at once"
    lines = [f"{figures['calls']} calls arriving {arrivals} at speed {figures['speed']}, "
             f"{figures['most_at_once']} in progress at once at most, in {figures['elapsed_s']} s",
             f"{figures['parts']} parts heard, {figures['failures']} failures "
             f"({figures['wrong_audio']} heard something else than their own answer in order)",
             f"time to first audio: p50 {figures['ttfa_p50_ms']} ms, p95 {figures['ttfa_p95_ms']} ms, "
             f"max {figures['ttfa_max_ms']} ms; {figures['lambda_invocations']} ConnectFunction invocations"]
    lines += [f"  {problem}" for problem in figures["problems"][:20]]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="number of calls (default 200)")
    parser.add_argument("--rate", type=float, default=1.5,
                        help="calls arriving per second; 0: all at once (default 1.5)")
    parser.add_argument("--speed", type=float, default=1.0, help="playback speed-up; 1 is real time (default 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.speed <= 0 or args.rate < 0:
        parser.error("--calls must be at least 1, --speed more than 0 and --rate 0 or more")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    from localcloud.cloud import LocalCloud

    with contextlib.redirect_stdout(sys.stderr), LocalCloud() as cloud:
        figures = run_load(cloud, args.calls, rate=args.rate, speed=args.speed)
    print(json.dumps(figures, indent=2) if args.json else describe(figures))
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
