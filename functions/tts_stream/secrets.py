"""Read a secret (the TTS server's or the chatbot's Authorization header) from Secrets Manager or SSM.

A reference is a Secrets Manager secret ARN or name, or `ssm:/parameter/name` for SSM Parameter Store.
Values are cached per process for a few minutes: a warm Lambda does not call AWS for every part, and a
rotated secret is picked up soon after. Errors name the reference, never the value.
"""

import threading
import time
from contextlib import contextmanager

from botocore.exceptions import BotoCoreError, ClientError, NoRegionError, ParamValidationError

from tts_stream import config
from tts_stream.errors import PermanentSynthesisError, RetryableError, aws_error, is_transient_aws_error, shown

SSM_PREFIX = "ssm:"
MAX_AGE_S = 300.0

# What each permanent failure means for the person who configured TTS_AUTH_SECRET.
_PERMANENT_REASONS = {
    "ResourceNotFoundException": "it does not exist (or has no current version) in this account and region",
    "ParameterNotFound": "it does not exist in this account and region",
    "ParameterVersionNotFound": "that version does not exist",
    "AccessDeniedException": "the function's role may not read it (secretsmanager:GetSecretValue or "
    "ssm:GetParameter, and kms:Decrypt for its key)",
    "DecryptionFailure": "its KMS key cannot decrypt it for this role",
    "InvalidKeyId": "its KMS key is disabled or not usable by this role",
    "InvalidRequestException": "it cannot be read now (for example, it is scheduled for deletion)",
    "InvalidParameterException": "the reference is not a valid secret id",
}

_lock = threading.Lock()
_cache: dict[str, tuple[str, float]] = {}
_clients: dict[tuple[str, str | None], object] = {}


def read_secret(ref: str, *, secretsmanager=None, ssm=None, max_age_s: float = MAX_AGE_S) -> str:
    """The secret's string value; fetched at most once per `max_age_s` per process."""
    if not isinstance(ref, str) or not ref.strip() or ref.strip() == SSM_PREFIX:
        raise PermanentSynthesisError("no secret reference: give a Secrets Manager ARN or name, or ssm:/parameter/name")
    ref = ref.strip()
    now = time.monotonic()
    with _lock:
        cached = _cache.get(ref)
    if cached is not None and now - cached[1] < max_age_s:
        return cached[0]
    value = _fetch(ref, secretsmanager, ssm)
    with _lock:
        _cache[ref] = (value, now)
    return value


def header_value(value, what: str) -> str:
    """A secret that is an HTTP Authorization header value, stripped of surrounding whitespace (a stored trailing
    newline). Raises ValueError saying what is wrong with it, never what it is: `what` names the secret."""
    value = value.strip() if isinstance(value, str) else ""
    if not value:
        raise ValueError(f"{what} is empty")
    if value.startswith("{"):
        raise ValueError(f"{what} holds JSON: store the whole Authorization header value as plain text, "
                         "such as 'Bearer TOKEN'")
    if not (value.isascii() and value.isprintable()):
        raise ValueError(f"{what} has characters an HTTP header cannot carry (line breaks, control or non-ASCII "
                         "characters): store only the header value, such as 'Bearer TOKEN'")
    return value


def clear_cache() -> None:
    """Forget every cached value, so the next read fetches again (a rotation that must apply at once)."""
    with _lock:
        _cache.clear()


# A reference is quoted whole in messages up to the longest a valid one can be (an SSM parameter's name, 1,011
# characters, with its prefix), so its name is never cut off; a longer one is not a reference, and is cut.
_REF_SHOWN = 1100


def _fetch(ref: str, secretsmanager, ssm) -> str:
    if ref.startswith(SSM_PREFIX):
        name, where = ref[len(SSM_PREFIX):], "SSM Parameter Store"
        client = ssm or _client("ssm", _arn_region(name))
        with _classified(ref, where):
            response = client.get_parameter(Name=name, WithDecryption=True)
        value = response.get("Parameter", {}).get("Value")
    else:
        where = "Secrets Manager"
        client = secretsmanager or _client("secretsmanager", _arn_region(ref))
        with _classified(ref, where):
            response = client.get_secret_value(SecretId=ref)
        value = response.get("SecretString")
        if value is None:
            raise PermanentSynthesisError(
                f"secret {shown(ref, _REF_SHOWN)} in {where} holds binary data: store the value as a secret string"
            )
    if not isinstance(value, str) or not value.strip():
        raise PermanentSynthesisError(f"secret {shown(ref, _REF_SHOWN)} in {where} is empty")
    return value


@contextmanager
def _classified(ref: str, where: str):
    """Turn AWS errors into the workflow's two kinds, with a message naming the reference."""
    what = f"could not read secret {shown(ref, _REF_SHOWN)} from {where}"
    try:
        yield
    except ClientError as error:
        code, status = aws_error(error)
        if is_transient_aws_error(error):
            raise RetryableError(f"{what}: {code or status}, try again") from error
        reason = _PERMANENT_REASONS.get(code, f"the request was refused (HTTP {status})")
        raise PermanentSynthesisError(f"{what}: {reason} ({code or status})") from error
    except ParamValidationError as error:
        raise PermanentSynthesisError(f"{what}: the reference is not a valid secret id") from error
    except BotoCoreError as error:
        raise RetryableError(f"{what}: {type(error).__name__}, try again") from error


def _arn_region(ref: str) -> str | None:
    """The region an ARN names (a secret may live in another region); None means the function's own."""
    parts = ref.split(":")
    return parts[3] or None if len(parts) > 5 and parts[0] == "arn" else None


def _client(service: str, region: str | None):
    # One client per service, region and process, each on a session of its own: boto3's shared default
    # session is not safe to build clients from on several threads.
    with _lock:
        if (service, region) not in _clients:
            import boto3

            try:
                _clients[service, region] = config.bounded(boto3.session.Session().client(
                    service, region_name=region, config=config.WORKFLOW_CLIENT_CONFIG))
            except NoRegionError:
                raise PermanentSynthesisError(
                    f"no AWS region to read {service} secrets in: set AWS_REGION or give the secret's ARN"
                ) from None
        return _clients[service, region]
