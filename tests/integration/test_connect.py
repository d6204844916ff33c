"""ConnectFunction, invoked through the local Lambda API as Connect would: ordered batches, the final sentinel,
retries, budgets and bad requests. Streams are set up in the real manifest table, parts made ready in the
order a test needs."""

import fnmatch
import json
import threading
import time
import uuid
from pathlib import Path
from urllib.request import urlopen

import pytest

from localcloud import faults, runs
from tts_stream import audio, manifest, pipeline, streams
from tts_stream.batches import MAX_BATCH_SIZE
from tts_stream.config import load as load_settings

ROOT = Path(__file__).resolve().parents[2]
CONTACT = "4a573372-1f28-4e26-b97b-7c2b0a8cd5e1"


def event(contact_id=CONTACT, **params):
    return {"Name": "ContactFlowEvent", "Details": {
        "ContactData": {"Attributes": {}, "Channel": "VOICE", "ContactId": contact_id,
                        "InstanceARN": "arn:aws:connect:us-east-1:123456789012:instance/abc"},
        "Parameters": {k: str(v) for k, v in params.items()}}}


def next_batch(cloud, stream_id, next_index, size=5):
    return cloud.invoke("ConnectFunction", event(Action="get_next_batch", StreamId=stream_id,
                                                 NextIndex=next_index, BatchSize=size))


def urls(reply):
    return [reply[f"Part{i}Url"] for i in range(int(reply["Count"]))]


def index_of(url):
    return int(url.rsplit("part", 1)[1].split(".wav")[0])


@pytest.fixture
def make_stream(cloud):
    """A planned stream of `total` parts in the real manifest table, without synthesis: tests mark parts
    ready (or failed) themselves, in any order."""
    ddb, table = cloud.client("dynamodb"), cloud.physical("ManifestTable")

    def make(stream_id, total):
        manifest.plan(ddb, table, stream_id, "hash", texts=[f"Sentence {i}. " for i in range(total)],
                      engine="espeak", voice="en-us", language="en", now_ms=time.time_ns() // 1_000_000,
                      ttl_hours=1)
        return Stream(ddb, table, stream_id)

    return make


class Stream:
    def __init__(self, ddb, table, stream_id):
        self.ddb, self.table, self.stream_id = ddb, table, stream_id

    def ready(self, *indexes):
        for i in indexes:
            manifest.mark_ready(self.ddb, self.table, self.stream_id, i, now_ms=time.time_ns() // 1_000_000)
        return self

    def fail(self, index):
        manifest.mark_part_failed(self.ddb, self.table, self.stream_id, index, "the engine rejected it")
        return self

    def finish(self):
        manifest.finish(self.ddb, self.table, self.stream_id)
        return self


@pytest.fixture(autouse=True)
def short_waits(setting):
    """Keep waits short where a test expects nothing to become ready."""
    setting("BATCH_WAIT_MS", 300)


def test_start_stream_hands_back_part_0_in_the_first_batch(cloud):
    contact = str(uuid.uuid4())
    reply = cloud.invoke("ConnectFunction", event(contact, Action="start_stream", BatchSize=5,
                                                  Text="Hello and welcome. Your balance is 42 dollars."))
    assert reply["Status"] in ("streaming", "complete")
    assert reply["StreamId"].startswith(contact)
    assert int(reply["Count"]) >= 1
    # A new part is written once, to the prompt cache's content-addressed key (the cache is on by default)
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), reply["StreamId"])
    assert found.key_of(0).startswith("cache/") and reply["Part0Url"].endswith("/" + found.key_of(0))
    assert reply["NextIndex"] == reply["Count"]
    assert set(reply) == {"StreamId", "Status", "Count", "NextIndex", "Final", "Error",
                          *(f"Part{i}Url" for i in range(5))}
    assert all(isinstance(v, str) for v in reply.values())


def test_a_retried_start_stream_is_the_same_stream_and_starts_one_workflow(cloud):
    contact = str(uuid.uuid4())
    start = event(contact, Action="start_stream", BatchSize=5,
                  Text="One answer, started twice by a retry. Its second sentence makes it long enough for more "
                       "than one part, so the workflow has parts to speak. And a third one to be sure of it.")
    before = cloud.aws_calls.snapshot()
    first = cloud.invoke("ConnectFunction", start)
    second = cloud.invoke("ConnectFunction", start)
    assert first["StreamId"] == second["StreamId"]
    assert urls(first) == urls(second)[:len(urls(first))]
    assert (cloud.aws_calls.snapshot() - before)["stepfunctions.StartExecution"] == 1


