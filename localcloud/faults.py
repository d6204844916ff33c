"""Make the outside world fail on purpose, to rehearse what a caller hears when it does.

Faults are injected where production fails (the speech engine, AWS answering our functions, Step Functions
delivering a Map item twice, Connect retrying a Lambda), never into our own logic: every handler, the state
machine and the contact flow run unchanged.

Fault SPEC grammar (`python -m localcloud call|stream --fault SPEC`, repeatable; `faults.injected(cloud, *specs)`):

| SPEC | what fails |
|---|---|
| `engine:part=K:transient=N` | the engine fails part K the first N times it is asked (a timeout: `RetryableError`), then speaks it |
| `engine:part=K:permanent` | the engine rejects part K every time (`PermanentSynthesisError`, as for text it cannot speak) |
| `engine:part=K:slow=MS` | part K takes MS milliseconds longer to synthesize |
| `s3:put:throttle=N` | the first N S3 `PutObject` calls of our functions get `SlowDown` (HTTP 503) |
| `ddb:update:throttle=N` | the first N DynamoDB `UpdateItem` calls get `ProvisionedThroughputExceededException` |
| `ddb:get:throttle=N` | the first N DynamoDB `GetItem` calls get `ProvisionedThroughputExceededException` |
| `ddb:batchwrite:throttle=N` | the first N DynamoDB `BatchWriteItem` calls (prompt-cache entries) get `ProvisionedThroughputExceededException` |
| `sfn:start:throttle=N` | the first N Step Functions `StartExecution` calls get `ThrottlingException` |
| `map:duplicate=K` | part K's Map item is delivered twice: SynthesizeFunction runs once more for it, at the same time |
| `connect:retry=N` | every ConnectFunction invocation runs N more times with the same event; Connect uses the last reply |

- K is a part index, from 0, as in `partNNNN.wav`; `faults.parts_of(text)` lists the parts a text makes with the
  current settings. Engine and duplicate faults apply to every stream started while they are on, counted per stream.
- An engine fault hits part K wherever it is spoken: in SynthesizeFunction, or in ConnectFunction, which speaks part
  0 itself before the workflow starts (and leaves it to the workflow when that fails). A part spoken there is not a
  Map item, so `map:duplicate=0` only fires when the workflow speaks part 0.
- A throttle may name one function: `ddb:get:throttle=1:function=ConnectFunction` (a logical id in template.yaml);
  without it, any of our functions' calls count. A throttled call is one the AWS SDK has already retried and given
  up on: the function sees the `ClientError`.
- N is 1 to 1000, K 0 to 9998, MS 1 to 600000.
"""

import argparse
import re
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from botocore.errorfactory import ClientExceptionsFactory
from botocore.exceptions import ClientError

from localcloud import hooks
from tts_stream import chunking, config, engines, pipeline
from tts_stream.errors import PermanentSynthesisError, RetryableError

# -- the engine faults the pipeline tests use directly: fail any text containing a string ------------------


@dataclass
class EngineFault:
    """Fail synthesis of any text containing `match`: `times` times (None: always), then succeed."""
    match: str
    permanent: bool = False
    times: int | None = None
    failures: int = 0

    def error(self) -> Exception:
        if self.permanent:
            return PermanentSynthesisError(f"the engine rejected the text of this part (fault injected on {self.match!r})")
        return RetryableError(f"the engine timed out (transient fault injected on {self.match!r})")


@dataclass
class EngineCalls:
    """What the engine was asked to say, in order, including failed attempts."""
    texts: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, match: str) -> int:
        return sum(match in text for text in self.texts)


class _FaultyEngine:
    def __init__(self, engine, faults: list[EngineFault], calls: EngineCalls):
        self.engine, self.faults, self.calls = engine, faults, calls
        self.name = engine.name
        self.default_voice = engine.default_voice
        self.identity = engine.identity

    def synthesize(self, text, voice):
        with self.calls.lock:
            self.calls.texts.append(text)
            fault = next((f for f in self.faults if f.match in text and (f.times is None or f.failures < f.times)), None)
            if fault:
                fault.failures += 1
        if fault:
            raise fault.error()
        return self.engine.synthesize(text, voice)


