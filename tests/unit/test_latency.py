"""The latency model (localcloud/latency.py): every AWS request and engine call of a local run takes its modeled
time, Lambda pays a cold start once per execution environment, and `off()` adds nothing.

Delays are recorded through an injected sleep, so no test depends on how busy the machine is; the one real-time
test only checks a lower bound.
"""

import io
import json
import threading
import time

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.response import StreamingBody
from botocore.stub import Stubber

from localcloud import cloud as local_cloud_module
from localcloud import latency
from localcloud.latency import LatencyModel
from tts_stream import chunking, engines
from tts_stream.engines import Speech

CREDENTIALS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
               "endpoint_url": "http://127.0.0.1:9"}  # never reached: the stubber answers
FUNCTION = "connect-tts-stream-synthesizefunction"
FUNCTION_ARN = f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION}"


class Recorder:
    """A sleep that remembers what it was asked to wait (seconds)."""

    def __init__(self):
        self.calls: list[float] = []

    def __call__(self, seconds: float):
        self.calls.append(seconds)

    def ms(self) -> list[float]:
        return [round(s * 1000, 3) for s in self.calls]


def client(service: str):
    """A client made the way our handlers make theirs: from boto3's default session."""
    if boto3.DEFAULT_SESSION is None:
        boto3.setup_default_session()
    return boto3.DEFAULT_SESSION.client(service, **CREDENTIALS)


def invoke_payload() -> StreamingBody:
    return StreamingBody(io.BytesIO(b"{}"), 2)


REQUESTS = [
    ("s3", "put_object", {"Bucket": "b", "Key": "k", "Body": b"x"}, {}, "s3_put_ms"),
    ("s3", "get_object", {"Bucket": "b", "Key": "k"}, {}, "s3_get_ms"),
    ("dynamodb", "get_item", {"TableName": "t", "Key": {"k": {"S": "1"}}}, {}, "ddb_get_ms"),
    ("dynamodb", "update_item", {"TableName": "t", "Key": {"k": {"S": "1"}}}, {}, "ddb_write_ms"),
    ("dynamodb", "put_item", {"TableName": "t", "Item": {"k": {"S": "1"}}}, {}, "ddb_write_ms"),
    ("dynamodb", "batch_get_item", {"RequestItems": {"t": {"Keys": [{"k": {"S": "1"}}]}}}, {}, "ddb_batch_get_ms"),
    ("dynamodb", "batch_write_item", {"RequestItems": {"t": [{"PutRequest": {"Item": {"k": {"S": "1"}}}}]}}, {},
     "ddb_batch_write_ms"),
    ("stepfunctions", "start_execution", {"stateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:m"},
     {"executionArn": "arn:aws:states:us-east-1:123456789012:execution:m:e", "startDate": 0}, "sfn_start_ms"),
]


@pytest.mark.parametrize("service, method, params, response, figure", REQUESTS,
                         ids=[f"{r[0]}-{r[1]}" for r in REQUESTS])
def test_each_request_waits_the_modeled_time_of_its_operation(service, method, params, response, figure):
    # Given a latency model installed with a recording sleep, and a client from the default session
    model, slept = LatencyModel(), Recorder()
    with latency.install(model, sleep=slept) as installed:
        aws = client(service)
        with Stubber(aws) as stub:
            stub.add_response(method, response, params)
            # When the client makes one request
            getattr(aws, method)(**params)
    # Then exactly the modeled time of that operation was slept, once
    assert slept.ms() == [getattr(model, figure)]
    assert sum(installed.requests.values()) == 1


def test_a_modeled_request_really_takes_at_least_its_modeled_time():
    # Given a model where an S3 write takes 60 ms, installed with the real sleep
    model = LatencyModel(s3_put_ms=60)
    with latency.install(model):
        aws = client("s3")
        with Stubber(aws) as stub:
            stub.add_response("put_object", {}, {"Bucket": "b", "Key": "k", "Body": b"x"})
            # When the write is made
            started = time.perf_counter()
            aws.put_object(Bucket="b", Key="k", Body=b"x")
            elapsed = time.perf_counter() - started
    # Then it took at least that long (never an upper bound: the machine is shared)
    assert elapsed >= 0.060


def stubbed_invokes(aws, count: int) -> Stubber:
    stub = Stubber(aws)
    for _ in range(count):
        stub.add_response("invoke", {"StatusCode": 200, "Payload": invoke_payload()}, {"FunctionName": FUNCTION_ARN})
    return stub