def test_a_workflow_that_cannot_start_at_all_is_an_error_at_once_not_a_kept_start(cloud, setting):
    # Given a state machine that does not exist (a misconfigured stack): no later request could start it
    setting("STATE_MACHINE_ARN", "arn:aws:states:us-east-1:123456789012:stateMachine:missing")
    stream_id = f"s-{uuid.uuid4()}"
    text = f"Hello and welcome. Your reference is {stream_id[2:10]}. Your balance is 42 dollars."  # not cached
    reply = cloud.invoke("ConnectFunction", event(Action="start_stream", StreamId=stream_id, Text=text))
    # Then the flow is told now (it plays its apology) instead of part 0 and a wait for the stream's timeout
    assert reply["Status"] == "error" and reply["Final"] == "true" and "AWS request failed" in reply["Error"]
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), stream_id)
    assert found is not None and found.kept_starts == 0


def test_a_one_part_answer_is_final_in_the_start_reply_and_needs_no_workflow(cloud):
    before = cloud.aws_calls.snapshot()
    reply = cloud.invoke("ConnectFunction", event(str(uuid.uuid4()), Action="start_stream", BatchSize=5,
                                                  Text="Your balance is 42 dollars."))
    assert (reply["Status"], reply["Count"], reply["Final"]) == ("complete", "1", "true")
    sent = cloud.aws_calls.snapshot() - before
    assert "stepfunctions.StartExecution" not in sent
    assert "dynamodb.GetItem" not in sent  # the reply is built from what this request wrote, not read back
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), reply["StreamId"])
    assert found.status == "complete" and found.total == 1 and reply["Part0Url"].endswith("/" + found.key_of(0))


@pytest.mark.parametrize("asked, pinned", [({"Voice": "en"}, ("en", "en")),
                                           ({"Language": "ko"}, (None, "ko"))])
def test_without_the_inline_first_part_the_workflow_plans_the_voice_and_language_asked(cloud, setting, stream_id,
                                                                                       asked, pinned):
    # InlineFirstPart off (or an engine it does not serve): the workflow plans the stream from what it is handed
    setting("INLINE_FIRST_PART", "false")
    text = f"Your reference is {stream_id[5:13]}. Your new phone shipped today."  # not in the prompt cache
    reply = cloud.invoke("ConnectFunction", event(Action="start_stream", StreamId=stream_id, Text=text, **asked))
    assert reply["Status"] in ("starting", "streaming", "complete"), reply
    runs.wait_for_executions(cloud)
    found = manifest.read(cloud.client("dynamodb"), cloud.physical("ManifestTable"), stream_id)
    assert found.status == "complete"
    voice, language = pinned
    assert found.language == language and found.voice == (voice or load_settings().voice_ko or "ko")


def test_a_batch_is_the_contiguous_ready_prefix_even_when_later_parts_are_ready(cloud, make_stream, stream_id):
    stream = make_stream(stream_id, 6).ready(0, 1, 3, 4)

    first = next_batch(cloud, stream_id, 0)
    assert [index_of(u) for u in urls(first)] == [0, 1]
    assert first["NextIndex"] == "2" and first["Final"] == "false"

    waiting = next_batch(cloud, stream_id, 2)
    assert waiting["Count"] == "0" and waiting["NextIndex"] == "2" and waiting["Final"] == "false"

    stream.ready(2)
    third = next_batch(cloud, stream_id, 2)
    assert [index_of(u) for u in urls(third)] == [2, 3, 4]
    assert third["NextIndex"] == "5"


def test_following_next_index_plays_every_part_once_in_order_and_final_once(cloud, make_stream, stream_id):
    stream = make_stream(stream_id, 7)
    order, played, finals, next_index = [5, 2, 0, 6, 1, 4, 3], [], [], 0
    for ready in order:
        stream.ready(ready)
        if ready == order[-1]:
            stream.finish()
        reply = next_batch(cloud, stream_id, next_index, size=2)
        played += [index_of(u) for u in urls(reply)]
        finals.append(reply["Final"])
        next_index = int(reply["NextIndex"])
    while finals[-1] != "true":
        reply = next_batch(cloud, stream_id, next_index, size=2)
        played += [index_of(u) for u in urls(reply)]
        finals.append(reply["Final"])
        next_index = int(reply["NextIndex"])
    assert played == list(range(7))
    assert finals.count("true") == 1
    assert reply["Status"] == "complete"


