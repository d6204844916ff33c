"""Every sample event in events/ runs against the function it is for, as `localcloud invoke` (or `sam local
invoke`) would run it, and gets the answer its name promises."""

import json
from pathlib import Path

import pytest

from localcloud import runs
from tts_stream import manifest

EVENTS = Path(__file__).resolve().parents[2] / "events"


def load(name):
    return json.loads((EVENTS / name).read_text())


def test_every_event_file_is_covered_here():
    covered = {"connect-start-stream.json", "connect-get-next-batch.json", "connect-bad-request.json",
               "connect-chat-and-stream.json", "connect-stop.json", "workflow-start.json",
               "workflow-chat-turn.json", "synthesize-part.json", "lex-fallback-intent.json"}
    assert {p.name for p in EVENTS.glob("*.json")} == covered


def test_start_then_next_batch_then_stop_events_serve_one_stream(cloud):
    started = cloud.invoke("ConnectFunction", load("connect-start-stream.json"))
    assert started["StreamId"] == "demo-order-status" and started["Count"] != "0"
    runs.wait_for_executions(cloud)
    batch = cloud.invoke("ConnectFunction", load("connect-get-next-batch.json"))
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), "demo-order-status")
    assert batch["Status"] == "complete" and batch["Part0Url"].endswith("/" + found.key_of(0))


def test_the_bad_request_event_gets_a_clear_error(cloud):
    reply = cloud.invoke("ConnectFunction", load("connect-bad-request.json"))
    assert reply["Status"] == "error" and "is not valid" in reply["Error"] and reply["Final"] == "true"


def test_chat_and_stop_events_start_and_cancel_a_turn(cloud, setting):
    from localcloud import chatbot

    server, bot, url = chatbot.serve()
    bot.faults.append(chatbot.Fault(delay_s=4.0))  # still thinking when the caller presses a key
    setting("CHAT_URL", url)
    setting("START_WAIT_MS", 500)
    try:
        started = cloud.invoke("ConnectFunction", load("connect-chat-and-stream.json"))
        assert started["Turn"] == "1" and started["Status"] == "streaming" and started["Count"] == "0"
        stop = load("connect-stop.json")
        stop["Details"]["Parameters"]["StreamId"] = started["StreamId"]
        stopped = cloud.invoke("ConnectFunction", stop)
        assert stopped["Final"] == "true" and stopped["Status"] == "cancelled"
        runs.wait_for_executions(cloud)
    finally:
        server.shutdown()


@pytest.mark.parametrize("name", ["workflow-start.json", "workflow-chat-turn.json"])
def test_workflow_events_run_the_state_machine(cloud, name, setting):
    from localcloud import chatbot

    server, _, url = chatbot.serve()
    setting("CHAT_URL", url)
    payload = load(name)
    payload["stream_id"] = f"event-{name.split('.')[0]}-{len(name)}x"
    try:
        execution = cloud.wait_execution(cloud.start_execution("SynthesisStateMachine", payload))
    finally:
        server.shutdown()
    assert execution["status"] == "SUCCEEDED", execution.get("cause")


def test_the_synthesize_event_speaks_one_part(cloud):
    part = load("synthesize-part.json")
    cloud.invoke("PlanFunction", {"stream_id": part["stream_id"] + "-syn", "text": part["text"]})
    part["stream_id"] += "-syn"
    result = cloud.invoke("SynthesizeFunction", part)
    assert result["index"] == 0 and result["bytes"] > 1000


def test_the_lex_event_hands_the_transcript_over(cloud):
    reply = cloud.invoke("LexHookFunction", load("lex-fallback-intent.json"))
    assert reply["sessionState"]["sessionAttributes"]["Question"] == "when will my order arrive"
