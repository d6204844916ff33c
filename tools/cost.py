"""What 1,000 calls cost in AWS charges, worked out from the requests one call makes.

    .venv/bin/python -m localcloud call --text "..." --speed 50 --json > call.json
    .venv/bin/python tools/cost.py call.json [--engine polly-neural|polly-standard|espeak] [--lambda-ms 300]
                                             [--start-ms MS] [--workflow-ms MS] [--calls 1000]

The input is one `localcloud call --json` report, a list of them, or a benchmark results file holding a list of
them under "calls", "results", "runs" or "reports"; several reports are averaged. Request counts come from the
report (`aws_calls`, `lambda_invocations`, the parts played); durations and item sizes are estimates, marked `*`
in the table. Prices are us-east-1 list prices without free tiers or volume discounts (PRICES below).
"""

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from localcloud import template as cfn  # noqa: E402  (the template gives each function's memory size)


@dataclass(frozen=True)
class Price:
    usd: float  # per one unit
    unit: str
    source: str


# us-east-1 list prices in USD, as published; "read" is the date the figure was checked through a copy of the page.
PRICES = {
    "sfn_request": Price(1.00 / 1e6, "Step Functions Express request",
                         "aws.amazon.com/step-functions/pricing: $1.00 per 1M requests (read 2026-11-24)"),
    "sfn_gb_second": Price(0.06 / 3600, "Step Functions Express GB-second",
                           "aws.amazon.com/step-functions/pricing: $0.06000 per GB-hour, first 1,000 GB-hours; "
                           "billed in 100 ms and 64 MB steps (read 2026-11-24)"),
    "lambda_request": Price(0.20 / 1e6, "Lambda request",
                            "aws.amazon.com/lambda/pricing: $0.20 per 1M requests (read 2026-11-24)"),
    "lambda_gb_second_arm64": Price(0.0000133334, "Lambda GB-second, arm64",
                                    "aws.amazon.com/lambda/pricing: Arm $0.0000133334 per GB-second, first 7.5B "
                                    "GB-seconds/month (as republished 2024; read 2026-11-24)"),
    "s3_put": Price(0.005 / 1000, "S3 Standard PUT request",
                    "aws.amazon.com/s3/pricing: $0.005 per 1,000 PUT, COPY, POST, LIST requests (read 2026-11-24)"),
    "s3_get": Price(0.0004 / 1000, "S3 Standard GET request",
                    "aws.amazon.com/s3/pricing: $0.0004 per 1,000 GET and other requests (read 2026-11-24)"),
    "ddb_read_unit": Price(0.125 / 1e6, "DynamoDB on-demand read request unit",
                           "aws.amazon.com/dynamodb/pricing/on-demand: $0.125 per 1M RRU, since the 2024-11-01 cut "
                           "(read 2026-11-24)"),
    "ddb_write_unit": Price(0.625 / 1e6, "DynamoDB on-demand write request unit",
                            "aws.amazon.com/dynamodb/pricing/on-demand: $0.625 per 1M WRU, since the 2024-11-01 cut "
                            "(read 2026-11-24)"),
    "polly_standard_char": Price(4.00 / 1e6, "Polly standard character",
                                 "aws.amazon.com/polly/pricing: $4.00 per 1M characters (page read 2026-10-07)"),
    "polly_neural_char": Price(16.00 / 1e6, "Polly neural character",
                               "aws.amazon.com/polly/pricing: $16.00 per 1M characters (page read 2026-10-07)"),
    "connect_voice_minute": Price(0.038, "Amazon Connect voice minute",
                                  "aws.amazon.com/connect/pricing: $0.038 per voice minute, telephony extra "
                                  "(page read 2026-10-07); no separate text-to-speech price is listed (UNCONFIRMED "
                                  "that Connect's own TTS is included)"),
}