@contextmanager
def engine_faults(*faults: EngineFault):
    """Within the block every engine the pipeline gets fails as the faults say; yields the calls it saw."""
    calls = EngineCalls()
    real_get_engine = engines.get_engine
    engines.get_engine = lambda name, settings=None: _FaultyEngine(real_get_engine(name, settings), list(faults), calls)
    try:
        yield calls
    finally:
        engines.get_engine = real_get_engine


# -- SPEC faults -----------------------------------------------------------------------------------------------

MAX_N = 1000
MAX_MS = 600_000
SYNTHESIZE_FUNCTION = "SynthesizeFunction"
CONNECT_FUNCTION = "ConnectFunction"

_DDB_THROTTLED = ("ProvisionedThroughputExceededException", 400,
                  "The level of configured provisioned throughput for the table was exceeded.")
# service, operation, error code, HTTP status, message: what AWS answers a throttled request. The one list of
# throttle targets: the SPEC pattern and the grammar are made from it.
_THROTTLES = {
    "s3:put": ("s3", "PutObject", "SlowDown", 503, "Please reduce your request rate."),
    "ddb:update": ("dynamodb", "UpdateItem", *_DDB_THROTTLED),
    "ddb:get": ("dynamodb", "GetItem", *_DDB_THROTTLED),
    "ddb:batchwrite": ("dynamodb", "BatchWriteItem", *_DDB_THROTTLED),
    "sfn:start": ("stepfunctions", "StartExecution", "ThrottlingException", 400, "Rate exceeded"),
}
_ENGINE = re.compile(r"engine:part=(?P<part>\d{1,4}):"
                     r"(?:(?P<mode>transient|slow)=(?P<value>\d{1,6})|(?P<permanent>permanent))")
_THROTTLE = re.compile(rf"(?P<target>{'|'.join(map(re.escape, _THROTTLES))}):throttle=(?P<n>\d{{1,4}})"
                       r"(?::function=(?P<function>[A-Za-z0-9]{1,64}))?")
_DUPLICATE = re.compile(r"map:duplicate=(?P<part>\d{1,4})")
_RETRY = re.compile(r"connect:retry=(?P<n>\d{1,4})")
GRAMMAR = ("engine:part=K:transient=N | engine:part=K:permanent | engine:part=K:slow=MS | "
           + " | ".join(f"{target}:throttle=N" for target in _THROTTLES) + " (each [:function=LOGICAL_ID]) | "
           "map:duplicate=K | connect:retry=N")


class SpecError(argparse.ArgumentTypeError, ValueError):
    """A SPEC that is not in the grammar. An ArgumentTypeError, so `type=faults.parse` shows this message."""


@dataclass(frozen=True)
class Fault:
    spec: str


@dataclass(frozen=True)
class EnginePartFault(Fault):
    part: int
    mode: str  # transient | permanent | slow
    value: int = 0  # N failures (transient) or MS (slow)


@dataclass(frozen=True)
class Throttle(Fault):
    service: str
    operation: str
    code: str
    status: int
    message: str
    times: int
    function: str = ""  # a logical id: only this function's calls are throttled


@dataclass(frozen=True)
class DuplicateItem(Fault):
    part: int


@dataclass(frozen=True)
class ConnectRetry(Fault):
    times: int