def test_a_function_starts_cold_once_then_runs_warm():
    # Given a model whose cold starts cost the platform's time plus the function's measured init
    model, slept = LatencyModel(), Recorder()
    with latency.install(model, sleep=slept, init_ms={FUNCTION: 300.0}) as installed:
        aws = client("lambda")
        with stubbed_invokes(aws, 2):
            # When the workflow invokes the same function twice, one after the other
            aws.invoke(FunctionName=FUNCTION_ARN)
            aws.invoke(FunctionName=FUNCTION_ARN)
    # Then the first invocation pays a cold start and init, the second only the invoke, each plus a state transition
    warm = model.lambda_invoke_ms + model.sfn_transition_ms
    assert slept.ms() == [warm + model.lambda_cold_ms + 300.0, warm]
    assert installed.cold_starts == {FUNCTION: 1}


def lambda_invoke_model():
    return client("lambda").meta.service_model.operation_model("Invoke")


def answered(installed, context):
    """What botocore's after-call runs for an Invoke (never sent here: it waits its whole modeled time)."""
    installed.on_answer(context=context)
    installed.on_done(context=context)


@pytest.mark.parametrize("transit_ms, expected", [(4, [36.0]), (50, [])], ids=["faster", "slower"])
def test_an_invoke_starts_its_function_once_its_modeled_time_has_passed_since_it_was_sent(transit_ms, expected):
    # Given the workflow's Invoke of a warm function (modeled: invoke + state transition, 40 ms) on a fake clock,
    # and a local cloud that takes `transit_ms` to get it to the function, which then runs for 50 ms
    clock, slept = Clock(), Recorder()
    slept_clock = lambda seconds: (slept(seconds), clock.advance_ms(seconds * 1000))  # noqa: E731
    started = []
    with latency.install(LatencyModel(), sleep=slept_clock, clock=clock) as installed:
        installed._environments[FUNCTION] = 1
        aws = client("lambda")

        def local_cloud(request, **_):
            clock.advance_ms(transit_ms)
            for hook in local_cloud_module.function_start_hooks:  # what moto's invoke does before the handler
                hook(headers=request.headers)
            started.append(clock())
            clock.advance_ms(50)
            return AWSResponse(request.url, 200, {}, RawBody(b"{}"))

        aws.meta.events.register("before-send.lambda.Invoke", local_cloud)
        # When it is made
        sent_at = clock()
        aws.invoke(FunctionName=FUNCTION_ARN)
    # Then the function started 40 ms after the Invoke was sent: the local cloud's transit counts inside them and
    # adds nothing unless it is slower; nothing more was waited once the function had run
    assert slept.ms() == expected
    assert round((started[0] - sent_at) * 1000, 3) == max(40, transit_ms)
    assert installed.requests == {"lambda.Invoke": 1}


def test_an_invocation_that_finds_every_environment_busy_starts_cold():
    # Given a function already running in its only environment
    model, slept = LatencyModel(), Recorder()
    operation = lambda_invoke_model()
    request = {"url_path": f"/2015-03-31/functions/{FUNCTION_ARN.replace(':', '%3A')}/invocations"}
    with latency.install(model, sleep=slept) as installed:
        first, second, third = {}, {}, {}
        installed.on_request(model=operation, params=request, context=first)
        # When a second invocation arrives while the first runs (a Map fanning out)
        installed.on_request(model=operation, params=request, context=second)
        answered(installed, first)
        answered(installed, second)
        # and a third once both have finished
        installed.on_request(model=operation, params=request, context=third)
        answered(installed, third)
    # Then the second starts a new environment (cold), and the third finds a warm one
    assert installed.cold_starts == {FUNCTION: 2}
    cold = model.lambda_invoke_ms + model.sfn_transition_ms + model.lambda_cold_ms
    assert slept.ms() == [cold, cold, model.lambda_invoke_ms + model.sfn_transition_ms]


def test_connect_invoking_a_function_pays_no_state_transition():
    # Given the model, and the hook the local cloud's own session gets (Connect's requests)
    model, slept = LatencyModel(), Recorder()
    request = {"url_path": "/2015-03-31/functions/connect-tts-stream-connectfunction/invocations"}
    with latency.install(model, sleep=slept) as installed:
        # When Connect invokes ConnectFunction twice
        for _ in range(2):
            context = {}
            installed.on_connect_request(model=lambda_invoke_model(), params=request, context=context)
            answered(installed, context)
    # Then it is a plain invoke, cold the first time
    assert slept.ms() == [model.lambda_invoke_ms + model.lambda_cold_ms, model.lambda_invoke_ms]


class FakeEngine:
    name = "fake"

    def __init__(self):
        self.texts = []

    def synthesize(self, text, voice):
        self.texts.append(text)
        return Speech(pcm16=b"\x00\x00", sample_rate=8000)

    def default_voice(self, language):
        return "v"

    def identity(self):
        return {}


