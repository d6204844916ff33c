"""A small, real TTS server speaking the `http` engine's contract: for tests, demos, and as a reference.

    POST /synthesize   {"text": "...", "voice": "..."}   ->   200 with audio spoken by eSpeak NG

It answers as WAV (`audio/wav`), raw `audio/L16; rate=N`, or `application/octet-stream` with `X-Sample-Rate`,
at eSpeak's 22,050 Hz or resampled to another rate (24,000 Hz exercises the client's resampling). Voices
`en` and `ko` are the language defaults; any other name is an eSpeak NG voice (`en-gb`, ...).

Tests make it misbehave for the next requests (`server.inject(status(503, "busy"))`): an error status with a
body, a delay past the client's read timeout, a malformed body, or a dropped connection. It records every
request (headers and JSON body).

    .venv/bin/python -m localcloud.tts_server --port 8700 [--rate 24000] [--response l16]
"""

import argparse
import audioop
import io
import json
import ssl
import sys
import threading
import wave
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tts_stream.engines import EspeakEngine
from tts_stream.errors import PermanentSynthesisError

PATH = "/synthesize"
RESPONSES = ("wav", "l16", "octet")
VOICES = {"en": "en-us", "ko": "ko"}


@dataclass(frozen=True)
class Fault:
    """What the server does instead of answering normally; build one with status, delay, trickle, slow_headers,
    body, malformed, drop or cut."""

    kind: str
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0


def status(code: int, message: str = "") -> Fault:
    """Answer with this status and a plain-text body."""
    return Fault("status", status=code, body=message.encode(), headers=(("Content-Type", "text/plain; charset=utf-8"),))


def delay(seconds: float) -> Fault:
    """Wait this long, then answer normally (a client with a shorter read timeout has given up by then)."""
    return Fault("delay", delay_s=seconds)


def trickle(pieces: int = 20, interval_s: float = 0.1) -> Fault:
    """Answer normally, but send the audio in `pieces` parts `interval_s` apart (a server that stalls mid-answer)."""
    return Fault("trickle", status=pieces, delay_s=interval_s)


def slow_headers(lines: int = 8, interval_s: float = 0.5) -> Fault:
    """Answer normally, but send the status line, then `lines` header lines `interval_s` apart, before the real
    headers and the audio (a server, or a proxy, that stalls before its answer starts)."""
    return Fault("headers", status=lines, delay_s=interval_s)


def body(data: bytes, content_type: str | None = None, **headers: str) -> Fault:
    """Answer 200 with exactly this body and headers (`X_Sample_Rate="8000"` becomes `X-Sample-Rate: 8000`)."""
    pairs = [(name.replace("_", "-"), value) for name, value in headers.items()]
    if content_type is not None:
        pairs.insert(0, ("Content-Type", content_type))
    return Fault("body", body=bytes(data), headers=tuple(pairs))


MALFORMED = {
    "empty": body(b"", "audio/wav"),
    "not-wav": body(b"this is not a wav file at all", "audio/wav"),
    "odd-bytes": body(b"\x00\x01\x02", "audio/L16; rate=22050"),
    "html": body(b"<html><body>Welcome</body></html>", "text/html"),
    "no-rate": body(b"\x00\x00" * 100, "application/octet-stream"),
    "bad-rate": body(b"\x00\x00" * 100, "audio/L16; rate=11025"),
}


def malformed(kind: str) -> Fault:
    """A 200 answer the client cannot use: one of MALFORMED's kinds."""
    return MALFORMED[kind]


def drop() -> Fault:
    """Close the connection without answering."""
    return Fault("drop")


def cut(fraction: float = 0.25) -> Fault:
    """Answer the audio with its whole Content-Length, but close the connection after this fraction of it."""
    return Fault("cut", delay_s=fraction)


@dataclass(frozen=True)
class Request:
    headers: dict[str, str]
    json: object
    path: str  # with its query string


class TtsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address, *, sample_rate: int, response: str, auth: str | None,
        tls: tuple[str, str] | None = None, verbose: bool = False,
    ):
        if response not in RESPONSES:
            raise ValueError(f"response {response!r} is not one of {', '.join(RESPONSES)}")
        if sample_rate not in (8000, 16000, 22050, 24000, 44100, 48000):
            raise ValueError(f"sample rate {sample_rate} is not one the http engine accepts")
        super().__init__(address, _Handler)
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.socket = context.wrap_socket(self.socket, server_side=True)
            self.scheme = "https"
        self.sample_rate, self.response, self.auth, self.verbose = sample_rate, response, auth, verbose
        self.requests: list[Request] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{self.scheme}://{host}:{port}{PATH}"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def inject(self, fault: Fault, times: int = 1) -> None:
        """Apply `fault` to the next `times` requests (after any faults already queued)."""
        with self._lock:
            self._faults.extend([fault] * times)

    def start(self) -> "TtsServer":
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), name="tts-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends delays early
        self.shutdown()
        self.server_close()
        if self._thread:
            self._thread.join()

    def __exit__(self, *exc) -> None:
        self.stop()

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (timeout) leaves a broken pipe behind: expected, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def _arrived(self, headers: dict[str, str], payload: object, path: str) -> Fault | None:
        with self._lock:
            self.requests.append(Request(headers=headers, json=payload, path=path))
            return self._faults.pop(0) if self._faults else None


