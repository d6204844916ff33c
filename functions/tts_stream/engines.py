"""Speech engines behind one small shape: `synthesize(text, voice) -> Speech`.

eSpeak NG is the offline default: it needs no network and no model download, so tests and the local cloud
speak real audio. Other engines (Polly, HTTP) plug in behind the same shape through `get_engine`.
"""

import ctypes
import re
import threading
from dataclasses import dataclass
from typing import Protocol

from tts_stream.errors import InvalidInput, PermanentSynthesisError


@dataclass(frozen=True)
class Speech:
    """Mono signed 16-bit little-endian PCM as an engine made it; audio.to_connect_wav makes it playable."""

    pcm16: bytes
    sample_rate: int


class Engine(Protocol):
    name: str

    def synthesize(self, text: str, voice: str) -> Speech: ...


# Constants from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit() inside our process
_CHARS_UTF8 = 1  # no espeakSSML flag: markup in the text is read out, never interpreted
_POS_CHARACTER = 1
_EE_OK = 0
_CALLBACK_BUFFER_MS = 500  # fewer, larger callbacks: each one is a trip through Python

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_VOICE_NAME = re.compile(r"[A-Za-z0-9_+\-]+")

# libespeak-ng keeps its voice and synthesis state in globals: one library per process, one caller at a time.
_espeak_lock = threading.Lock()
_espeak = None


class _Espeak:
    """The loaded library, its sample rate and the PCM collected by its callback."""

    def __init__(self) -> None:
        # Imported here: deployments that use another engine need not ship the espeak wheel.
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,  # text
            ctypes.c_size_t,  # size of the text buffer
            ctypes.c_uint,  # position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position
            ctypes.c_uint,  # flags
            ctypes.c_void_p,  # unique identifier out
            ctypes.c_void_p,  # user data
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        data_path = espeakng_loader.get_data_path().encode()
        sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _CALLBACK_BUFFER_MS, data_path, _INITIALIZE_DONT_EXIT
        )
        if sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({sample_rate}) with data path {data_path.decode()}")
        self.lib = lib
        self.sample_rate = sample_rate
        self.chunks: list[bytes] = []
        # The library calls back through this object: it must live as long as the library does.
        self.callback = _SynthCallback(self._collect)
        lib.espeak_SetSynthCallback(self.callback)

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self.chunks.append(ctypes.string_at(samples, count * 2))
        return 0  # 0 = keep synthesizing

    def speak(self, text: str, voice: str) -> Speech:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise _unknown_voice(voice)
        self.chunks = []
        encoded = text.encode("utf-8") + b"\x00"
        status = self.lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        pcm16, self.chunks = b"".join(self.chunks), []
        if status != _EE_OK:
            raise PermanentSynthesisError(f"eSpeak NG failed with error code {status}")
        if not pcm16:
            raise PermanentSynthesisError("eSpeak NG produced no audio for this text")
        return Speech(pcm16=pcm16, sample_rate=self.sample_rate)


class EspeakEngine:
    """Offline eSpeak NG (GPL-3.0-or-later) through ctypes; loaded on first use to keep cold starts short."""

    name = "espeak"

    def synthesize(self, text: str, voice: str) -> Speech:
        global _espeak
        if not isinstance(text, str) or not text.strip():
            raise PermanentSynthesisError("text is empty: there is nothing to speak")
        if "\x00" in text:
            raise PermanentSynthesisError("text contains a NUL character, which would cut it short")
        if not isinstance(voice, str) or not _VOICE_NAME.fullmatch(voice):
            raise _unknown_voice(voice)
        with _espeak_lock:
            if _espeak is None:
                _espeak = _Espeak()
            return _espeak.speak(text, voice)


def _unknown_voice(voice: object) -> PermanentSynthesisError:
    return PermanentSynthesisError(f"unknown eSpeak NG voice {voice!r}: use a voice name such as en-us, en or ko")


_ENGINES = {EspeakEngine.name: EspeakEngine}


def get_engine(name: str) -> Engine:
    """The engine a request names; an unknown name is the caller's mistake, so it is InvalidInput."""
    engine = _ENGINES.get(name) if isinstance(name, str) else None
    if engine is None:
        raise InvalidInput(f"unknown engine {name!r}: known engines are {', '.join(sorted(_ENGINES))}")
    return engine()