class Clock:
    """A clock (seconds) that moves only when told to."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: float):
        self.now += ms / 1000


def test_the_engine_takes_its_first_byte_plus_a_time_per_character(monkeypatch):
    # Given an engine the pipeline gets through tts_stream.engines.get_engine
    fake = FakeEngine()
    monkeypatch.setattr(engines, "get_engine", lambda name, settings=None: fake)
    model, slept = LatencyModel(engine_first_byte_ms=100, engine_per_char_ms=2), Recorder()
    with latency.install(model, sleep=slept, clock=Clock()) as installed:
        # When it speaks a 10-character part
        engine = engines.get_engine("fake")
        engine.synthesize("0123456789", "v")
    # Then it took 100 + 10 x 2 ms (the first byte, then the rest), spoke the text itself, and the call was
    # counted; the engine is restored after
    assert slept.ms() == [100.0, 20.0]
    assert fake.texts == ["0123456789"]
    assert installed.engine_calls == 1
    assert engines.get_engine("fake") is fake


def test_a_hangul_syllable_costs_the_engine_as_much_as_the_letters_it_takes_as_long_to_say():
    model = LatencyModel(engine_first_byte_ms=100, engine_per_char_ms=2)
    # 4 syllables (3 letters' worth of speech each) and a space and a full stop
    assert model.engine_ms("안녕하세 .") == 100 + 2 * (4 * chunking.HANGUL_SPEECH_WEIGHT + 2)
    assert model.engine_ms("Hi there.") == 100 + 2 * 9


@pytest.mark.parametrize("own_ms, expected", [(5, [100.0, 15.0]), (30, [100.0])], ids=["faster", "slower"])
def test_the_engine_works_after_the_first_byte_and_its_own_time_counts_inside_the_rest(monkeypatch, own_ms,
                                                                                        expected):
    # Given an engine that itself takes `own_ms` (eSpeak stands in for the service, whose time the model is)
    clock, fake = Clock(), FakeEngine()
    speak, slept_before = fake.synthesize, []

    def synthesize(text, voice):
        slept_before.append(slept.ms())
        clock.advance_ms(own_ms)
        return speak(text, voice)

    fake.synthesize = synthesize
    monkeypatch.setattr(engines, "get_engine", lambda name, settings=None: fake)
    model, slept = LatencyModel(engine_first_byte_ms=100, engine_per_char_ms=2), Recorder()
    with latency.install(model, sleep=slept, clock=clock):
        # When it speaks a 10-character part (modeled: 100 ms first byte, then 20 ms)
        engines.get_engine("fake").synthesize("0123456789", "v")
    # Then the engine worked once the first byte was waited, and only what is left of the 20 ms after it was
    # slept: nothing when the engine is slower than that
    assert slept_before == [[100.0]]
    assert slept.ms() == expected


@pytest.mark.parametrize("answer_ms, expected", [(3, [5.0]), (12, [])], ids=["faster", "slower"])
def test_a_requests_time_on_the_wire_counts_inside_its_modeled_time(answer_ms, expected):
    # Given an UpdateItem (modeled: 8 ms) that moto answers `answer_ms` after it was sent
    clock, slept = Clock(), Recorder()
    operation = client("dynamodb").meta.service_model.operation_model("UpdateItem")
    with latency.install(LatencyModel(), sleep=slept, clock=clock) as installed:
        context = {}
        installed.on_request(model=operation, params={}, context=context)
        clock.advance_ms(1)  # building and signing the request: our client's own time, never absorbed
        installed.on_sent(request=type("Sent", (), {"context": context})())
        clock.advance_ms(answer_ms)
        installed.on_answer(context=context)
    # Then the request waits after its answer for what is left of the 8 ms, and nothing more if moto was slower
    assert slept.ms() == expected
    assert installed.requests == {"dynamodb.UpdateItem": 1}


def test_off_waits_for_nothing_but_still_counts(monkeypatch):
    # Given the model switched off
    fake = FakeEngine()
    monkeypatch.setattr(engines, "get_engine", lambda name, settings=None: fake)
    slept = Recorder()
    with latency.install(LatencyModel.off(), sleep=slept, init_ms={FUNCTION: 300.0}) as installed:
        aws, functions = client("dynamodb"), client("lambda")
        with Stubber(aws) as stub, stubbed_invokes(functions, 1):
            stub.add_response("get_item", {}, {"TableName": "t", "Key": {"k": {"S": "1"}}})
            # When a request is made, a function starts cold and the engine speaks
            aws.get_item(TableName="t", Key={"k": {"S": "1"}})
            functions.invoke(FunctionName=FUNCTION_ARN)
        engines.get_engine("fake").synthesize("hello", "v")
    # Then nothing was slept (not even a zero wait), and all were still counted: the bench reports them off too
    assert slept.calls == []
    assert installed.slept_ms == {}
    assert installed.requests == {"dynamodb.GetItem": 1, "lambda.Invoke": 1, "engine.synthesize": 1}
    assert installed.engine_calls == 1


class RawBody:
    """What botocore reads an answer's body from."""

    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_):
        yield self.data


