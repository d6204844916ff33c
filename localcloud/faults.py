"""Make the outside world fail on purpose: a speech engine that errors for chosen text.

The engine is where production streams fail (Polly throttles, a TTS server times out or rejects text); this
wraps the real engine so that a rehearsal or a test can make chosen parts fail, transiently or for good,
while everything of ours runs unchanged.
"""

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

from tts_stream import engines
from tts_stream.errors import PermanentSynthesisError, RetryableError


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