def test_the_same_request_gives_the_same_batch(cloud, make_stream, stream_id):
    make_stream(stream_id, 4).ready(0, 1, 2)
    assert next_batch(cloud, stream_id, 1) == next_batch(cloud, stream_id, 1)


def test_final_comes_with_the_batch_that_holds_the_last_part(cloud, make_stream, stream_id):
    make_stream(stream_id, 3).ready(0, 1, 2).finish()
    partial = next_batch(cloud, stream_id, 0, size=2)
    assert partial["Final"] == "false"
    last = next_batch(cloud, stream_id, 2, size=2)
    assert [index_of(u) for u in urls(last)] == [2] and last["Final"] == "true" and last["Status"] == "complete"
    # Connect retrying the last request gets the same answer
    assert next_batch(cloud, stream_id, 2, size=2) == last


def test_a_failed_stream_hands_out_every_part_before_the_failure_then_final(cloud, make_stream, stream_id):
    make_stream(stream_id, 6).ready(0, 1, 3, 4, 5).fail(2).finish()
    reply = next_batch(cloud, stream_id, 0)
    assert [index_of(u) for u in urls(reply)] == [0, 1]
    assert reply["Final"] == "true" and reply["Status"] == "failed"
    assert "rejected" in reply["Error"]


def test_the_batch_size_is_clamped_to_what_the_reply_carries(cloud, make_stream, stream_id):
    make_stream(stream_id, 15).ready(*range(15))
    reply = next_batch(cloud, stream_id, 0, size=50)
    assert reply["Count"] == str(MAX_BATCH_SIZE)
    assert sorted(k for k in reply if k.startswith("Part")) == sorted(f"Part{i}Url" for i in range(MAX_BATCH_SIZE))
    assert [index_of(u) for u in urls(reply)] == list(range(MAX_BATCH_SIZE))


@pytest.mark.parametrize("mode", ["object", "presigned"])
def test_a_ready_batch_costs_one_manifest_read_and_no_s3_request(cloud, make_stream, stream_id, setting, mode):
    setting("PROMPT_URL_MODE", mode)
    make_stream(stream_id, 3).ready(0, 1, 2)
    before = cloud.aws_calls.snapshot()
    next_batch(cloud, stream_id, 0)
    assert dict(cloud.aws_calls.snapshot() - before) == {"dynamodb.GetItem": 1}


def test_object_urls_point_at_the_part_in_the_audio_bucket(cloud, make_stream, stream_id):
    make_stream(stream_id, 1).ready(0)
    url = next_batch(cloud, stream_id, 0)["Part0Url"]
    bucket = cloud.physical("AudioBucket")
    assert url == f"https://{bucket}.s3.us-east-1.amazonaws.com/streams/{stream_id}/part0000.wav"


def test_presigned_urls_fetch_the_part_over_plain_http(cloud, setting):
    setting("PROMPT_URL_MODE", "presigned")
    reply = cloud.invoke("ConnectFunction", event(str(uuid.uuid4()), Action="start_stream", BatchSize=5,
                                                  Text="A presigned part plays too."))
    with urlopen(reply["Part0Url"], timeout=10) as response:
        wav = audio.read_connect_wav(response.read())
    assert wav.sample_rate == 8000 and wav.duration_ms > 300


def test_every_wait_stays_inside_the_budget_and_connects_limit(cloud, make_stream, stream_id):
    # Given a stream whose next part never becomes ready, and a virtual clock
    make_stream(stream_id, 2)
    clock = VirtualClock()
    clients = streams.Clients(ddb=cloud.client("dynamodb"), s3=cloud.client("s3"), sfn=cloud.client("stepfunctions"))
    settings = load_settings()
    # When the Lambda has plenty of time, it waits its configured budget and no longer
    reply = streams.handle(clients, settings, event(Action="get_next_batch", StreamId=stream_id, NextIndex=0,
                                                    BatchSize=5), remaining_ms=8000, clock=clock)
    assert reply["Count"] == "0" and reply["Final"] == "false"
    assert settings.batch_wait_ms <= clock.elapsed_ms <= settings.batch_wait_ms + settings.poll_interval_ms
    # When little time remains, it leaves a margin for the reply
    clock = VirtualClock()
    streams.handle(clients, settings, event(Action="get_next_batch", StreamId=stream_id, NextIndex=0, BatchSize=5),
                   remaining_ms=250, clock=clock)
    assert clock.elapsed_ms == 0


