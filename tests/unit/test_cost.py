"""tools/cost.py: the cost per 1,000 calls adds up from request counts and published prices, and the script
prints its table from a real `localcloud call --json` report."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "cost.py"


@pytest.fixture(scope="module")
def cost():
    spec = importlib.util.spec_from_file_location("cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows_by_component(cost, report, **options):
    options = {"engine": "polly-neural", "lambda_ms": 100, "start_ms": None, "workflow_ms": None, **options}
    rows = cost.call_rows(report, memory_mb=cost.function_memory_mb(), **options)
    return {row.component: row for row in rows}


def test_ten_puts_cost_ten_times_the_published_put_price(cost):
    # Given a call that wrote 10 parts and nothing else
    report = {"aws_calls": {"s3.PutObject": 10}, "parts": [], "lambda_invocations": 0}
    # When it is priced
    put = rows_by_component(cost, report)["S3 PUT (parts written)"]
    # Then 1,000 such calls cost 10,000 PUTs at $0.005 per 1,000
    assert put.quantity == 10
    assert put.usd_per_call * 1000 == pytest.approx(10_000 * 0.005 / 1000)


def test_polly_is_billed_per_character_of_the_parts_and_espeak_costs_nothing(cost):
    report = {"aws_calls": {}, "lambda_invocations": 0,
              "parts": [{"text": "a" * 600, "duration_ms": 1000}, {"text": "b" * 400, "duration_ms": 1000}]}
    neural = rows_by_component(cost, report, engine="polly-neural")["Polly neural"]
    standard = rows_by_component(cost, report, engine="polly-standard")["Polly standard"]
    espeak = rows_by_component(cost, report, engine="espeak")["eSpeak NG (runs inside Synthesize)"]
    assert neural.quantity == 1000 and neural.usd_per_call == pytest.approx(1000 * 16.00 / 1e6)
    assert standard.usd_per_call == pytest.approx(1000 * 4.00 / 1e6)
    assert espeak.usd_per_call == 0


def test_lambda_duration_uses_each_functions_memory_from_the_template(cost):
    memory = cost.function_memory_mb()
    # Given one start_stream of 2 s, one later batch, and a workflow of Plan + 2 Synthesize + Finish
    report = {"aws_calls": {"lambda.Invoke": 4, "s3.PutObject": 2}, "lambda_invocations": 2, "parts": []}
    rows = rows_by_component(cost, report, lambda_ms=100, start_ms=2000)
    expected = (memory["ConnectFunction"] / 1024 * (2.0 + 0.1) + memory["SynthesizeFunction"] / 1024 * 0.1 * 2
                + memory["PlanFunction"] / 1024 * 0.1 * 2)
    assert rows["Lambda requests"].quantity == 6
    assert rows["Lambda duration, arm64"].quantity == pytest.approx(expected)
    assert rows["Lambda duration, arm64"].estimate


def test_manifest_units_grow_with_the_item_size(cost):
    # Given a manifest holding 5,000 bytes of part texts: 2 read units per strongly consistent read, 6 per write
    report = {"aws_calls": {"dynamodb.GetItem": 3, "dynamodb.UpdateItem": 2}, "lambda_invocations": 0,
              "parts": [{"text": "x" * 2500}, {"text": "y" * 2500}]}
    rows = rows_by_component(cost, report)
    assert rows["DynamoDB reads, strongly consistent"].quantity == 3 * 2
    assert rows["DynamoDB writes"].quantity == 2 * 6
    assert rows["DynamoDB writes"].usd_per_call == pytest.approx(12 * 0.625 / 1e6)


def test_the_prompt_cache_is_priced_per_part_looked_up_and_per_entry_written(cost):
    # Given a 5-part answer whose lookup found part 0 cached, so 4 new parts were written and indexed
    report = {"aws_calls": {"dynamodb.BatchGetItem": 1, "dynamodb.BatchWriteItem": 1, "s3.PutObject": 4},
              "lambda_invocations": 0, "parts": [], "total": 5}
    rows = rows_by_component(cost, report)
    # Then every key looked up costs half a read unit (eventually consistent), every entry one write unit
    assert rows["DynamoDB prompt-cache lookups"].quantity == 2.5
    assert rows["DynamoDB prompt-cache entries"].quantity == 4
    assert rows["DynamoDB prompt-cache entries"].usd_per_call == pytest.approx(4 * 0.625 / 1e6)
    # And with the cache off (no lookup, no entry) neither costs anything
    off = rows_by_component(cost, {**report, "aws_calls": {"s3.PutObject": 4}})
    assert off["DynamoDB prompt-cache lookups"].quantity == 0 == off["DynamoDB prompt-cache entries"].quantity


def test_several_reports_are_averaged(cost, tmp_path):
    reports = [{"aws_calls": {"s3.PutObject": n}, "parts": [], "lambda_invocations": 0} for n in (10, 20)]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"results": reports}))
    loaded = cost.load_reports(str(path))
    per_call = [cost.call_rows(r, engine="espeak", lambda_ms=100, start_ms=None, workflow_ms=None,
                               memory_mb=cost.function_memory_mb()) for r in loaded]
    put = {row.component: row for row in cost.average_rows(per_call)}["S3 PUT (parts written)"]
    assert put.quantity == 15


def test_a_file_that_is_not_a_call_report_is_refused_with_what_is_expected(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"hello": 1}')
    result = subprocess.run([sys.executable, str(SCRIPT), str(path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "localcloud call --json" in result.stderr


def test_the_script_prints_a_table_from_a_real_local_call(tmp_path):
    # Given a call through the local cloud, reported as JSON
    call = subprocess.run([sys.executable, "-m", "localcloud", "call", "--text",
                           "Your order shipped today. It should arrive by Friday.", "--speed", "50", "--json",
                           "--out", str(tmp_path / "call.wav")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert call.returncode == 0, call.stderr
    report = tmp_path / "call.json"
    report.write_text(call.stdout)
    # When the cost script reads it
    result = subprocess.run([sys.executable, str(SCRIPT), str(report), "--engine", "polly-neural"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    # Then it prints every component, a non-zero total and the comparison with Connect's voice minutes
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for component in ("Step Functions Express requests", "Lambda requests", "S3 PUT", "S3 GET", "DynamoDB reads",
                      "DynamoDB writes", "Polly neural"):
        assert component in out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert float(total.split("$")[1].replace(",", "")) > 0
    assert "Amazon Connect voice minutes" in out


def test_the_script_prices_the_benchmarks_fan_out_calls(cost, tmp_path):
    results = {"summary": {"on": {
        "en/5/fanout": {"mode": "fanout", "aws_calls": {"s3.PutObject": 10, "stepfunctions.StartExecution": 1},
                        "lambda_invocations_by_connect": 3, "ttfa_ms": 500.0, "last_ready_ms": 900, "chars": 300,
                        "parts_total": 5},
        "en/5/whole": {"mode": "whole", "aws_calls": {"s3.PutObject": 1}, "lambda_invocations_by_connect": 2,
                       "ttfa_ms": 700.0, "last_ready_ms": 600, "chars": 300, "parts_total": 1}}, "off": {}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    reports = cost.load_reports(str(path))
    assert len(reports) == 1 and reports[0]["aws_calls"]["s3.PutObject"] == 10 and reports[0]["chars"] == 300


def test_the_benchmarks_calls_bring_their_parts_so_fetches_and_audio_minutes_count(cost, tmp_path):
    # Given a results file holding each call of the model-on pass with the parts its caller heard
    parts = [{"index": i, "chars": 60, "ready_ms": 300 * (i + 1), "duration_ms": 3000} for i in range(4)]
    call = {"mode": "fanout", "aws_calls": {"s3.PutObject": 4}, "lambda_invocations_by_connect": 2,
            "ttfa_ms": 320.0, "last_ready_ms": 1200, "chars": 240, "parts_total": 4, "parts": parts}
    results = {"summary": {"on": {"en/5/fanout": {k: v for k, v in call.items() if k != "parts"}}},
               "passes": {"on": {"calls": [call, {**call, "mode": "whole"}]}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    # When it is priced
    reports = cost.load_reports(str(path))
    rows = {row.component: row for row in cost.call_rows(reports[0], engine="espeak", lambda_ms=100, start_ms=None,
                                                          workflow_ms=None, memory_mb=cost.function_memory_mb())}
    # Then Connect fetches every part it played, and the call's 12 s of audio count as voice minutes
    assert len(reports) == 1
    assert rows["S3 GET (Connect plays parts)"].quantity == 4
    assert cost.audio_minutes(reports[0]) == pytest.approx(12 / 60)