class _Handler(BaseHTTPRequestHandler):
    server: TtsServer
    server_version = "localcloud-tts/1"
    _trickle: Fault | None = None  # set for a request whose audio is to arrive slowly

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        fault = self.server._arrived(dict(self.headers.items()), payload, self.path)
        if fault is not None:
            if fault.kind == "drop":
                self.close_connection = True
                return
            if fault.kind in ("status", "body"):
                self._send(fault.status, fault.body, list(fault.headers))
                return
            if fault.kind == "delay":
                self.server._stopping.wait(fault.delay_s)
        self._trickle = fault if fault is not None and fault.kind in ("trickle", "cut", "headers") else None
        if self.path.split("?")[0] != PATH:
            return self._error(404, f"no such path {self.path!r}: POST to {PATH}")
        if self.server.auth and self.headers.get("Authorization") != self.server.auth:
            return self._error(401, "missing or wrong Authorization header")
        if not isinstance(payload, dict):
            return self._error(400, 'the body must be a JSON object: {"text": "...", "voice": "..."}')
        text, voice = payload.get("text"), payload.get("voice")
        if not isinstance(text, str) or not text.strip():
            return self._error(400, "text is missing or empty")
        if not isinstance(voice, str) or not voice:
            return self._error(400, "voice is missing")
        try:
            speech = EspeakEngine().synthesize(text, VOICES.get(voice, voice))
        except PermanentSynthesisError as error:
            return self._error(400, str(error))
        pcm16 = speech.pcm16
        if self.server.sample_rate != speech.sample_rate:
            pcm16, _ = audioop.ratecv(pcm16, 2, 1, speech.sample_rate, self.server.sample_rate, None)
        self._send_audio(pcm16, self.server.sample_rate)

    def _send_audio(self, pcm16: bytes, rate: int) -> None:
        if self.server.response == "wav":
            out = io.BytesIO()
            with wave.open(out, "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(rate)
                wav.writeframes(pcm16)
            self._send(200, out.getvalue(), [("Content-Type", "audio/wav")])
        elif self.server.response == "l16":  # network byte order, as RFC 2586 defines audio/L16
            self._send(200, audioop.byteswap(pcm16, 2), [("Content-Type", f"audio/L16; rate={rate}; channels=1")])
        else:
            self._send(200, pcm16, [("Content-Type", "application/octet-stream"), ("X-Sample-Rate", str(rate))])

    def _error(self, code: int, message: str) -> None:
        self._send(code, json.dumps({"error": message}).encode(), [("Content-Type", "application/json")])

    def _send(self, code: int, data: bytes, headers: list[tuple[str, str]]) -> None:
        if code == 200 and self._trickle is not None and self._trickle.kind == "headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self.wfile.flush()
            for line in range(self._trickle.status):
                if self.server._stopping.wait(self._trickle.delay_s):
                    return
                self.wfile.write(f"X-Still-Working-{line}: yes\r\n".encode())
                self.wfile.flush()
            for name, value in [*headers, ("Content-Length", str(len(data)))]:
                self.wfile.write(f"{name}: {value}\r\n".encode())
            self.wfile.write(b"\r\n" + data)
            return
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if code != 200 or self._trickle is None:
            self.wfile.write(data)
            return
        if self._trickle.kind == "cut":
            self.wfile.write(data[:int(len(data) * self._trickle.delay_s)])
            self.close_connection = True
            return
        pieces, interval_s = self._trickle.status, self._trickle.delay_s
        size = -(-len(data) // pieces)
        for start in range(0, len(data), size):
            self.wfile.write(data[start:start + size])
            self.wfile.flush()
            if self.server._stopping.wait(interval_s):
                return

    def log_message(self, format, *args) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


def serve(
    port: int = 0, host: str = "127.0.0.1", sample_rate: int = 22050, response: str = "wav",
    auth: str | None = None, tls: tuple[str, str] | None = None, verbose: bool = False,
) -> tuple[TtsServer, str]:
    """Start the server on a thread; returns it and its URL.

    `auth` is the Authorization value it requires; `tls` is (certificate file, key file) to serve https.
    """
    server = TtsServer(
        (host, port), sample_rate=sample_rate, response=response, auth=auth, tls=tls, verbose=verbose
    )
    server.start()
    return server, server.url


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m localcloud.tts_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rate", type=int, default=22050, help="sample rate of the audio it sends (22050, 24000, ...)")
    parser.add_argument("--response", choices=RESPONSES, default="wav")
    args = parser.parse_args(argv)
    server, url = serve(args.port, args.host, args.rate, args.response, verbose=True)
    print(f"TTS server at {url} ({args.response}, {args.rate} Hz); Ctrl-C stops it", flush=True)
    try:
        server._thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
