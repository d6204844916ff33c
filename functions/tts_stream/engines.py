"""Speech engines behind one small shape: `synthesize(text, voice) -> Speech`.

- `espeak`: eSpeak NG, the offline default; no network and no model download, so tests and the local cloud
  speak real audio.
- `polly`: Amazon Polly, PCM at 8 kHz (Connect's rate, so nothing is resampled), plain text only.
- `http`: a team's own TTS server (a custom or cloned voice) behind the contract in the README.

Every engine also says which voice speaks a language by default (`default_voice`) and which of its settings,
besides text and voice, change the audio (`identity`), so a cache can tell two engines' audio apart.
Errors are classified for the workflow: `RetryableError` (throttling, timeouts, 5xx) is retried,
`PermanentSynthesisError` (bad text, unknown voice, unusable audio) is recorded as the part's failure.
Messages never repeat the text, which is the caller's or the chatbot's words.
"""

import audioop
import ctypes
import dataclasses
import functools
import http.client
import json
import re
import ssl
import struct
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from tts_stream import config, deadline, secrets
from tts_stream.audio import SUPPORTED_SAMPLE_RATES
from tts_stream.errors import (
    InvalidInput,
    PermanentSynthesisError,
    RetryableError,
    aws_error,
    is_transient_aws_error,
)

LANGUAGES = ("en", "ko")


@dataclass(frozen=True)
class Speech:
    """Mono signed 16-bit little-endian PCM as an engine made it; audio.to_connect_wav makes it playable."""

    pcm16: bytes
    sample_rate: int


class Engine(Protocol):
    name: str

    def synthesize(self, text: str, voice: str) -> Speech: ...

    def default_voice(self, language: str) -> str: ...

    def identity(self) -> dict[str, str]: ...


def _check_text(text: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise PermanentSynthesisError("text is empty: there is nothing to speak")
    return text


def _default_voice(engine: str, voices: dict[str, str], language: str) -> str:
    if language not in voices:
        raise InvalidInput(f"no default {engine} voice for language {language!r}: use one of {', '.join(voices)}")
    return voices[language]


# --- eSpeak NG ------------------------------------------------------------------------------------------

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
        lib = _espeak_library()
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
        import espeakng_loader

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


@functools.cache
def _espeak_library() -> ctypes.CDLL:
    # Imported here: deployments that use another engine need not ship the espeak wheel.
    import espeakng_loader

    return ctypes.CDLL(espeakng_loader.get_library_path())


@functools.cache
def _espeak_version() -> str:
    lib = _espeak_library()
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p
    return lib.espeak_Info(None).decode()  # a constant string; needs no espeak_Initialize


class EspeakEngine:
    """Offline eSpeak NG (GPL-3.0-or-later) through ctypes; loaded on first use to keep cold starts short."""

    name = "espeak"
    voices = {"en": "en-us", "ko": "ko"}

    def synthesize(self, text: str, voice: str) -> Speech:
        global _espeak
        _check_text(text)
        if "\x00" in text:
            raise PermanentSynthesisError("text contains a NUL character, which would cut it short")
        if not isinstance(voice, str) or not _VOICE_NAME.fullmatch(voice):
            raise _unknown_voice(voice)
        with _espeak_lock:
            if _espeak is None:
                _espeak = _Espeak()
            return _espeak.speak(text, voice)

    def default_voice(self, language: str) -> str:
        return _default_voice(self.name, self.voices, language)

    def identity(self) -> dict[str, str]:
        # Another eSpeak NG release pronounces differently; the sample rate is fixed by the library.
        return {"espeak_ng": _espeak_version()}


def _unknown_voice(voice: object) -> PermanentSynthesisError:
    return PermanentSynthesisError(f"unknown eSpeak NG voice {voice!r}: use a voice name such as en-us, en or ko")


# --- Amazon Polly ---------------------------------------------------------------------------------------

POLLY_ENGINE_TYPES = ("standard", "neural", "long-form", "generative")
POLLY_PCM_SAMPLE_RATES = (8000, 16000)
# Polly takes 6,000 characters per request but bills at most 3,000; the chunker keeps parts far shorter.
POLLY_MAX_CHARS = 3000
_POLLY_VOICE_ID = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,63}")
# What each refusal means, for the person reading the part's failure. Polly's own messages are not repeated
# verbatim: a validation message can quote the request, and the request holds the caller's words.
_POLLY_PERMANENT_REASONS = {
    "TextLengthExceededException": "the text is longer than Polly accepts in one request",
    "InvalidSsmlException": "Polly read the text as invalid SSML",
    "InvalidSampleRateException": "Polly does not offer PCM at {rate} Hz",
    "EngineNotSupportedException": "voice {voice!r} is not available on the {engine} engine",
    "LexiconNotFoundException": "a lexicon named in the request does not exist in this region",
    "MarksNotSupportedForFormatException": "speech marks cannot be requested with audio output",
    "SsmlMarksNotSupportedForTextTypeException": "SSML marks were requested for plain text",
    "ValidationException": "Polly rejected the request: check that voice {voice!r} exists (voice ids are "
    "case-sensitive, such as Joanna or Seoyeon) and speaks on the {engine} engine",
    "LanguageNotSupportedException": "voice {voice!r} does not support the requested language",
    "AccessDeniedException": "the function's role may not call polly:SynthesizeSpeech",
}