def test_default_waits_fit_connects_8_second_limit():
    from localcloud import template as cfn
    from pathlib import Path

    loaded = cfn.load(Path(__file__).resolve().parents[2] / "template.yaml")
    timeout_s = loaded.body["Resources"]["ConnectFunction"]["Properties"]["Timeout"]
    settings = load_settings({})
    assert timeout_s <= 8
    assert settings.start_wait_ms + 1000 <= timeout_s * 1000
    assert settings.batch_wait_ms + 1000 <= timeout_s * 1000


class VirtualClock:
    def __init__(self):
        self.now = time.time_ns() // 1_000_000
        self.start = self.now

    @property
    def elapsed_ms(self):
        return self.now - self.start

    def now_ms(self):
        return self.now

    def sleep(self, seconds):
        self.now += int(seconds * 1000)


@pytest.mark.parametrize("bad, status, message", [
    (event(Action="dance"), "error", "Action 'dance' is not known"),
    (event(), "error", "Action None is not known"),
    (event(Action="get_next_batch", NextIndex=0, BatchSize=5), "error", "stream id None is not valid"),
    (event(Action="get_next_batch", StreamId="../../other", NextIndex=0, BatchSize=5), "error", "is not valid"),
    (event(Action="get_next_batch", StreamId="s1", NextIndex=-1, BatchSize=5), "error", "NextIndex must be"),
    (event(Action="get_next_batch", StreamId="s1", NextIndex="lots", BatchSize=5), "error", "NextIndex must be"),
    (event(Action="get_next_batch", StreamId="s1", NextIndex=0, BatchSize=0), "error", "BatchSize must be at least 1"),
    (event(Action="get_next_batch", StreamId="never-started", NextIndex=0, BatchSize=5), "not_found", "does not exist"),
    (event(Action="stop", StreamId="never-started"), "not_found", "stream never-started does not exist"),
    (event(contact_id="", Action="chat_and_stream", Question="Hi?"), "error", "chat_and_stream needs the event's "
                                                                             "ContactId"),
    (event(contact_id="../x", Action="chat_and_stream", Question="Hi?"), "error", "stream id '../x' is not valid"),
    (event(contact_id="c" * 57, Action="chat_and_stream", Question="Hi?"), "error", "ContactId has 57 characters; "
                                                                                   "turns need it to have at most 56"),
    (event(Action="chat_and_stream", Question="  "), "error", "Question is missing or empty"),
    (event(Action="chat_and_stream", Question="why " * 501), "error", "Question has 2004 characters; the most "
                                                                      "accepted is 2000"),
    (event(Action="chat_and_stream", Question="Hi\x07?"), "error", "Question contains control characters"),
    (event(Action="chat_and_stream", Question="Hi?", PreviousTurn="999999"), "error", "PreviousTurn must be below"),
    (event(Action="start_stream", BatchSize=5), "error", "text is missing"),
    (event(Action="start_stream", BatchSize=5, Text="x" * 20001), "error", "the most a stream takes is 20000"),
    (event(Action="start_stream", BatchSize=5, Text="Hi.", Language="fr"), "error", "language 'fr'"),
    ({"Details": "nope"}, "error", "not a Connect ContactFlowEvent"),
    ([], "error", "not a Connect ContactFlowEvent"),
    ({"Details": {"Parameters": ["Action"]}}, "error", "Parameters must be a map"),
], ids=["unknown-action", "no-action", "no-stream-id", "escaping-stream-id", "negative-index", "word-index",
        "zero-batch", "unknown-stream", "stop-unknown-stream", "chat-without-contact", "chat-bad-contact",
        "chat-contact-too-long-for-its-turns",
        "blank-question", "huge-question", "control-question", "last-turn", "no-text", "huge-text", "unknown-language", "details-not-a-map",
        "not-an-object", "parameters-not-a-map"])
