"""Production-like latency for local runs: every AWS request and every engine call takes about as long as on AWS.

moto answers in a few milliseconds and eSpeak speaks a sentence in ~10 ms, so a local run says nothing about the
time a caller waits. `install(LatencyModel())` makes each request of our functions (and of the Step Functions
engine) take the modeled time of its service operation, Lambda invokes cost a warm or a cold start, and every
engine call costs a first byte plus a time per character of speech, all without touching our code.

A figure is what the service takes, its network included: moto's own time for a request (and eSpeak's for a
part, inside the per-character time after the first byte, where it fits) stands in for the service's work, so
it is counted inside the figure, not added to it. A request waits
after its answer for what is left of its modeled time; only where this machine is slower than the model does its
own cost show. Our code's time (building requests, encoding audio, everything in a handler) is never absorbed.
A Lambda invoke's time runs from the moment it is sent until its function starts (the function runs inside the
request): moto's own transit counts inside it there, and the handler's time is added after it.

- botocore hooks on boto3's default session, where the handlers and moto's Step Functions engine make their
  clients (a Lambda Invoke made by the workflow also pays one state transition);
- given the local cloud, the same hooks on its own session for the two requests Connect makes: invoking
  ConnectFunction, and fetching each prompt from S3 before it plays;
- `tts_stream.engines.get_engine` wrapped, as localcloud/faults.py does, so every engine call takes at least
  its modeled time.

Figures (milliseconds, one request from a Lambda function to a service in the same region):

| operation | ms | source |
|---|---|---|
| s3 PutObject | 30 | AWS, "Best practices design patterns: optimizing Amazon S3 performance", Timeouts and retries: for requests under 512 KB "median latencies are often in the tens of milliseconds" |
| s3 GetObject | 20 | same page; Connect fetching a prompt is one GET |
| dynamodb GetItem | 5 | AWS re:Post knowledge center, "DynamoDB high latency": GetItem/PutItem average single-digit milliseconds (server side; in-region network adds ~1 ms) |
| dynamodb UpdateItem, PutItem | 8 | same page; writes go to more replicas than a strongly consistent read |
| dynamodb BatchGetItem | 10 | same page; items are read in parallel, one request |
| dynamodb BatchWriteItem | 15 | same page; items are written in parallel, one request, writes slower than reads: an assumption |
| stepfunctions StartExecution | 50 | commonly measured API round trip (no AWS-published figure): an assumption |
| Step Functions state transition | 25 | per Lambda task state, covering the Choice and Map bookkeeping around it; an assumption, in line with community benchmarks (P. Milliotte, "Functionless: can we do better without Lambda", dev.to/slsbytheodo: an Express workflow doing DynamoDB calls averaged ~3x the same work in one Lambda) |
| lambda Invoke, warm | 15 | commonly measured synchronous Invoke overhead in region (10-20 ms): an assumption |
| lambda cold start | 150 + init | "Python 3.13 (zip, minimal deps) ~150 ms p50" (lambda_local_runner docs, "Cold Starts"), plus the function's own init: the measured import time of its handler module (`init_ms`, the bench measures it) |
| engine first byte | 150 | Amazon Polly: 65 ms mean (std 13 ms) request-to-first-audio for the standard voice Joanna (Picovoice tts-latency-benchmark, results_tts_amazon_polly.json, tts_process_seconds); neural voices answer later (play.ht, "Amazon text to speech latency": 100 ms to 1 s in real-world tests) |
| engine per character of speech | 1.5 | Polly neural, whole response (we need every byte before encoding): an assumption (~450 ms for a 200-character English part); calibrate with one timed `aws polly synthesize-speech --engine neural`. A Hangul syllable counts as `chunking.HANGUL_SPEECH_WEIGHT` (3) characters, as in the chunker: an engine's work is the speech it makes, and a syllable is ~2.9x as long to say as a Latin letter (eSpeak NG here makes 0.9-1.1 ms of work per second of audio in either language, and 2.8x the audio per character of Korean text, spaces and punctuation included) |
| anything else | 10 | an assumption |

A cold start is modeled per execution environment: a function's first invocation, and every invocation that finds
all of its environments busy (a Map of 10 parts starts 10 environments), pays `lambda_cold_ms` plus its init.
Environments are never recycled here. Not modeled: throttling (Polly neural allows 8 TPS per account), retries,
tail latency, Connect's own time between flow blocks.
"""

