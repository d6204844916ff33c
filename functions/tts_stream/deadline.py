"""One HTTP exchange bounded as a whole: a socket timeout bounds each read only, so a peer that sends its answer
(or its status line and headers) a byte at a time would hold a part or a turn far past any timeout."""

import socket
import threading
from contextlib import contextmanager


@contextmanager
def cut_off_at(sock, seconds: float):
    """Shut `sock` down `seconds` from now, which ends any read or write on it at once. Yields an Event that is
    set when it did: the caller reports a timeout, not whatever error the shut socket raised."""
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: the answer was read

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()
