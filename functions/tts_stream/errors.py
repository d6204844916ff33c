"""Errors whose class names are part of the contract with the state machine.

Step Functions sees a Lambda error by its exception class name (`errorType`), so the ASL's Retry and Catch
name these classes: keep the names stable.
"""


class InvalidInput(ValueError):
    """The request itself is wrong (missing/empty/oversized text, bad stream id): never retried."""


class StreamConflict(ValueError):
    """A stream id was reused for a different text: the caller must pick a new StreamId."""


class RetryableError(RuntimeError):
    """A transient failure (throttling, timeout, 5xx): the workflow retries it with backoff."""


class PermanentSynthesisError(RuntimeError):
    """The engine cannot speak this part (bad text, unknown voice): recorded as the part's failure."""


class StreamCancelled(RuntimeError):
    """The caller moved on (barge-in or a newer turn): the workflow stops synthesizing this stream."""
