"""Errors whose class names are part of the contract with the state machine.

Step Functions sees a Lambda error by its exception class name (`errorType`), so the ASL's Retry and Catch
name these classes: keep the names stable.
"""


# AWS error codes that mean "not now" rather than "never", across the services we call.
TRANSIENT_AWS_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
    "RequestThrottled", "SlowDown", "ProvisionedThroughputExceededException", "ServiceFailureException",
    "InternalError", "InternalFailure", "InternalServerError", "InternalServiceError", "ServiceUnavailable",
    "ServiceUnavailableException", "RequestTimeout", "RequestTimeoutException",
})


# Of those, the ones that say the request was refused before it did anything.
THROTTLING_AWS_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
    "RequestThrottled", "SlowDown", "ProvisionedThroughputExceededException",
})


def aws_error(error) -> tuple[str, int]:
    """(error code, HTTP status) of a botocore ClientError."""
    response = getattr(error, "response", None) or {}
    return response.get("Error", {}).get("Code", ""), response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)


def is_transient_aws_error(error) -> bool:
    """Throttling or a server-side failure (5xx) in a botocore ClientError: worth another try."""
    code, status = aws_error(error)
    return code in TRANSIENT_AWS_CODES or status >= 500


def is_throttling(error) -> bool:
    """A botocore ClientError that says the request was refused unperformed (a 5xx or a timeout may have done it)."""
    return aws_error(error)[0] in THROTTLING_AWS_CODES


def shown(value, limit: int = 60) -> str:
    """A bad value as an error message may quote it: short, so a reply stays under Connect's 32 KB and a log
    line stays a line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


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