# Request field names, which Polly's validation messages quote next to the offending value.
_POLLY_FIELDS = ("text", "voiceId", "engine", "sampleRate", "outputFormat", "textType", "languageCode")

_client_lock = threading.Lock()
_polly_clients: dict[str | None, object] = {}


class PollyEngine:
    """Amazon Polly `SynthesizeSpeech`, PCM16 at 8 kHz, plain text (markup in the text is spoken, not obeyed)."""

    name = "polly"
    # Each engine type's default voices: Polly refuses a voice on an engine it was not made for (every part would
    # fail with EngineNotSupportedException), and its long-form and generative engines have no Korean voice.
    DEFAULT_VOICES = {"standard": {"en": "Joanna", "ko": "Seoyeon"}, "neural": {"en": "Joanna", "ko": "Seoyeon"},
                      "generative": {"en": "Joanna"}, "long-form": {"en": "Danielle"}}

    def __init__(self, client=None, engine_type: str = "neural", sample_rate: int = 8000, *, region: str | None = None):
        if engine_type not in POLLY_ENGINE_TYPES:
            raise InvalidInput(
                f"Polly engine {engine_type!r} is not one of {', '.join(POLLY_ENGINE_TYPES)} (setting POLLY_ENGINE)"
            )
        if sample_rate not in POLLY_PCM_SAMPLE_RATES:
            raise InvalidInput(f"Polly PCM sample rate {sample_rate!r} is not one of 8000, 16000")
        self.engine_type = engine_type
        self.voices = self.DEFAULT_VOICES[engine_type]
        self.sample_rate = sample_rate
        self.region = region
        self._client = client

    def synthesize(self, text: str, voice: str) -> Speech:
        _check_text(text)
        if len(text) > POLLY_MAX_CHARS:
            raise PermanentSynthesisError(
                f"text has {len(text)} characters; Polly takes at most {POLLY_MAX_CHARS} per part: lower ChunkMaxChars"
            )
        if not isinstance(voice, str) or not _POLLY_VOICE_ID.fullmatch(voice):
            raise PermanentSynthesisError(f"{voice!r} is not a Polly voice id: use one such as Joanna or Seoyeon")
        client = self._polly()
        with self._classified(text, voice):
            response = client.synthesize_speech(
                Text=text,
                TextType="text",  # never "ssml": caller or chatbot text must not be able to inject markup
                OutputFormat="pcm",
                SampleRate=str(self.sample_rate),
                VoiceId=voice,
                Engine=self.engine_type,
            )
            stream = response["AudioStream"]
            try:
                pcm16 = stream.read()
            finally:
                stream.close()
        if not pcm16:
            raise PermanentSynthesisError(f"Polly returned no audio for this text (voice {voice!r})")
        if len(pcm16) % 2:
            raise RetryableError(f"Polly's audio ended mid-sample ({len(pcm16)} bytes): the stream was cut short")
        return Speech(pcm16=pcm16, sample_rate=self.sample_rate)

    def default_voice(self, language: str) -> str:
        if language in ("en", "ko") and language not in self.voices:  # known before a part is ever asked for
            raise InvalidInput(f"Polly's {self.engine_type} engine has no Korean voice: set PollyEngine to neural "
                               "or standard for Korean answers (or VoiceKorean to a voice this engine has)")
        return _default_voice(self.name, self.voices, language)

    def identity(self) -> dict[str, str]:
        return {"engine_type": self.engine_type, "sample_rate": str(self.sample_rate)}

    def _polly(self):
        if self._client is None:
            self._client = _shared_polly_client(self.region)
        return self._client

    @contextmanager
    def _classified(self, text: str, voice: str):
        try:
            yield
        except ClientError as error:
            code, status = aws_error(error)
            if is_transient_aws_error(error):
                raise RetryableError(f"Polly failed with {code or status} (voice {voice!r}): try again") from error
            reason = _POLLY_PERMANENT_REASONS.get(code, "Polly refused the request")
            reason = reason.format(voice=voice, engine=self.engine_type, rate=self.sample_rate)
            keep = (voice, self.engine_type, *_POLLY_FIELDS)
            detail = _redact(error.response.get("Error", {}).get("Message", ""), text, keep=keep)
            message = f"{reason} ({code or f'HTTP {status}'})" + (f"; Polly says: {detail}" if detail else "")
            raise PermanentSynthesisError(message) from error
        except ParamValidationError as error:
            # Its message quotes the parameters, text included: name the problem without it.
            raise PermanentSynthesisError(
                f"the Polly request failed validation before sending (voice {voice!r})"
            ) from error
        except BotoCoreError as error:
            # Timeouts, refused or reset connections, a stream cut mid-read: another attempt may succeed.
            raise RetryableError(f"Polly request failed: {error}") from error