ENGINES = {"polly-neural": "polly_neural_char", "polly-standard": "polly_standard_char", "espeak": None}
# Express workflows are billed in 64 MB steps; ours (small definition, small payloads) stays in the first.
WORKFLOW_BILLED_MB = 64
# Manifest item size: fixed attributes (id, status, hash, voice, times) plus each part's text and ready mark.
MANIFEST_FIXED_BYTES = 300
MANIFEST_BYTES_PER_PART = 20


@dataclass(frozen=True)
class Row:
    component: str
    quantity: float  # per call
    unit: str
    usd_per_call: float
    estimate: bool = False


def _bench_reports(results: dict) -> list[dict]:
    """The fan-out calls of a `make bench` results file (latency model on), as call reports: every call with the
    parts it played (so Connect's fetches and the audio minutes count), else the summary's median calls."""
    runs = results.get("passes", {}).get("on", {}).get("calls") or list(results["summary"]["on"].values())
    return [{"aws_calls": run["aws_calls"], "lambda_invocations": run["lambda_invocations_by_connect"],
             "ttfa_ms": run["ttfa_ms"], "parts": run.get("parts") or [{"ready_ms": run["last_ready_ms"]}],
             "chars": run["chars"], "total": run["parts_total"]}
            for run in runs if run.get("mode") == "fanout" and run.get("aws_calls")]


