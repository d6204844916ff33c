"""Settings read from the environment that template.yaml gives every function.

Read per invocation (cheap) rather than at import, so one process can run several functions with the same
environment, as localcloud does, and a changed setting never leaks into a stream that already started: what
a stream needs for its whole life is pinned in its manifest.
"""

import os
import re
from dataclasses import dataclass

from botocore.config import Config

from tts_stream.errors import InvalidInput, shown

# The workflow functions' AWS clients (and the secrets they read): a stalled S3, DynamoDB or Secrets Manager
# request gives up, tried three times, well inside the functions' 30 s timeout (botocore's defaults wait 60 s),
# as a RetryableError the workflow tries again, instead of timing the function out. Throttling is retried by the
# workflow too (from 1 s, with backoff). ConnectFunction's own are tighter (streams.CLIENT_CONFIG).
WORKFLOW_CLIENT_CONFIG = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 3})


def bounded(client):
    """`client`, retrying after standard mode's own backoff even when a service asks for longer.

    botocore 1.44 and newer (the Lambda runtime brings its own) wait as long as a throttled answer's
    x-amz-retry-after header asks, up to 5 s past the backoff. That would break every budget built on these
    clients: ConnectFunction's 4 s per request inside Connect's 8 s, the workflow functions' 30 s. The header is
    dropped before the retry is decided; a throttling that lasts fails the request, and the layer above waits
    (the flow asks again after BatchWaitMs, the workflow's Retry backs off from 1 s).
    """
    service = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register_first(f"needs-retry.{service}", _drop_retry_after)
    return client


def _drop_retry_after(response=None, **_):
    if response is not None and response[0] is not None:
        response[0].headers.pop("x-amz-retry-after", None)


# Connect ContactIds are UUIDs; a stream id becomes an S3 prefix and part of an execution name (80 chars max),
# so it is kept to a safe alphabet that cannot escape its prefix.
MAX_STREAM_ID_CHARS = 64
# The whole id must match (fullmatch): a `$` would let "id\n" by
STREAM_ID_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_STREAM_ID_CHARS - 1}}}")
MAX_PARTS = 9999  # part keys are zero-padded to 4 digits


@dataclass(frozen=True)
class Settings:
    table_name: str
    bucket_name: str
    state_machine_arn: str
    region: str
    tts_engine: str
    voice_en: str
    voice_ko: str
    first_chunk_max_chars: int
    chunk_target_chars: int
    chunk_max_chars: int
    max_text_chars: int
    map_max_concurrency: int
    manifest_ttl_hours: int
    stream_timeout_seconds: int
    prompt_url_mode: str
    start_wait_ms: int
    batch_wait_ms: int
    poll_interval_ms: int
    log_caller_text: bool
    # Engine settings (issue 4). Defaults let code that builds Settings by hand leave them out.
    polly_engine: str = "neural"
    tts_url: str = ""
    # A Secrets Manager secret (ARN or name) or "ssm:/parameter/name" holding the Authorization header value.
    tts_auth_secret: str = ""
    tts_connect_timeout_ms: int = 2000
    tts_read_timeout_ms: int = 10000
    # ConnectFunction speaks part 0 itself while the workflow starts (espeak and polly engines).
    inline_first_part: bool = True
    # Prompt cache (issue 4).
    prompt_cache: bool = True
    cache_table: str = ""
    cache_retention_days: int = 30
    # Chat settings (issue 5).
    conversation_table: str = ""
    chat_backend: str = "http"
    chat_url: str = ""
    chat_auth_secret: str = ""  # same forms as tts_auth_secret
    chat_timeout_ms: int = 20000
    bedrock_model_id: str = ""
    history_turns: int = 6
    history_chars: int = 4000


def _int(env, name: str, default: int) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a whole number, got {raw!r}") from None


def load(env=None) -> Settings:
    env = os.environ if env is None else env
    return Settings(
        table_name=env.get("TABLE_NAME", ""),
        bucket_name=env.get("BUCKET_NAME", ""),
        state_machine_arn=env.get("STATE_MACHINE_ARN", ""),
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        tts_engine=env.get("TTS_ENGINE", "espeak"),
        voice_en=env.get("VOICE_EN", ""),
        voice_ko=env.get("VOICE_KO", ""),
        first_chunk_max_chars=_int(env, "FIRST_CHUNK_MAX_CHARS", 40),
        chunk_target_chars=_int(env, "CHUNK_TARGET_CHARS", 200),
        chunk_max_chars=_int(env, "CHUNK_MAX_CHARS", 400),
        max_text_chars=_int(env, "MAX_TEXT_CHARS", 20000),
        map_max_concurrency=_int(env, "MAP_MAX_CONCURRENCY", 10),
        manifest_ttl_hours=_int(env, "MANIFEST_TTL_HOURS", 24),
        stream_timeout_seconds=_int(env, "STREAM_TIMEOUT_SECONDS", 330),
        prompt_url_mode=env.get("PROMPT_URL_MODE", "object"),
        start_wait_ms=_int(env, "START_WAIT_MS", 3000),
        batch_wait_ms=_int(env, "BATCH_WAIT_MS", 2500),
        poll_interval_ms=_int(env, "POLL_INTERVAL_MS", 50),
        log_caller_text=env.get("LOG_CALLER_TEXT", "false").lower() == "true",
        polly_engine=env.get("POLLY_ENGINE") or "neural",
        tts_url=env.get("TTS_URL", ""),
        tts_auth_secret=env.get("TTS_AUTH_SECRET", ""),
        tts_connect_timeout_ms=_int(env, "TTS_CONNECT_TIMEOUT_MS", 2000),
        tts_read_timeout_ms=_int(env, "TTS_READ_TIMEOUT_MS", 10000),
        inline_first_part=env.get("INLINE_FIRST_PART", "true").lower() == "true",
        prompt_cache=env.get("PROMPT_CACHE", "true").lower() == "true",
        cache_table=env.get("CACHE_TABLE", ""),
        cache_retention_days=_int(env, "CACHE_RETENTION_DAYS", 30),
        conversation_table=env.get("CONVERSATION_TABLE", ""),
        chat_backend=env.get("CHAT_BACKEND") or "http",
        chat_url=env.get("CHAT_URL", ""),
        chat_auth_secret=env.get("CHAT_AUTH_SECRET", ""),
        chat_timeout_ms=_int(env, "CHAT_TIMEOUT_MS", 20000),
        bedrock_model_id=env.get("BEDROCK_MODEL_ID", ""),
        history_turns=_int(env, "HISTORY_TURNS", 6),
        history_chars=_int(env, "HISTORY_CHARS", 4000),
    )


def part_key(stream_id: str, index: int) -> str:
    """Where part `index` of a stream lives in the audio bucket: one prefix per stream, sortable names."""
    return f"streams/{stream_id}/part{index:04d}.wav"


def check_stream_id(stream_id) -> str:
    if not isinstance(stream_id, str) or not STREAM_ID_PATTERN.fullmatch(stream_id):
        raise InvalidInput(
            f"stream id {shown(stream_id)} is not valid: use 1-64 letters, digits, '-' or '_', starting with a letter "
            "or digit"
        )
    return stream_id