def _shared_polly_client(region: str | None):
    # One client per region and process. Clients are thread-safe; building them on boto3's shared default
    # session is not, so each gets a session of its own.
    with _client_lock:
        if region not in _polly_clients:
            import boto3
            from botocore.config import Config

            _polly_clients[region] = config.bounded(boto3.session.Session().client(
                "polly",
                region_name=region,
                # One quick retry inside the call; the workflow's Retry backs off for longer throttling.
                config=Config(connect_timeout=2, read_timeout=10, retries={"mode": "standard", "total_max_attempts": 2}),
            ))
        return _polly_clients[region]


def _redact(message: str, text: str, keep: tuple[str, ...] = ()) -> str:
    """A service's message without the text and without any quoted value other than `keep`, cut to 200 chars."""
    if not message:
        return ""
    if text:
        message = message.replace(text, "<text>")
    message = re.sub(r"'([^']*)'", lambda m: m.group(0) if m.group(1) in keep else "'…'", message)
    message = " ".join(message.split())
    return message[:200]


# --- A team's own TTS server over HTTP -----------------------------------------------------------------

HTTP_MAX_AUDIO_BYTES = 32 * 1024 * 1024  # 5 minutes (Connect's longest prompt) of 48 kHz PCM16 fits
HTTP_ERROR_BODY_CHARS = 200
_HTTP_ERROR_BODY_BYTES = 4096
_HTTP_READ_SIZE = 64 * 1024
_WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")
_ACCEPT = "audio/wav, audio/L16, application/octet-stream"
_WAV_PCM, _WAV_EXTENSIBLE = 1, 0xFFFE
_WAV_UNKNOWN_LENGTHS = (0, 0xFFFFFFFF)  # what streaming writers put in a data chunk whose length they did not know
_WAV_FORMAT_NAMES = {3: "32-bit float", 6: "A-law", 7: "u-law", 2: "ADPCM", 0x11: "IMA ADPCM", 0x55: "MP3"}