def load_reports(path: str) -> list[dict]:
    """One call report, a list of them, a results file with a list under calls/results/runs/reports, or the
    benchmark's out/bench/results.json (its fan-out calls)."""
    data = json.loads(sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and isinstance(data.get("summary"), dict) and "on" in data["summary"]:
        data = _bench_reports(data)
    if isinstance(data, dict) and "aws_calls" not in data:
        data = next((data[k] for k in ("calls", "results", "runs", "reports") if isinstance(data.get(k), list)), None)
    reports = [data] if isinstance(data, dict) else data
    if not reports or not all(isinstance(r, dict) and "aws_calls" in r for r in reports):
        raise ValueError(f"{path}: expected `localcloud call --json` reports (objects with aws_calls), "
                         "alone, in a list, or under calls/results/runs/reports")
    return reports


def function_memory_mb(template_path: Path = ROOT / "template.yaml") -> dict[str, int]:
    loaded = cfn.load(template_path)
    return {name: int(loaded.function_properties(name)["MemorySize"])
            for name in loaded.resources("AWS::Serverless::Function")}


def _gb_seconds(memory_mb: int, ms: float) -> float:
    return memory_mb / 1024 * ms / 1000


def call_rows(report: dict, *, engine: str, lambda_ms: float, start_ms: float | None, workflow_ms: float | None,
              memory_mb: dict[str, int]) -> list[Row]:
    """The cost of one call, component by component."""
    calls = report.get("aws_calls", {})
    parts = report.get("parts", [])
    texts = [p.get("text", "") for p in parts]

    executions = calls.get("stepfunctions.StartExecution", 0)
    ready = [p["ready_ms"] for p in parts if isinstance(p.get("ready_ms"), (int, float))]
    run_ms = workflow_ms if workflow_ms is not None else (max(ready) if ready else 2000)
    billed_run_ms = math.ceil(max(run_ms, 1) / 100) * 100

    # Connect invokes ConnectFunction; the workflow invokes Plan, one Synthesize per part written, and Finish.
    connect_invocations = report.get("lambda_invocations", 0)
    synthesize_invocations = calls.get("s3.PutObject", 0)
    other_invocations = max(calls.get("lambda.Invoke", 0) - synthesize_invocations, 0)
    first_ms = start_ms if start_ms is not None else report.get("ttfa_ms", lambda_ms)
    gb_s = (_gb_seconds(memory_mb["ConnectFunction"], first_ms) * min(connect_invocations, 1)
            + _gb_seconds(memory_mb["ConnectFunction"], lambda_ms) * max(connect_invocations - 1, 0)
            + _gb_seconds(memory_mb["SynthesizeFunction"], lambda_ms) * synthesize_invocations
            + _gb_seconds(memory_mb["PlanFunction"], lambda_ms) * other_invocations)
    invocations = connect_invocations + synthesize_invocations + other_invocations

    # On-demand units follow the whole item's size (texts included), whatever the projection: an upper bound.
    text_bytes = sum(len(t.encode()) for t in texts) or report.get("chars", 0) * 2  # the benchmark gives only a length
    item_bytes = MANIFEST_FIXED_BYTES + text_bytes + MANIFEST_BYTES_PER_PART * (report.get("total") or len(parts))
    read_units = calls.get("dynamodb.GetItem", 0) * math.ceil(item_bytes / 4096)  # strongly consistent
    write_units = calls.get("dynamodb.UpdateItem", 0) * math.ceil(item_bytes / 1024)
    # The prompt cache: one lookup of every part's key (eventually consistent; each key, found or not, costs half a
    # read unit, its item being far under 4 KB), and one entry (under 1 KB: one write unit) per new part written.
    cache_read_units = 0.5 * (report.get("total") or len(parts)) if calls.get("dynamodb.BatchGetItem") else 0.0
    cache_write_units = synthesize_invocations if calls.get("dynamodb.BatchWriteItem") else 0
    gets = len(parts) + calls.get("s3.GetObject", 0)  # Connect reads each part it plays once
    characters = sum(len(t) for t in texts) or report.get("chars", 0)

    p = {k: v.usd for k, v in PRICES.items()}
    rows = [
        Row("Step Functions Express requests", executions, "requests", executions * p["sfn_request"]),
        Row("Step Functions Express duration", executions * billed_run_ms / 1000, f"s x {WORKFLOW_BILLED_MB} MB",
            executions * _gb_seconds(WORKFLOW_BILLED_MB, billed_run_ms) * p["sfn_gb_second"], estimate=True),
        Row("Lambda requests", invocations, "requests", invocations * p["lambda_request"]),
        Row("Lambda duration, arm64", gb_s, "GB-s", gb_s * p["lambda_gb_second_arm64"], estimate=True),
        Row("S3 PUT (parts written)", synthesize_invocations, "requests", synthesize_invocations * p["s3_put"]),
        Row("S3 GET (Connect plays parts)", gets, "requests", gets * p["s3_get"]),
        Row("DynamoDB reads, strongly consistent", read_units, "RRU", read_units * p["ddb_read_unit"], estimate=True),
        Row("DynamoDB writes", write_units, "WRU", write_units * p["ddb_write_unit"], estimate=True),
        Row("DynamoDB prompt-cache lookups", cache_read_units, "RRU", cache_read_units * p["ddb_read_unit"],
            estimate=True),
        Row("DynamoDB prompt-cache entries", cache_write_units, "WRU", cache_write_units * p["ddb_write_unit"],
            estimate=True),
    ]
    if ENGINES[engine]:
        rows.append(Row(f"Polly {engine.split('-')[1]}", characters, "characters",
                        characters * p[ENGINES[engine]]))
    else:
        rows.append(Row("eSpeak NG (runs inside Synthesize)", characters, "characters", 0.0))
    return rows


def average_rows(per_call: list[list[Row]]) -> list[Row]:
    n = len(per_call)
    return [Row(rows[0].component, sum(r.quantity for r in rows) / n, rows[0].unit,
                sum(r.usd_per_call for r in rows) / n, rows[0].estimate)
            for rows in zip(*per_call)]


def audio_minutes(report: dict) -> float:
    return sum(p.get("duration_ms", 0) for p in report.get("parts", [])) / 60000


def _usd(value: float) -> str:
    return f"${value:,.4f}" if value < 10 else f"${value:,.2f}"


def render(rows: list[Row], reports: list[dict], *, engine: str, calls: int, lambda_ms: float) -> str:
    n = len(reports)
    parts = sum(r.get("total") or len(r.get("parts", [])) for r in reports) / n
    characters = sum(sum(len(p.get("text", "")) for p in r.get("parts", [])) or r.get("chars", 0) for r in reports) / n
    minutes = sum(audio_minutes(r) for r in reports) / n
    total = sum(r.usd_per_call for r in rows) * calls
    voice = minutes * PRICES["connect_voice_minute"].usd * calls

    width = max(len(r.component) for r in rows) + 2
    label = f"per {calls:,} calls"
    cost_width = max(16, len(label))
    lines = [f"connect-tts-stream: AWS cost per {calls:,} calls (us-east-1 list prices, no free tier), engine {engine}",
             f"from {n} call report(s): per call {parts:.1f} parts, {characters:.0f} characters, "
             f"{minutes * 60:.1f} s of audio",
             "",
             f"{'component':<{width}}{'per call':>24}  {label:>{cost_width}}"]
    for r in rows:
        quantity = f"{r.quantity:,.3f}" if r.quantity != int(r.quantity) else f"{int(r.quantity):,}"
        unit = r.unit[:-1] if r.quantity == 1 and r.unit.endswith("s") else r.unit
        mark = " *" if r.estimate else ""
        lines.append(f"{r.component + mark:<{width}}{quantity + ' ' + unit:>24}  "
                     f"{_usd(r.usd_per_call * calls):>{cost_width}}")
    lines += [f"{'total':<{width}}{'':>24}  {_usd(total):>{cost_width}}",
              "",
              f"* estimates: Lambda runs {lambda_ms:g} ms per invocation (--lambda-ms) at each function's MemorySize "
              "in template.yaml, but start_stream runs",
              "  for the report's ttfa_ms (--start-ms: it waits for part 0); the workflow runs until the last part is "
              "ready (--workflow-ms), in 64 MB;",
              "  every manifest read and write is billed at the full item size, texts included (an upper bound);",
              "  the prompt-cache lookup costs half a read unit per part, and its entries a write unit per new part.",
              "Not included: CloudWatch Logs and metrics, X-Ray traces, data transfer, S3 storage (8 kB per second "
              "of audio, kept PartRetentionDays).",
              "",
              f"Amazon Connect voice minutes for this audio: {minutes:.2f} min x ${PRICES['connect_voice_minute'].usd} "
              f"= {_usd(voice)} per {calls:,} calls, paid with any text-to-speech.",
              "Connect's own text-to-speech (Play prompt with text) has no separate price on Connect's pricing page "
              "(UNCONFIRMED that it is included);",
              f"  against it, this pipeline adds {_usd(total)} per {calls:,} calls"
              + (f", {total / voice:.0%} on top of the voice minutes." if voice else ".")]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tools/cost.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", nargs="?",
                        help="JSON file from `localcloud call --json` (or a list of them), - for stdin")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="polly-neural",
                        help="speech engine to price (default polly-neural)")
    parser.add_argument("--lambda-ms", type=float, default=300.0,
                        help="assumed billed duration of each Lambda invocation, ms (default 300)")
    parser.add_argument("--start-ms", type=float, default=None,
                        help="duration of the start_stream invocation, ms (default: the report's ttfa_ms)")
    parser.add_argument("--workflow-ms", type=float, default=None,
                        help="duration of one workflow execution, ms (default: when the last part was ready)")
    parser.add_argument("--calls", type=int, default=1000, help="number of calls to price (default 1000)")
    parser.add_argument("--sources", action="store_true", help="print each price with its source and exit")
    args = parser.parse_args(argv)

    if args.sources:
        for key, price in PRICES.items():
            print(f"{key:<24} ${price.usd:.10g} per {price.unit}\n{'':<24} {price.source}")
        return 0
    if args.report is None:
        parser.error("give a report file (or --sources)")
    try:
        reports = load_reports(args.report)
    except (OSError, ValueError) as error:
        print(f"tools/cost.py: {error}", file=sys.stderr)
        return 2
    memory = function_memory_mb()
    per_call = [call_rows(r, engine=args.engine, lambda_ms=args.lambda_ms, start_ms=args.start_ms,
                          workflow_ms=args.workflow_ms, memory_mb=memory) for r in reports]
    print(render(average_rows(per_call), reports, engine=args.engine, calls=args.calls, lambda_ms=args.lambda_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