def parse(spec: str) -> Fault:
    """One fault from its SPEC (see the module docstring); SpecError (a ValueError) says what is accepted."""
    text = spec.strip() if isinstance(spec, str) else ""
    if match := _ENGINE.fullmatch(text):
        part = _number(match["part"], "K", 0, config.MAX_PARTS - 1, spec)
        if match["permanent"]:
            return EnginePartFault(text, part, "permanent")
        limit = MAX_N if match["mode"] == "transient" else MAX_MS
        return EnginePartFault(text, part, match["mode"], _number(match["value"], "N" if limit == MAX_N else "MS",
                                                                  1, limit, spec))
    if match := _THROTTLE.fullmatch(text):
        service, operation, code, status, message = _THROTTLES[match["target"]]
        return Throttle(text, service, operation, code, status, message, _number(match["n"], "N", 1, MAX_N, spec),
                        match["function"] or "")
    if match := _DUPLICATE.fullmatch(text):
        return DuplicateItem(text, _number(match["part"], "K", 0, config.MAX_PARTS - 1, spec))
    if match := _RETRY.fullmatch(text):
        return ConnectRetry(text, _number(match["n"], "N", 1, MAX_N, spec))
    raise SpecError(f"fault {spec!r} is not a SPEC; use one of: {GRAMMAR}")


def _number(raw: str, name: str, low: int, high: int, spec: str) -> int:
    value = int(raw)
    if not low <= value <= high:
        raise SpecError(f"fault {spec!r}: {name} must be {low} to {high}, got {value}")
    return value


def parts_of(text: str, settings: config.Settings | None = None) -> list[str]:
    """The parts a stream of `text` will have (part K is the K-th), chunked as the workflow's Plan does."""
    settings = settings or config.load()
    return chunking.split_for_speech(text, first_max=settings.first_chunk_max_chars,
                                     target=settings.chunk_target_chars, max_len=settings.chunk_max_chars)


# What runs on this thread: which function, with which event, speaking which part (stream id, index). Engine and
# AWS faults use it to tell part K of a stream, or one function's calls, from the rest. Context variables, so
# that the threads a handler starts with its context (streams._Background) count as that function too.
_function: ContextVar[tuple[str, object]] = ContextVar("faults_function", default=("", None))
_part: ContextVar[tuple[str, int] | None] = ContextVar("faults_part", default=None)


def _current() -> tuple[str, object]:
    return _function.get()


def _speaking() -> tuple[str, int] | None:
    return _part.get()


def _part_of(event) -> tuple[str, int] | None:
    if isinstance(event, dict) and isinstance(event.get("stream_id"), str) and type(event.get("index")) is int:
        return event["stream_id"], event["index"]
    return None