class HttpEngine:
    """POST `{"text", "voice"}` as JSON to a TTS server; it answers with WAV or raw PCM16 at a common rate.

    The connect timeout covers the TCP connection (and TLS handshake); the read timeout is the deadline for the
    whole answer after the request is sent. `auth_header` is the Authorization header's value, or a function
    returning it (so a secret is read when a part is spoken, not when the engine is built).
    """

    name = "http"
    # The server's voice names are the team's own: by default it is asked for the language's code.
    voices = {"en": "en", "ko": "ko"}

    def __init__(
        self,
        url: str,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 10.0,
        auth_header: str | Callable[[], str] | None = None,
    ):
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput(f"TTS server URL {url!r} is not an http:// or https:// URL (setting TTS_URL)")
        if any(char.isspace() or not char.isprintable() for char in url):
            raise InvalidInput(f"TTS server URL {url!r} contains a space or a control character: percent-encode "
                               "it (setting TTS_URL)")
        try:
            port = parts.port
        except ValueError:
            raise InvalidInput(f"TTS server URL {url!r} has an invalid port (setting TTS_URL)") from None
        for label, value in (("connect", connect_timeout_s), ("read", read_timeout_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidInput(f"TTS server {label} timeout {value!r} must be a positive number of seconds")
        self.url = url
        self.connect_timeout_s = float(connect_timeout_s)
        self.read_timeout_s = float(read_timeout_s)
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port
        self._target = deadline.request_target(parts)
        # For messages: no credentials or query string, which may carry a token.
        self._where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        self._auth = auth_header

    def __repr__(self) -> str:
        return f"HttpEngine({self._where!r}, auth={'yes' if self._auth else 'no'})"

    def synthesize(self, text: str, voice: str) -> Speech:
        _check_text(text)
        if not isinstance(voice, str) or not voice.strip():
            raise PermanentSynthesisError("voice is empty: the TTS server needs a voice name")
        headers = {"Content-Type": "application/json; charset=utf-8", "Accept": _ACCEPT,
                   "User-Agent": "connect-tts-stream"}
        auth = self._auth_value()
        if auth:
            headers["Authorization"] = auth
        body = json.dumps({"text": text, "voice": voice}, ensure_ascii=False).encode("utf-8")
        status, reason, response_headers, payload = self._post(body, headers)
        if status == 429 or status == 408 or status >= 500:
            raise RetryableError(
                f"TTS server {self._where} answered {status} {reason}{_snippet(payload, text)}: try again"
            )
        if not 200 <= status < 300:
            raise PermanentSynthesisError(
                f"TTS server {self._where} refused the part with {status} {reason}{_snippet(payload, text)}"
            )
        encoding = (response_headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":  # http.client asks for identity; a server that compresses anyway always will
            raise PermanentSynthesisError(
                f"TTS server {self._where} sent its audio with Content-Encoding {encoding}: send it uncompressed"
            )
        try:
            pcm16, sample_rate = _decode_audio(response_headers, payload)
        except ValueError as problem:
            raise PermanentSynthesisError(f"TTS server {self._where} sent unusable audio: {problem}") from None
        return Speech(pcm16=pcm16, sample_rate=sample_rate)

    def default_voice(self, language: str) -> str:
        return _default_voice(self.name, self.voices, language)

    def identity(self) -> dict[str, str]:
        return {"url": self.url}

    def _auth_value(self) -> str | None:
        if self._auth is None:
            return None
        value = self._auth() if callable(self._auth) else self._auth
        try:
            return secrets.header_value(value, "the TTS auth secret (TTS_AUTH_SECRET)")
        except ValueError as error:
            raise PermanentSynthesisError(str(error)) from None

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, http.client.HTTPMessage, bytes]:
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.connect_timeout_s, context=_tls_context()
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self.connect_timeout_s)
        try:
            try:
                connection.connect()
            except TimeoutError:
                raise RetryableError(
                    f"could not connect to TTS server {self._where} within {self.connect_timeout_s:g} s: try again"
                ) from None
            except ssl.SSLCertVerificationError as error:
                raise PermanentSynthesisError(
                    f"TTS server {self._where} has a certificate this function cannot trust: {error.verify_message}"
                ) from None
            except OSError as error:
                raise RetryableError(f"could not connect to TTS server {self._where}: {error}: try again") from error
            # The response may take the socket over from the connection: keep it to move the deadline.
            sock = connection.sock
            ends = time.monotonic() + self.read_timeout_s
            sock.settimeout(self.read_timeout_s)
            cut_off = threading.Event()
            try:
                # Each read waits at most until the deadline; the status line and headers, which http.client reads
                # itself, are bounded by shutting the socket at the deadline.
                with deadline.cut_off_at(sock, self.read_timeout_s) as cut_off:
                    connection.request("POST", self._target, body=body, headers=headers)
                    response = connection.getresponse()
                    ok = 200 <= response.status < 300
                    limit = HTTP_MAX_AUDIO_BYTES if ok else _HTTP_ERROR_BODY_BYTES
                    payload = _read_until(response, sock, ends, limit, truncate=not ok)
                if cut_off.is_set():
                    raise TimeoutError
                if ok and payload is None:
                    raise PermanentSynthesisError(
                        f"TTS server {self._where} sent more than {limit} bytes of audio for one part"
                    )
                return response.status, response.reason, response.headers, payload or b""
            except (OSError, http.client.HTTPException) as error:
                if cut_off.is_set() or isinstance(error, TimeoutError):
                    raise RetryableError(
                        f"TTS server {self._where} did not answer within {self.read_timeout_s:g} s: try again"
                    ) from None
                raise RetryableError(
                    f"connection to TTS server {self._where} failed: {type(error).__name__}: {error}: try again"
                ) from error
        finally:
            connection.close()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def _read_until(response, sock, ends: float, limit: int, *, truncate: bool) -> bytes | None:
    """The body, read by `ends` (monotonic); None if it exceeds `limit` (or its first `limit` bytes if `truncate`)."""
    chunks, size = [], 0
    while not response.isclosed():  # closed once the whole body has arrived; its socket is gone then
        remaining = ends - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = response.read1(_HTTP_READ_SIZE)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit] if truncate else None
    if response.length and not truncate:  # closed before its Content-Length arrived: cut-off audio, never a part
        raise http.client.IncompleteRead(b"".join(chunks), response.length)
    return b"".join(chunks)