import dataclasses
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator
from urllib.parse import unquote


from localcloud import cloud as local_cloud
from localcloud import hooks
from localcloud.cloud import engine_clients
from tts_stream import chunking, engines

SOURCES = {
    "s3_put_ms": "AWS S3 performance whitepaper (Timeouts and retries): small requests, median tens of ms",
    "s3_get_ms": "AWS S3 performance whitepaper (Timeouts and retries): small requests, median tens of ms",
    "ddb_get_ms": "AWS re:Post knowledge center dynamodb-high-latency: GetItem average single-digit ms",
    "ddb_write_ms": "AWS re:Post knowledge center dynamodb-high-latency: PutItem average single-digit ms",
    "ddb_batch_get_ms": "AWS re:Post knowledge center dynamodb-high-latency; parallel reads in one request",
    "ddb_batch_write_ms": "assumption from the same page: parallel writes in one request, writes slower than reads",
    "sfn_start_ms": "assumption: commonly measured StartExecution round trip",
    "sfn_transition_ms": "assumption, in line with community Express-vs-Lambda benchmarks (Milliotte, dev.to)",
    "lambda_invoke_ms": "assumption: commonly measured synchronous Invoke overhead, 10-20 ms",
    "lambda_cold_ms": "lambda_local_runner docs 'Cold Starts': Python 3.13 zip minimal deps ~150 ms p50 (+ init)",
    "engine_first_byte_ms": "Picovoice tts-latency-benchmark: Polly 65 ms mean TTFB (standard); neural slower",
    "engine_per_char_ms": "assumption for Polly neural whole responses (~450 ms for 200 characters of English); "
                          "a Hangul syllable counts 3, as long to say as 3 Latin letters",
    "other_ms": "assumption",
}


