"""Metrics a caller's experience maps to: emitted by the handlers as EMF, and the same names on the template's
dashboard and alarms, so nothing on the dashboard is a metric nobody sends."""

import json
import re
import time
import uuid
from pathlib import Path

from localcloud import runs
from localcloud import template as cfn
from tts_stream import config, manifest

ROOT = Path(__file__).resolve().parents[2]
CALLER_METRICS = {"TimeToFirstPart", "PartsSynthesized", "EngineLatency", "BatchesServed", "Finals",
                  "StreamsCompleted", "PartsServed"}


def emf_blobs(output: str):
    """The EMF blobs Powertools printed (threads may share a line)."""
    decoder, position = json.JSONDecoder(), 0
    while (start := output.find('{"_aws"', position)) != -1:
        blob, position = decoder.raw_decode(output, start)
        yield blob


def emitted_metrics(output: str) -> dict[str, set[str]]:
    """Metric names per namespace in the EMF blobs Powertools printed."""
    found: dict[str, set[str]] = {}
    for blob in emf_blobs(output):
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            assert ["service"] in directive["Dimensions"] and blob["service"] == "connect-tts-stream"
            found.setdefault(directive["Namespace"], set()).update(m["Name"] for m in directive["Metrics"])
    return found


def template_metrics() -> set[str]:
    """Our own metrics that the dashboard shows or an alarm watches."""
    loaded = cfn.load(ROOT / "template.yaml")
    for logical_id in loaded.body["Resources"]:
        loaded.physical[logical_id] = {"Ref": logical_id, "Arn": f"arn:aws:x:us-east-1:123456789012:{logical_id}"}
    names = set()
    body = json.loads(loaded.resolve(loaded.body["Resources"]["Dashboard"]["Properties"]["DashboardBody"]))
    for widget in body["widgets"]:
        namespace = metric = None
        for row in widget["properties"]["metrics"]:  # "." repeats the value of the row above
            namespace = namespace if row[0] == "." else row[0]
            metric = metric if row[1] == "." or isinstance(row[1], dict) else row[1]
            if namespace == "ConnectTtsStream":
                names.add(metric)
    for resource in loaded.resources("AWS::CloudWatch::Alarm").values():
        if resource["Properties"].get("Namespace") == "ConnectTtsStream":
            names.add(resource["Properties"]["MetricName"])
    return names


def test_a_call_emits_the_metrics_a_callers_experience_maps_to(cloud, capfd):
    result = runs.run_call(cloud, "Metrics are emitted as structured logs. Every call counts.", speed=50)
    assert result["final"]
    emitted = emitted_metrics(capfd.readouterr().out)
    assert CALLER_METRICS <= emitted["ConnectTtsStream"]


def test_a_stream_is_counted_as_planned_once(cloud, capfd, setting):
    # When ConnectFunction plans an answer of several parts, none cached, and its workflow's Plan finds it planned
    setting("CHUNK_TARGET_CHARS", 30)
    tag = uuid.uuid4().hex[:6]
    capfd.readouterr()
    result = runs.run_call(cloud, f"Plan {tag} once. Count {tag} once. Then {tag} stop.", speed=50)
    assert result["final"] and result["aws_calls"]["stepfunctions.StartExecution"] == 1

    # Then StreamsPlanned says one stream, not one per function that saw its plan
    values = [blob["StreamsPlanned"] for blob in emf_blobs(capfd.readouterr().out) if "StreamsPlanned" in blob]
    assert sum(sum(v) if isinstance(v, list) else v for v in values) == 1


def test_a_repeated_answer_from_the_prompt_cache_counts_its_first_part_as_ready_at_once(cloud, capfd):
    text = f"Cached {uuid.uuid4().hex[:6]} answers start at once. They are counted too."
    assert runs.run_call(cloud, text, speed=50)["final"]
    capfd.readouterr()

    assert runs.run_call(cloud, text, speed=50)["final"]  # every part from the cache: no engine, no workflow

    values = [blob["TimeToFirstPart"] for blob in emf_blobs(capfd.readouterr().out) if "TimeToFirstPart" in blob]
    flat = [value for each in values for value in (each if isinstance(each, list) else [each])]
    assert flat == [0.0], "a cached first part is a stream whose first part was ready at once"


def test_a_plan_delivered_twice_counts_its_stream_once(cloud, capfd):
    # Given a workflow started directly (no ConnectFunction planned its stream), whose Plan is delivered twice
    # (a Retry after a write that succeeded, or a duplicate start), the first run having spoken part 0 meanwhile
    stream_id = f"plan-twice-{uuid.uuid4().hex[:8]}"
    event = {"stream_id": stream_id, "text": "Plan this once. Then say it all."}
    capfd.readouterr()
    first = cloud.invoke("PlanFunction", event)
    manifest.mark_ready(cloud.client("dynamodb"), cloud.physical("ManifestTable"), stream_id, 0,
                        now_ms=time.time_ns() // 1_000_000, key=config.part_key(stream_id, 0))
    second = cloud.invoke("PlanFunction", event)

    # Then the first delivery planned it, the second found the same plan, and the stream was counted once
    assert (first["planned_here"], second["planned_here"]) == (True, False)
    assert [part["text"] for part in second["parts"]] == [part["text"] for part in first["parts"][1:]]
    blobs = list(emf_blobs(capfd.readouterr().out))
    values = [blob["StreamsPlanned"] for blob in blobs if "StreamsPlanned" in blob]
    assert sum(sum(v) if isinstance(v, list) else v for v in values) == 1
    # and the part 0 the first run spoke is not taken for a cached one (a false 0 ms time to first part)
    assert not [blob for blob in blobs if "TimeToFirstPart" in blob]


def test_failures_emit_the_metrics_the_alarms_watch(cloud, capfd, setting):
    from localcloud import chatbot, faults

    server, bot, url = chatbot.serve()
    setting("CHAT_URL", url)
    bot.faults.append(chatbot.Fault(status=500, delay_s=1.5))  # slow to fail: the flow first gets empty batches
    setting("START_WAIT_MS", 500)
    try:
        with faults.engine_faults(faults.EngineFault("cannot be spoken", permanent=True)):
            runs.run_stream(cloud, "This part cannot be spoken at all.", language="en")
        runs.run_chat_call(cloud, ["When will my order arrive?"], speed=50)
    finally:
        server.shutdown()
    emitted = emitted_metrics(capfd.readouterr().out)["ConnectTtsStream"]
    assert {"PartFailures", "StreamsFailed", "ChatFailures", "ChatLatency", "EmptyBatches"} <= emitted


def test_every_metric_on_the_dashboard_and_alarms_is_one_the_handlers_emit():
    handlers = (ROOT / "functions" / "workflow.py").read_text() + (ROOT / "functions" / "connect.py").read_text()
    # Finish names its outcome's metric through a mapping: StreamsCompleted, StreamsFailed, StreamsCancelled
    emitted = set(re.findall(r'add_metric\("(\w+)"', handlers)) | set(re.findall(r'"(Streams\w+)"', handlers))
    assert template_metrics() <= emitted
    assert {"TimeToFirstPart", "StreamsFailed"} <= template_metrics()
