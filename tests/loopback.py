"""Ports on 127.0.0.1 for tests of what a client does when its peer is missing or not answering."""

import contextlib
import socket


def free_port() -> int:
    """A port nothing listens on (just now): a connection to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def unanswered_port():
    """A port whose listener's accept queue is full: the kernel drops new connections' SYNs, so a client's
    connect waits until its own timeout, as with a server that is overloaded or behind a black hole."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    queued = [socket.socket() for _ in range(4)]
    try:
        for client in queued:
            client.setblocking(False)
            client.connect_ex(listener.getsockname())
        yield listener.getsockname()[1]
    finally:
        for sock in (*queued, listener):
            sock.close()