def _snippet(payload: bytes, text: str) -> str:
    """Up to 200 characters of a server's error body, for the part's failure message."""
    message = " ".join(payload.decode("utf-8", errors="replace").split())
    if text:
        message = message.replace(text.strip(), "<text>")
    return f": {message[:HTTP_ERROR_BODY_CHARS]}" if message else ""


def _decode_audio(headers, payload: bytes) -> tuple[bytes, int]:
    """(PCM16 mono, rate) from a 2xx answer; ValueError names what is wrong with it."""
    if not payload:
        raise ValueError("the body is empty")
    if not headers.get("Content-Type"):
        raise ValueError("no Content-Type: send audio/wav, audio/L16; rate=N, or application/octet-stream "
                         "with X-Sample-Rate")
    content_type = headers.get_content_type()
    # A whole WAV file sent as raw audio would play its header as a click: it is read as the WAV it is
    is_wav = payload[:4] == b"RIFF" and payload[8:12] == b"WAVE"
    if content_type in _WAV_TYPES or (is_wav and content_type in ("audio/l16", "application/octet-stream")):
        pcm16, rate, channels = _read_wav(payload)
    elif content_type == "audio/l16":
        rate = _whole_number(headers.get_param("rate"), "the rate parameter of audio/L16")
        channels = _whole_number(headers.get_param("channels") or "1", "the channels parameter of audio/L16")
        pcm16 = payload
    elif content_type == "application/octet-stream":
        rate = _whole_number(headers.get("X-Sample-Rate"), "the X-Sample-Rate header of application/octet-stream")
        channels, pcm16 = 1, payload
    else:
        raise ValueError(f"content type {content_type!r} is not audio: send audio/wav, audio/L16; rate=N, "
                         "or application/octet-stream with X-Sample-Rate")
    if channels not in (1, 2):
        raise ValueError(f"{channels} channels: send mono (stereo is mixed down)")
    if len(pcm16) % (2 * channels):
        layout = "stereo" if channels == 2 else "mono"
        raise ValueError(f"{len(pcm16)} bytes is not a whole number of 16-bit {layout} samples")
    if rate not in SUPPORTED_SAMPLE_RATES:
        raise ValueError(f"sample rate {rate} Hz is not supported: use one of "
                         f"{', '.join(str(r) for r in SUPPORTED_SAMPLE_RATES)}")
    # audio/L16 is network byte order (RFC 2586), unless the server says `endianness=little-endian` (as some
    # speech APIs do); WAV and octet-stream are little-endian.
    if (content_type == "audio/l16" and not is_wav
            and (headers.get_param("endianness") or "").lower() != "little-endian"):
        pcm16 = audioop.byteswap(pcm16, 2)
    if channels == 2:
        pcm16 = audioop.tomono(pcm16, 2, 0.5, 0.5)
    if not pcm16:
        raise ValueError("the audio holds no samples")
    return pcm16, rate


def _whole_number(raw, what: str) -> int:
    if raw is None or not str(raw).strip().isdigit():
        raise ValueError(f"{what} is {'missing' if raw is None else repr(raw)}: give a whole number")
    return int(str(raw).strip())


def _read_wav(data: bytes) -> tuple[bytes, int, int]:
    """PCM16 samples, rate and channels of a RIFF WAV, or of WAV files sent one after another (a server that
    streams a file a sentence) when they share a format; lenient only about sizes a streaming writer cannot know."""
    samples, rate, channels, end = _read_one_wav(data, 0)
    pieces = [samples]
    while data.startswith(b"RIFF", end):
        more, more_rate, more_channels, end = _read_one_wav(data, end)
        if (more_rate, more_channels) != (rate, channels):
            raise ValueError(f"the body holds WAV files of different formats ({channels} channel(s) at {rate} Hz, "
                             f"then {more_channels} at {more_rate} Hz): send one format")
        pieces.append(more)
    return b"".join(pieces), rate, channels