def test_bad_requests_get_a_clear_error_and_a_final_reply(cloud, bad, status, message):
    reply = cloud.invoke("ConnectFunction", bad)
    assert reply["Status"] == status
    assert message in reply["Error"]
    assert reply["Final"] == "true" and reply["Count"] == "0"
    assert all(isinstance(v, str) for v in reply.values())
    json.dumps(reply)


def test_a_stop_refused_for_its_batch_size_leaves_the_stream_playing(cloud, make_stream, stream_id):
    # Given a stream with parts ready
    make_stream(stream_id, 3).ready(0, 1)

    # When a stop arrives with a BatchSize that is not a number
    refused = cloud.invoke("ConnectFunction", event(Action="stop", StreamId=stream_id, BatchSize="all"))

    # Then it is refused, and the stream plays on as if it had never come
    assert refused["Status"] == "error" and "BatchSize" in refused["Error"]
    assert next_batch(cloud, stream_id, 0)["Status"] == "streaming"
    assert urls(next_batch(cloud, stream_id, 0)) != []


def test_a_start_on_a_stream_its_workflow_began_but_has_not_planned_is_served_as_it_stands(cloud):
    # Given the stream a start_stream would make, begun by a workflow started on its own, not planned yet
    settings = load_settings()
    text = "Your order shipped on Monday. It should arrive by Friday afternoon. Thank you for waiting."
    checked, voice, language = pipeline.check_content(text, "", "", settings)
    content_hash = pipeline.input_hash(checked, voice, language)
    stream_id = f"{CONTACT}-{content_hash[:12]}"
    manifest.begin(cloud.client("dynamodb"), settings.table_name, stream_id, content_hash,
                   now_ms=time.time_ns() // 1_000_000, ttl_hours=1)

    # When Connect asks to start it, then the reply is that stream as it stands, not a function error
    reply = cloud.invoke("ConnectFunction", event(Action="start_stream", Text=text, BatchSize=5))
    assert (reply["StreamId"], reply["Status"], reply["Count"], reply["Final"]) == (stream_id, "streaming", "0",
                                                                                    "false")


def test_an_answer_started_again_after_the_caller_stopped_it_is_spoken_again(cloud):
    # Given an answer the caller stopped ("press 9 to hear that again" comes next in the flow)
    contact = str(uuid.uuid4())
    text = "Your order shipped on Monday. It should arrive by Friday afternoon. Thank you for waiting."
    first = cloud.invoke("ConnectFunction", event(contact, Action="start_stream", Text=text, BatchSize=5))
    assert cloud.invoke("ConnectFunction", event(contact, Action="stop", StreamId=first["StreamId"]))["Status"] == \
        "cancelled"
    runs.wait_for_executions(cloud)

    # When the flow starts the same answer again, and Connect retries that request
    again = cloud.invoke("ConnectFunction", event(contact, Action="start_stream", Text=text, BatchSize=5))
    retried = cloud.invoke("ConnectFunction", event(contact, Action="start_stream", Text=text, BatchSize=5))

    # Then it is a new stream that plays from part 0 (the stopped one stays stopped), and the retry is that stream
    assert again["StreamId"] == f"{first['StreamId']}-r1" and retried["StreamId"] == again["StreamId"]
    assert again["Status"] in ("streaming", "complete") and int(again["Count"]) >= 1 and again["Part0Url"]
    runs.wait_for_executions(cloud)
    assert next_batch(cloud, again["StreamId"], 0)["Final"] == "true"
    assert next_batch(cloud, first["StreamId"], 0)["Status"] == "cancelled"


def test_a_third_start_after_two_stops_tries_one_create_beside_the_first(cloud, monkeypatch):
    # Given an answer stopped twice (its stream and its first replay)
    contact = str(uuid.uuid4())
    text = "Please hold while I check your booking. It takes a few seconds."
    for _ in range(2):
        started = cloud.invoke("ConnectFunction", event(contact, Action="start_stream", Text=text, BatchSize=5))
        cloud.invoke("ConnectFunction", event(contact, Action="stop", StreamId=started["StreamId"]))
        runs.wait_for_executions(cloud)
    creates = []
    begin_planned = manifest.begin_planned
    monkeypatch.setattr(manifest, "begin_planned", lambda ddb, table, stream_id, *args, **kwargs:
                        creates.append(stream_id) or begin_planned(ddb, table, stream_id, *args, **kwargs))

    # When it is started a third time
    third = cloud.invoke("ConnectFunction", event(contact, Action="start_stream", Text=text, BatchSize=5))

    # Then it is the second replay, found with one read of the replays, not by trying each in turn
    assert third["StreamId"].endswith("-r2") and third["Status"] in ("streaming", "complete")
    assert creates == [third["StreamId"][:-3], third["StreamId"]]
    runs.wait_for_executions(cloud)


def test_an_answer_heard_to_the_end_is_the_same_stream_when_started_again(cloud):
    contact = str(uuid.uuid4())
    text = "Our shop opens at nine. It closes at six on weekdays."
    first = cloud.invoke("ConnectFunction", event(contact, Action="start_stream", Text=text, BatchSize=5))
    runs.wait_for_executions(cloud)
    again = cloud.invoke("ConnectFunction", event(contact, Action="start_stream", Text=text, BatchSize=5))
    assert again["StreamId"] == first["StreamId"] and again["Status"] == "complete" and again["Final"] == "true"
    assert again["Part0Url"] == first["Part0Url"]


def test_a_failed_answer_started_again_is_spoken_again_but_a_named_stream_keeps_its_id(cloud):
    # Given two streams of one contact that failed: one derived from its text, one the flow named
    contact = str(uuid.uuid4())
    text = "The engine failed on this answer once. It works now."
    checked, voice, language = pipeline.check_content(text, "", "", load_settings())
    derived = f"{contact}-{pipeline.input_hash(checked, voice, language)[:12]}"
    named = f"named-{uuid.uuid4().hex[:8]}"
    ddb, table = cloud.client("dynamodb"), cloud.physical("ManifestTable")
    for stream_id in (derived, named):
        manifest.begin(ddb, table, stream_id, pipeline.input_hash(checked, voice, language),
                       now_ms=time.time_ns() // 1_000_000, ttl_hours=1)
        manifest.fail_stream(ddb, table, stream_id, "the engine was down")

    # When each is started again, then the derived one is spoken anew, the named one is served as it stands
    again = cloud.invoke("ConnectFunction", event(contact, Action="start_stream", Text=text, BatchSize=5))
    assert again["StreamId"] == f"{derived}-r1" and again["Status"] in ("streaming", "complete")
    kept = cloud.invoke("ConnectFunction", event(contact, Action="start_stream", Text=text, StreamId=named,
                                                 BatchSize=5))
    assert (kept["StreamId"], kept["Status"], kept["Final"]) == (named, "failed", "true")
    runs.wait_for_executions(cloud)


def test_a_stream_id_reused_for_another_text_is_refused(cloud):
    stream_id = f"reuse-{uuid.uuid4().hex[:8]}"
    cloud.invoke("ConnectFunction", event(Action="start_stream", StreamId=stream_id, BatchSize=5, Text="First."))
    reply = cloud.invoke("ConnectFunction", event(Action="start_stream", StreamId=stream_id, BatchSize=5,
                                                  Text="Something else."))
    assert reply["Status"] == "error" and "different text" in reply["Error"]


def test_concurrent_retries_of_one_start_start_one_workflow(cloud):
    contact = str(uuid.uuid4())
    start = event(contact, Action="start_stream", BatchSize=5, Text="Three retries arrive at once. Only one counts.")
    before = cloud.aws_calls.snapshot()
    replies, gate = [], threading.Barrier(3)

    def invoke():
        gate.wait()
        replies.append(cloud.invoke("ConnectFunction", start))

    threads = [threading.Thread(target=invoke) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    runs.wait_for_executions(cloud)
    assert len({r["StreamId"] for r in replies}) == 1
    assert (cloud.aws_calls.snapshot() - before)["stepfunctions.StartExecution"] == 1


class SlowStart:
    """Step Functions answering StartExecution slowly (as under load): the virtual clock moves on meanwhile."""

    def __init__(self, sfn, clock, ms):
        self.sfn, self.clock, self.ms = sfn, clock, ms

    def start_execution(self, **kwargs):
        self.clock.now += self.ms
        return self.sfn.start_execution(**kwargs)


def test_a_slow_start_still_replies_before_connects_deadline(cloud, setting):
    setting("START_WAIT_MS", 5000)
    clock = VirtualClock()
    clients = streams.Clients(ddb=cloud.client("dynamodb"), s3=cloud.client("s3"),
                              sfn=SlowStart(cloud.client("stepfunctions"), clock, 4000))
    # Given 8 s of Lambda time, a StartExecution taking 4 s and a start wait of 5 s
    reply = streams.handle(clients, load_settings(), event(str(uuid.uuid4()), Action="start_stream", BatchSize=5,
                                                           Text="Slow to start."), remaining_ms=8000, clock=clock)
    # Then the reply leaves before the deadline, with the margin kept
    assert clock.elapsed_ms <= 8000 - 500
    assert reply["Status"] in ("streaming", "complete")
    runs.wait_for_executions(cloud)


def test_object_urls_are_inside_what_the_bucket_policy_lets_connect_read(cloud, make_stream, stream_id):
    from localcloud import template as cfn

    make_stream(stream_id, 1).ready(0)
    key = next_batch(cloud, stream_id, 0)["Part0Url"].split(".amazonaws.com/", 1)[1]
    loaded = cfn.load(ROOT / "template.yaml", {"ConnectInstanceArn":
                                               "arn:aws:connect:us-east-1:123456789012:instance/abc-123"})
    loaded.physical["AudioBucket"] = {"Ref": "b", "Arn": "arn:aws:s3:::b"}
    policy = loaded.resolve(loaded.body["Resources"]["AudioBucketPolicy"]["Properties"]["PolicyDocument"])
    grant = next(s for s in policy["Statement"] if s["Sid"] == "ConnectPlaysParts")
    assert grant["Action"] == "s3:GetObject"
    assert any(fnmatch.fnmatch(f"arn:aws:s3:::b/{key}", pattern) for pattern in grant["Resource"])


def test_a_stop_while_part_0_is_spoken_inline_makes_the_start_reply_final(cloud):
    # Given part 0 taking 1.5 s to speak inline, and a stop arriving meanwhile (a contact ended mid-start)
    stream_id = f"stopped-mid-start-{uuid.uuid4().hex[:8]}"
    ddb, table = cloud.client("dynamodb"), cloud.physical("ManifestTable")
    replies = {}
    start = event(Action="start_stream", Text="Your order shipped today. It arrives on Friday.", StreamId=stream_id,
                  BatchSize=5)
    with faults.injected(cloud, "engine:part=0:slow=1500"):
        starting = threading.Thread(target=lambda: replies.update(start=cloud.invoke("ConnectFunction", start)))
        starting.start()
        deadline = time.monotonic() + 10
        while manifest.read(ddb, table, stream_id) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped = cloud.invoke("ConnectFunction", event(Action="stop", StreamId=stream_id))
        starting.join(timeout=30)
    runs.wait_for_executions(cloud)

    # Then the start's reply says the stream is cancelled and final: the flow plays nothing and asks no more
    assert stopped["Status"] == "cancelled"
    reply = replies["start"]
    assert (reply["Status"], reply["Final"], reply["Count"]) == ("cancelled", "true", "0")
    assert manifest.read(ddb, table, stream_id).status == "cancelled"


def test_a_retried_start_whose_workflow_never_ran_starts_it_once_the_restart_window_is_over(cloud, setting):
    # Given a stream created 3 s ago by a start that died before StartExecution (no part 0 spoken inline here)
    setting("INLINE_FIRST_PART", "false")
    text = "Your order shipped today. It arrives on Friday."
    _, voice, language = pipeline.check_content(text, None, None, load_settings())
    stream_id = f"died-before-start-{uuid.uuid4().hex[:8]}"
    ddb, table = cloud.client("dynamodb"), cloud.physical("ManifestTable")
    manifest.begin(ddb, table, stream_id, pipeline.input_hash(text, voice, language),
                   now_ms=time.time_ns() // 1_000_000 - 3000, ttl_hours=1)
    before = cloud.aws_calls.snapshot()

    # When Connect retries the start
    cloud.invoke("ConnectFunction", event(Action="start_stream", Text=text, StreamId=stream_id, BatchSize=5))
    runs.wait_for_executions(cloud)

    # Then the retry started the one workflow, and the answer was spoken
    assert (cloud.aws_calls.snapshot() - before)["stepfunctions.StartExecution"] == 1
    assert manifest.read(ddb, table, stream_id).status == "complete"