class Injection:
    """The faults in force within one `injected` block, and what they did (`report()`)."""

    def __init__(self, cloud, faults: list[Fault]):
        self.cloud, self.faults = cloud, faults
        self.fired: dict[str, int] = {fault.spec: 0 for fault in faults}
        self.log: list[str] = []
        self._lock = threading.Lock()
        self._engine_failures: dict[tuple[str, str], int] = {}
        # How often SynthesizeFunction was invoked for each (stream id, part index), duplicates and retries included.
        self.deliveries: dict[tuple[str, int], int] = {}
        self._duplicated: set[tuple[str, str]] = set()
        self._undo: list = []
        self._active = False

    # -- what happened -------------------------------------------------------------------------------------
    def report(self) -> dict:
        with self._lock:
            return {"faults": [fault.spec for fault in self.faults], "fired": dict(self.fired), "log": list(self.log)}

    def _record(self, fault: Fault, what: str):
        with self._lock:
            self.fired[fault.spec] += 1
            if len(self.log) < 1000:
                self.log.append(f"{fault.spec}: {what}")

    def _of(self, kind) -> list:
        return [fault for fault in self.faults if isinstance(fault, kind)]

    # -- switching on and off --------------------------------------------------------------------------------
    def start(self):
        unknown = [t.spec for t in self._of(Throttle) if t.function and t.function not in self.cloud.functions]
        if unknown:
            raise SpecError(f"fault {unknown[0]!r} names a function that is not in template.yaml; "
                            f"known: {', '.join(self.cloud.functions)}")
        self._active = True
        try:
            if self._of(EnginePartFault):
                self._watch_parts()
                self._wrap_engines()
            throttles = self._of(Throttle)
            if throttles:
                self._hook_clients(throttles)
            self._wrap_functions()
        except BaseException:
            self.stop()
            raise

    def stop(self):
        self._active = False
        while self._undo:
            self._undo.pop()()

    def _wrap_functions(self):
        """Run each function of the cloud through `_invoke`, which knows the running function and applies the
        delivery faults (a duplicated Map item, Connect's retries)."""
        for logical_id, function in self.cloud.functions.items():
            inner = function.call  # the method, or the wrapper of an enclosing injection
            own = "call" in vars(function)

            def wrapper(event, _logical_id=logical_id, _inner=inner):
                return self._invoke(_logical_id, _inner, event)

            function.call = wrapper
            self._undo.append(lambda f=function, i=inner, o=own: setattr(f, "call", i) if o else delattr(f, "call"))

    def _invoke(self, logical_id: str, inner, event):
        if not self._active:
            return inner(event)
        if logical_id == SYNTHESIZE_FUNCTION and _part_of(event):
            with self._lock:
                self.deliveries[_part_of(event)] = self.deliveries.get(_part_of(event), 0) + 1
        if logical_id == CONNECT_FUNCTION:
            for fault in self._of(ConnectRetry):
                for attempt in range(fault.times):
                    try:
                        self._run(logical_id, inner, event)
                    except Exception as error:  # noqa: BLE001 - a retried attempt's outcome is never seen
                        self._record(fault, f"attempt {attempt + 1} raised {type(error).__name__}")
                    else:
                        self._record(fault, f"attempt {attempt + 1} replied; Connect retried anyway")
        duplicate = self._duplicate_for(logical_id, event)
        if duplicate is None:
            return self._run(logical_id, inner, event)
        fault, part = duplicate
        outcome: list[str] = []

        def deliver_again():
            with self._lock:
                self.deliveries[part] += 1
            try:
                self._run(logical_id, inner, event)
                outcome.append("succeeded")
            except Exception as error:  # noqa: BLE001 - the duplicate's outcome is not the Map's
                outcome.append(f"raised {type(error).__name__}: {error}")

        second = threading.Thread(target=deliver_again, name=f"duplicate-{part[0]}-{part[1]}", daemon=True)
        second.start()
        try:
            return self._run(logical_id, inner, event)
        finally:
            second.join()
            self._record(fault, f"stream {part[0]} part {part[1]} delivered twice; the second {outcome[0]}")

    def _duplicate_for(self, logical_id: str, event):
        part = _part_of(event)
        if logical_id != SYNTHESIZE_FUNCTION or part is None:
            return None
        for fault in self._of(DuplicateItem):
            if fault.part == part[1]:
                with self._lock:
                    if (fault.spec, part[0]) in self._duplicated:
                        continue  # once per stream: a Retry of the same item is not another duplicate
                    self._duplicated.add((fault.spec, part[0]))
                return fault, part
        return None

    @staticmethod
    def _run(logical_id: str, inner, event):
        token = _function.set((logical_id, event))
        try:
            return inner(event)
        finally:
            _function.reset(token)

    # -- the engine ----------------------------------------------------------------------------------------
    def _watch_parts(self):
        """Note which part is being spoken: every function that speaks one calls pipeline.speak_part."""
        real = pipeline.speak_part

        def speak_part(settings, part):
            token = _part.set(_part_of(part))
            try:
                return real(settings, part)
            finally:
                _part.reset(token)

        pipeline.speak_part = speak_part
        self._undo.append(lambda: setattr(pipeline, "speak_part", real))

    def _wrap_engines(self):
        real_get_engine = engines.get_engine

        def get_engine(*args, **kwargs):
            return hooks.HookedEngine(real_get_engine(*args, **kwargs), self.engine_fault)

        engines.get_engine = get_engine
        self._undo.append(lambda: setattr(engines, "get_engine", real_get_engine))

    def engine_fault(self, text: str):
        """Called by the engine before it speaks: sleep, or raise, as a fault on the running part says."""
        part = _speaking() if self._active else None
        if part is None:
            return
        stream_id, index = part
        for fault in self._of(EnginePartFault):
            if fault.part != index:
                continue
            if fault.mode == "slow":
                self._record(fault, f"stream {stream_id} part {index} slowed by {fault.value} ms")
                time.sleep(fault.value / 1000)
            elif fault.mode == "permanent":
                self._record(fault, f"stream {stream_id} part {index} rejected")
                raise PermanentSynthesisError(f"the engine rejected part {index} (fault {fault.spec})")
            else:
                with self._lock:
                    failures = self._engine_failures.get((fault.spec, stream_id), 0)
                    if failures < fault.value:
                        self._engine_failures[(fault.spec, stream_id)] = failures + 1
                if failures < fault.value:
                    self._record(fault, f"stream {stream_id} part {index} timed out ({failures + 1}/{fault.value})")
                    raise RetryableError(f"the engine timed out on part {index} (fault {fault.spec}, "
                                         f"{failures + 1} of {fault.value})")

    # -- AWS -----------------------------------------------------------------------------------------------
    def _hook_clients(self, throttles: list[Throttle]):
        """Throttle our functions' AWS calls at their botocore clients. Handlers make clients from boto3's
        default session, which hands each new client a copy of its event hooks: hook the session for clients
        made from now on and every client the handler modules already hold."""
        import boto3

        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        hooks = [(f"before-call.{t.service}.{t.operation}", _ThrottleHook(self, t), f"localcloud-fault-{id(self)}-{i}")
                 for i, t in enumerate(throttles)]
        emitters = [boto3.DEFAULT_SESSION.events] + [client.meta.events for client in self._function_clients()]
        for emitter in emitters:
            for event_name, hook, unique_id in hooks:
                emitter.register(event_name, hook, unique_id=unique_id)

        def unhook():
            # Clients made during the block copied the hooks too: unhook them as well (a hook left anywhere
            # else is inert once the injection is over).
            for emitter in emitters + [client.meta.events for client in self._function_clients()]:
                for event_name, _, unique_id in hooks:
                    emitter.unregister(event_name, unique_id=unique_id)

        self._undo.append(unhook)

    def _function_clients(self):
        return hooks.handler_clients(self.cloud)

    def throttle(self, fault: Throttle, model):
        function, _ = _current()
        if not self._active or not function or (fault.function and fault.function != function):
            return
        with self._lock:
            left = self.fired[fault.spec] < fault.times
            if left:
                self.fired[fault.spec] += 1
                self.log.append(f"{fault.spec}: {function} {fault.service}.{fault.operation} throttled")
        if left:
            raise _client_error(model.service_model, fault)