def _read_one_wav(data: bytes, at: int) -> tuple[bytes, int, int, int]:
    """The WAV file starting at `at`: (samples, rate, channels, where the next file would start)."""
    if len(data) < at + 12 or data[at:at + 4] != b"RIFF" or data[at + 8:at + 12] != b"WAVE":
        raise ValueError("the body is not a WAV file (no RIFF/WAVE header)")
    fmt = samples = None
    offset = at + 12
    while offset + 8 <= len(data) and samples is None:
        chunk_id = data[offset:offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        start = offset + 8
        if chunk_id == b"data":
            # A size no body we take could hold is a placeholder (0x7ffff000 from SoX and espeak-ng writing to a
            # pipe), as are 0 and 0xFFFFFFFF: the audio runs to the end, or to the next file's header.
            if size in _WAV_UNKNOWN_LENGTHS or (size > HTTP_MAX_AUDIO_BYTES and start + size > len(data)):
                following = data.find(b"WAVEfmt ", start + 8)
                size = (following - 8 if following != -1 and data.startswith(b"RIFF", following - 8)
                        else len(data)) - start
            elif start + size > len(data):
                raise ValueError(f"the WAV is truncated: its data chunk declares {size} bytes but "
                                 f"{len(data) - start} arrived")
            samples = data[start:start + size]
        elif chunk_id == b"fmt ":
            fmt = data[start:start + size]
        offset = start + size + size % 2
    if fmt is None or len(fmt) < 16:
        raise ValueError("the WAV has no complete 'fmt ' chunk before its audio")
    if samples is None:
        raise ValueError("the WAV has no 'data' chunk")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _WAV_EXTENSIBLE and len(fmt) >= 26:
        (tag,) = struct.unpack_from("<H", fmt, 24)  # the sub-format GUID starts with the format tag
    if tag != _WAV_PCM:
        kind = _WAV_FORMAT_NAMES.get(tag, f"format tag {tag}")
        raise ValueError(f"the WAV holds {kind} audio: send 16-bit PCM (format tag 1)")
    if bits != 16:
        raise ValueError(f"the WAV holds {bits}-bit PCM: send 16-bit PCM")
    following = data.find(b"RIFF", offset)  # after the audio: chunks we do not need (LIST, id3), or the next file
    if following == -1 or data[following + 8:following + 12] != b"WAVE":
        following = len(data)
    return samples, rate, channels, following


# --- Choosing an engine ---------------------------------------------------------------------------------

ENGINE_NAMES = (EspeakEngine.name, HttpEngine.name, PollyEngine.name)


def pinned_settings(settings: config.Settings, identity: dict[str, str]) -> config.Settings:
    """Settings that rebuild the engine a stream pinned in its manifest, whatever the environment says now."""
    return dataclasses.replace(settings, polly_engine=identity.get("engine_type", settings.polly_engine),
                               tts_url=identity.get("url", settings.tts_url))


def get_engine(name: str, settings: config.Settings | None = None) -> Engine:
    """The engine a request names, built from `settings` (read from the environment when None).

    Building one makes no network call: Polly's client and the TTS server's secret are fetched on first use.
    An unknown name, or settings the engine cannot use, are the request's mistake: InvalidInput.
    """
    if not isinstance(name, str) or name not in ENGINE_NAMES:
        raise InvalidInput(f"unknown engine {name!r}: known engines are {', '.join(sorted(ENGINE_NAMES))}")
    if name == EspeakEngine.name:
        return EspeakEngine()
    settings = config.load() if settings is None else settings
    if name == PollyEngine.name:
        return PollyEngine(engine_type=settings.polly_engine, region=settings.region)
    if not settings.tts_url:
        raise InvalidInput("the http engine needs the TTS server's URL: set TTS_URL (template parameter TtsUrl)")
    auth = functools.partial(secrets.read_secret, settings.tts_auth_secret) if settings.tts_auth_secret else None
    return HttpEngine(
        settings.tts_url,
        connect_timeout_s=settings.tts_connect_timeout_ms / 1000,
        read_timeout_s=settings.tts_read_timeout_ms / 1000,
        auth_header=auth,
    )