@pytest.mark.parametrize("answer_ms, expected", [(3, [5.0]), (12, [])], ids=["faster", "slower"])
def test_a_request_sent_through_the_hooks_waits_after_its_answer_for_the_rest(answer_ms, expected):
    # Given a client whose UpdateItem (modeled: 8 ms) is answered `answer_ms` after it leaves, on a fake clock
    clock, slept = Clock(), Recorder()
    with latency.install(LatencyModel(), sleep=slept, clock=clock) as installed:
        aws = client("dynamodb")

        def answer(request, **_):
            clock.advance_ms(answer_ms)
            return AWSResponse(request.url, 200, {}, RawBody(b"{}"))

        aws.meta.events.register("before-send.dynamodb.UpdateItem", answer)
        # When the request is made (botocore's own hooks: before-call, before-send, after-call)
        aws.update_item(TableName="t", Key={"k": {"S": "1"}})
    # Then it waited for what was left of its 8 ms after the answer, and nothing when the answer took longer
    assert slept.ms() == expected
    assert installed.requests == {"dynamodb.UpdateItem": 1}


def test_a_request_that_fails_still_takes_its_modeled_time():
    # Given a GetItem (modeled: 5 ms) that DynamoDB answers with an error at once
    clock, slept = Clock(), Recorder()
    with latency.install(LatencyModel(), sleep=slept, clock=clock):
        aws = client("dynamodb")
        with Stubber(aws) as stub:
            stub.add_client_error("get_item", service_error_code="ValidationException", http_status_code=400)
            # When the request is made
            with pytest.raises(aws.exceptions.ClientError):
                aws.get_item(TableName="t", Key={"k": {"S": "1"}})
    # Then it took its 5 ms all the same
    assert slept.ms() == [5.0]


def test_clients_keep_no_delay_after_the_block():
    # Given a client made while a model was installed
    slept = Recorder()
    with latency.install(LatencyModel(), sleep=slept):
        aws = client("dynamodb")
    # When it is used after the block
    with Stubber(aws) as stub:
        stub.add_response("get_item", {}, {"TableName": "t", "Key": {"k": {"S": "1"}}})
        aws.get_item(TableName="t", Key={"k": {"S": "1"}})
    # Then nothing is delayed
    assert slept.calls == []


def test_one_model_at_a_time():
    with latency.install(LatencyModel.off()):
        with pytest.raises(RuntimeError, match="already installed"):
            with latency.install(LatencyModel.off()):
                pass


def test_delays_of_concurrent_requests_are_all_recorded():
    # Given requests made from several threads at once (a Map's parts)
    slept, lock = [], threading.Lock()

    def sleep(seconds):
        with lock:
            slept.append(seconds)

    with latency.install(LatencyModel(), sleep=sleep) as installed:
        def put():
            aws = client("s3")
            with Stubber(aws) as stub:
                stub.add_response("put_object", {}, {"Bucket": "b", "Key": "k", "Body": b"x"})
                aws.put_object(Bucket="b", Key="k", Body=b"x")

        threads = [threading.Thread(target=put) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # Then every one of them waited the modeled time
    assert len(slept) == 8 and installed.slept_ms["s3.PutObject"] == 8 * LatencyModel().s3_put_ms


@pytest.mark.parametrize("given, name", [
    ("connect-tts-stream-planfunction", "connect-tts-stream-planfunction"),
    ("connect-tts-stream-planfunction:live", "connect-tts-stream-planfunction"),
    ("arn:aws:lambda:us-east-1:123456789012:function:connect-tts-stream-planfunction",
     "connect-tts-stream-planfunction"),
    ("arn:aws:lambda:us-east-1:123456789012:function:connect-tts-stream-planfunction:$LATEST",
     "connect-tts-stream-planfunction"),
])
def test_a_function_is_known_by_its_name_however_it_is_invoked(given, name):
    assert latency.function_name(given) == name


def test_the_default_model_models_every_figure_and_off_models_none():
    figures = LatencyModel().figures()
    assert all(value > 0 for value in figures.values()), figures
    assert set(figures) <= set(latency.SOURCES), "every figure needs its source"
    assert LatencyModel.off().is_off and not LatencyModel().is_off
    assert json.dumps(LatencyModel.off().figures())