class _ThrottleHook:
    def __init__(self, injection: Injection, fault: Throttle):
        self.injection, self.fault = injection, fault

    def __call__(self, model, **kwargs):
        self.injection.throttle(self.fault, model)


_exception_classes: dict[str, object] = {}


def _client_error(service_model, fault: Throttle) -> ClientError:
    """The exception botocore raises for this error code: the modeled class where there is one."""
    name = service_model.service_name
    if name not in _exception_classes:
        _exception_classes[name] = ClientExceptionsFactory().create_client_exceptions(service_model)
    error_class = _exception_classes[name].from_code(fault.code)
    response = {"Error": {"Code": fault.code, "Message": f"{fault.message} (fault {fault.spec})"},
                "ResponseMetadata": {"HTTPStatusCode": fault.status, "RequestId": "localcloud-fault"}}
    return error_class(response, fault.operation)


@contextmanager
def injected(cloud, *specs):
    """Within the block, the local cloud's functions meet these faults (SPEC strings or parsed Faults);
    everything is restored after. Yields the Injection: `report()` says which faults fired, and how often."""
    faults = [spec if isinstance(spec, Fault) else parse(spec) for spec in specs]
    injection = Injection(cloud, faults)
    injection.start()
    try:
        yield injection
    finally:
        injection.stop()