@dataclass(frozen=True)
class LatencyModel:
    """Modeled milliseconds per request. `LatencyModel.off()` models nothing."""

    s3_put_ms: float = 30.0
    s3_get_ms: float = 20.0
    ddb_get_ms: float = 5.0
    ddb_write_ms: float = 8.0  # UpdateItem, PutItem
    ddb_batch_get_ms: float = 10.0
    ddb_batch_write_ms: float = 15.0
    sfn_start_ms: float = 50.0
    sfn_transition_ms: float = 25.0
    lambda_invoke_ms: float = 15.0
    lambda_cold_ms: float = 150.0
    engine_first_byte_ms: float = 150.0
    engine_per_char_ms: float = 1.5
    other_ms: float = 10.0

    @classmethod
    def off(cls) -> "LatencyModel":
        return cls(**{f.name: 0.0 for f in dataclasses.fields(cls)})

    @property
    def is_off(self) -> bool:
        return not any(getattr(self, f.name) for f in dataclasses.fields(self))

    def request_ms(self, service: str, operation: str) -> float:
        """One request of `service.operation` (botocore names: s3.PutObject, dynamodb.GetItem ...)."""
        return {
            ("s3", "PutObject"): self.s3_put_ms,
            ("s3", "GetObject"): self.s3_get_ms,
            ("dynamodb", "GetItem"): self.ddb_get_ms,
            ("dynamodb", "UpdateItem"): self.ddb_write_ms,
            ("dynamodb", "PutItem"): self.ddb_write_ms,
            ("dynamodb", "BatchGetItem"): self.ddb_batch_get_ms,
            ("dynamodb", "BatchWriteItem"): self.ddb_batch_write_ms,
            ("stepfunctions", "StartExecution"): self.sfn_start_ms,
            ("lambda", "Invoke"): self.lambda_invoke_ms,
        }.get((service, operation), self.other_ms)

    def engine_ms(self, text: str) -> float:
        """What the engine adds for one part: first byte plus a time per character of speech (an engine's work
        is the audio it makes, and a Hangul syllable says as much as HANGUL_SPEECH_WEIGHT Latin letters)."""
        return self.engine_first_byte_ms + self.engine_per_char_ms * chunking.speech_length(text)

    def figures(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def function_name(function: str) -> str:
    """`name`, `name:qualifier` or a function ARN -> the function's name."""
    if function.startswith("arn:"):
        function = function.split(":function:", 1)[-1]
    return function.split(":", 1)[0]


def _invoked_function(request: dict | None) -> str:
    """The function a lambda Invoke request names: before-call sees the request, /2015-03-31/functions/F/invocations."""
    path = (request or {}).get("url_path", "")
    parts = path.split("/")
    return function_name(unquote(parts[3])) if len(parts) > 4 and parts[2] == "functions" else path


class Latency:
    """The model at work: what it slept, which functions started cold, how often the engine spoke.

    `sleep` and `clock` (seconds) are injectable, so tests can record the modeled delays instead of waiting.
    """

    def __init__(self, model: LatencyModel, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.perf_counter, init_ms: dict[str, float] | None = None):
        self.model = model
        self.init_ms = {} if model.is_off else dict(init_ms or {})  # off models nothing, init included
        self._sleep, self._clock = sleep, clock
        self._lock = threading.Lock()
        self._environments: Counter[str] = Counter()
        self._busy: Counter[str] = Counter()
        self.active = False
        self.slept_ms: Counter[str] = Counter()  # what was slept, per operation
        self.requests: Counter[str] = Counter()  # requests seen, per operation
        self.cold_starts: Counter[str] = Counter()  # per function name
        self.engine_calls = 0
        self.engine_chars = 0

    # -- what the hooks call -------------------------------------------------------------------------------
    def on_request(self, model, params=None, context=None, **_):
        """before-call on boto3's default session: a request of our functions or of the workflow."""
        self._request(model, params, context, by_workflow=True)

    def on_connect_request(self, model, params=None, context=None, **_):
        """before-call on the local cloud's own session: Connect invoking ConnectFunction or fetching a prompt."""
        self._request(model, params, context, by_workflow=False)

    def _request(self, model, params, context, *, by_workflow: bool):
        if not self.active:
            return
        service, operation = model.service_model.service_name, model.name
        what = f"{service}.{operation}"
        delay = self.model.request_ms(service, operation)
        if what == "lambda.Invoke":
            name = _invoked_function(params)
            cold = self._enter(name)
            if context is not None:
                context["localcloud_latency_function"] = name
            if cold:
                delay += self.model.lambda_cold_ms + self.init_ms.get(name, 0.0)
            if by_workflow:
                # Our functions invoke no Lambda: on the default session an Invoke is a workflow Task state.
                delay += self.model.sfn_transition_ms
        self._count(what)
        if context is not None and delay > 0:
            context["localcloud_latency"] = (what, delay)  # the rest of it after the answer (on_answer)

    def on_sent(self, request=None, **_):
        """botocore before-send: the request leaves now; what moto takes from here counts inside its figure.
        An Invoke carries the moment its function may start (on_function_start waits for it there)."""
        context = getattr(request, "context", None)
        if isinstance(context, dict) and "localcloud_latency" in context:
            sent = context["localcloud_latency_sent"] = self._clock()
            what, delay = context["localcloud_latency"]
            if what == "lambda.Invoke":
                request.headers[START_AT_HEADER] = repr(sent + delay / 1000)

    def on_function_start(self, headers=None, **_):
        """A handler is about to run inside an Invoke: wait until the invoke's modeled time since it was sent."""
        start_at = (headers or {}).get(START_AT_HEADER)
        try:
            wait_ms = 0.0 if start_at is None else (float(start_at) - self._clock()) * 1000
        except ValueError:  # not a time of ours: nothing to wait for
            return
        self._sleep_ms("lambda.Invoke", wait_ms)

    def on_answer(self, context=None, **_):
        """botocore after-call / after-call-error: wait for what is left of the request's modeled time (all of it
        for a request never sent, as a stubbed one)."""
        modeled = (context or {}).pop("localcloud_latency", None)
        sent = (context or {}).pop("localcloud_latency_sent", None)
        if modeled is not None:
            what, delay = modeled
            self._pad(what, delay, sent)

    def on_done(self, context=None, **_):
        """botocore after-call / after-call-error of an Invoke: the function's environment is free again."""
        name = (context or {}).pop("localcloud_latency_function", None)
        if name is not None:
            with self._lock:
                self._busy[name] -= 1

    def speak(self, text: str, synthesize: Callable[[], object]):
        """One engine call, taking at least its modeled time. The first byte is waited first (the request's trip
        and the service starting on it); then the local engine works, standing in for the service's work, so its
        own time counts inside the per-character time that is waited after it (and adds to it only when longer).

        On AWS the engine's work takes none of our CPU (Polly's servers, or each part's own Lambda environment).
        Here every part shares two cores: working during the first byte would put the engine's CPU of a Map's
        parts, all started together, onto the very moment part 0 is being stored."""
        with self._lock:
            self.engine_calls += 1
            self.engine_chars += len(text)
        if not self.active:
            return synthesize()
        self._count("engine.synthesize")
        self._sleep_ms("engine.synthesize", self.model.engine_first_byte_ms)
        started = self._clock()
        try:
            return synthesize()
        finally:  # a failing call takes its time too
            self._pad("engine.synthesize", self.model.engine_ms(text) - self.model.engine_first_byte_ms, started)

    # -- state -----------------------------------------------------------------------------------------------
    def make_cold(self):
        """Forget every execution environment: the next invocation of each function starts cold."""
        with self._lock:
            self._environments.clear()

    def snapshot(self) -> dict:
        with self._lock:
            return {"requests": dict(self.requests), "slept_ms": {k: round(v, 1) for k, v in self.slept_ms.items()},
                    "cold_starts": dict(self.cold_starts), "engine_calls": self.engine_calls,
                    "engine_chars": self.engine_chars}

    def _enter(self, name: str) -> bool:
        """An invocation of `name` starts: True when no environment is free (a cold start)."""
        with self._lock:
            self._busy[name] += 1
            cold = self._busy[name] > self._environments[name]
            if cold:
                self._environments[name] += 1
                self.cold_starts[name] += 1
            return cold

    def _count(self, what: str):
        with self._lock:
            self.requests[what] += 1

    def _pad(self, what: str, delay_ms: float, started: float | None):
        """Sleep what is left of `delay_ms` since `started` (the clock's seconds; None: nothing has passed)."""
        spent_ms = 0.0 if started is None else (self._clock() - started) * 1000
        self._sleep_ms(what, delay_ms - spent_ms)

    def _sleep_ms(self, what: str, delay_ms: float):
        if delay_ms > 0:
            with self._lock:
                self.slept_ms[what] += delay_ms
            self._sleep(delay_ms / 1000)


class _Dispatch:
    """The hook botocore holds. Clients copy their session's hooks when they are made and keep them, so the hook
    stays registered and forwards to whichever Latency is installed now (none: it does nothing)."""

    def __init__(self, method: str):
        self.method = method

    def __call__(self, **kwargs):
        latency = _installed
        if latency is not None:
            return getattr(latency, self.method)(**kwargs)
        return None


class _ModeledEngine:
    """The real engine, each call taking at least the model's time (see Latency.speak)."""

    def __init__(self, engine, latency: Latency):
        self._engine, self._latency = engine, latency

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def synthesize(self, text, voice):
        return self._latency.speak(text, lambda: self._engine.synthesize(text, voice))


_installed: Latency | None = None
START_AT_HEADER = "x-localcloud-start-at"  # an Invoke's modeled start, on this process's clock
_HOOKS = (  # event, hook, unique id: registering twice with one id is a no-op
    # As specific as botocore.stub.Stubber's hook, so that a stubbed client (tests) still waits the modeled time.
    ("before-call.*.*", _Dispatch("on_request"), "localcloud-latency-request"),
    ("before-send.*.*", _Dispatch("on_sent"), "localcloud-latency-sent"),
    ("after-call.*.*", _Dispatch("on_answer"), "localcloud-latency-answer"),
    ("after-call-error.*.*", _Dispatch("on_answer"), "localcloud-latency-answer-error"),
    ("after-call.lambda.Invoke", _Dispatch("on_done"), "localcloud-latency-done"),
    ("after-call-error.lambda.Invoke", _Dispatch("on_done"), "localcloud-latency-error"),
)
_CONNECT_HOOKS = (
    ("before-call.lambda.Invoke", _Dispatch("on_connect_request"), "localcloud-latency-connect-invoke"),
    ("before-call.s3.GetObject", _Dispatch("on_connect_request"), "localcloud-latency-connect-prompt"),
    ("before-send.s3.GetObject", _Dispatch("on_sent"), "localcloud-latency-connect-prompt-sent"),
    ("after-call.s3.GetObject", _Dispatch("on_answer"), "localcloud-latency-connect-prompt-answer"),
    ("after-call-error.s3.GetObject", _Dispatch("on_answer"), "localcloud-latency-connect-prompt-error"),
    ("before-send.lambda.Invoke", _Dispatch("on_sent"), "localcloud-latency-connect-invoke-sent"),
    ("after-call.lambda.Invoke", _Dispatch("on_answer"), "localcloud-latency-connect-invoke-answer"),
    ("after-call-error.lambda.Invoke", _Dispatch("on_answer"), "localcloud-latency-connect-invoke-error"),
    ("after-call.lambda.Invoke", _Dispatch("on_done"), "localcloud-latency-connect-done"),
    ("after-call-error.lambda.Invoke", _Dispatch("on_done"), "localcloud-latency-connect-error"),
)


def _register(emitter, hooks):
    for event, hook, unique_id in hooks:
        emitter.register(event, hook, unique_id=unique_id)


@contextmanager
def install(model: LatencyModel, *, cloud=None, sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.perf_counter,
            init_ms: dict[str, float] | None = None) -> Iterator[Latency]:
    """Within the block, AWS requests and engine calls take the modeled time; yields the Latency (what it did).

    Install it after the local cloud has started (LocalCloud.start makes a new default session). With `cloud`,
    Connect's own requests (invoking ConnectFunction, fetching prompts) are modeled too, and clients the handlers
    already hold get the hook. `init_ms` maps function names to their init time, added to each cold start.
    """
    global _installed
    import boto3

    if _installed is not None:
        raise RuntimeError("a latency model is already installed: one at a time")
    if boto3.DEFAULT_SESSION is None:
        boto3.setup_default_session()
    _register(boto3.DEFAULT_SESSION.events, _HOOKS)
    if cloud is not None:
        _register(cloud._session.events, _CONNECT_HOOKS)
        for client in cloud.connect_clients():  # made before: they copied the session's hooks then
            _register(client.meta.events, _CONNECT_HOOKS)
        for client in [*hooks.handler_clients(cloud), *engine_clients()]:
            _register(client.meta.events, _HOOKS)
    if not any(isinstance(hook, _Dispatch) for hook in local_cloud.function_start_hooks):
        local_cloud.function_start_hooks.append(_Dispatch("on_function_start"))
    latency = Latency(model, sleep=sleep, clock=clock, init_ms=init_ms)
    real_get_engine = engines.get_engine
    engines.get_engine = lambda *args, **kwargs: _ModeledEngine(real_get_engine(*args, **kwargs), latency)
    latency.active = True
    _installed = latency
    try:
        yield latency
    finally:
        latency.active = False
        _installed = None
        engines.get_engine = real_get_engine
