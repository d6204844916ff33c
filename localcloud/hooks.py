"""What fault injection and the latency model both need: the clients our handlers hold, and an engine that
runs a hook before it speaks."""

import dataclasses
import sys
from typing import Callable, Iterator

from botocore.client import BaseClient


def handler_clients(cloud) -> Iterator[BaseClient]:
    """The botocore clients the handler modules keep between invocations (one, a dict of them, a dataclass),
    made before a hook was put on boto3's default session."""
    modules = {function.handler.rsplit(".", 1)[0] for function in getattr(cloud, "functions", {}).values()}
    for name in sorted(modules):
        module = sys.modules.get(name)
        for value in list(vars(module).values()) if module else []:
            if isinstance(value, BaseClient):
                yield value
            elif isinstance(value, dict):
                yield from (v for v in list(value.values()) if isinstance(v, BaseClient))
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                yield from (v for v in vars(value).values() if isinstance(v, BaseClient))


class HookedEngine:
    """The real engine, with `before(text)` run first (to delay or fail the part being spoken)."""

    def __init__(self, engine, before: Callable[[str], None]):
        self._engine, self._before = engine, before

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def synthesize(self, text, voice):
        self._before(text)
        return self._engine.synthesize(text, voice)
