"""What our HTTP clients (the TTS engine, the chatbot) share: one exchange bounded as a whole (a socket timeout
bounds each read only, so a peer that sends its answer, or its status line and headers, a byte at a time would
hold a part or a turn far past any timeout), and how a URL's path is sent."""

import socket
import threading
from contextlib import contextmanager
from urllib.parse import SplitResult, quote

# What a path or query may hold as it is (RFC 3986's reserved and unreserved characters, and escapes already
# made); anything else, such as Hangul, is sent percent-encoded.
_URL_SAFE = "/?#[]@!$&'()*+,;=:%-._~"


def request_target(parts: SplitResult) -> str:
    """The path and query of a URL as the request line sends them: "/합성?v=1" percent-encoded, as a browser
    would send it."""
    query = f"?{quote(parts.query, safe=_URL_SAFE)}" if parts.query else ""
    return quote(parts.path or "/", safe=_URL_SAFE) + query


@contextmanager
def cut_off_at(sock, seconds: float):
    """Shut `sock` down `seconds` from now, which ends any read or write on it at once. Yields an Event that is
    set when it did: the caller reports a timeout, not whatever error the shut socket raised."""
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        try:
            # The plain socket's shutdown, also for TLS: SSLSocket.shutdown would drop its SSL object under a
            # read in progress, which then raises ValueError instead of seeing the connection end
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: the answer was read

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()
