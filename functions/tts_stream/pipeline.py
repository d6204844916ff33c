"""The synthesis workflow's steps as plain functions: plan a stream, synthesize one part, record a failure,
finish. The Lambda handlers in functions/workflow.py only pass events and clients in.
"""

import hashlib
import json
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from tts_stream import audio, cache, chat, chunking, conversation, engines, manifest, secrets
from tts_stream.config import MAX_PARTS, STREAM_ID_PATTERN, Settings, check_stream_id, part_key
from tts_stream.errors import InvalidInput, RetryableError, StreamCancelled, aws_error, is_transient_aws_error, shown

LANGUAGES = ("auto", "en", "ko")
_VOICE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+.-]{0,63}")
_HASH = re.compile(r"[0-9a-f]{64}")
MAX_QUESTION_CHARS = 2000
# Tab, newline, carriage return and NEL (U+0085) are whitespace to a reader; other control characters, C0 and C1
# (U+0080-U+009F, e.g. Windows-1252 quotes decoded as Latin-1), are not text at all.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f]")


def input_hash(text: str, voice: str, language: str) -> str:
    """What identifies a stream's content: the same answer started twice is one stream."""
    blob = json.dumps([text, voice, language], ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


def check_stream_request(event, settings: Settings) -> tuple[str, str, str, str]:
    """Validate `{stream_id, text, voice?, language?}`; return them with defaults applied."""
    if not isinstance(event, dict):
        raise InvalidInput(f"the stream request must be a JSON object, got {type(event).__name__}")
    stream_id = check_stream_id(event.get("stream_id"))
    return (stream_id, *check_content(event.get("text"), event.get("voice"), event.get("language"), settings))


def check_content(text, voice, language, settings: Settings) -> tuple[str, str, str]:
    """Validate what a stream says and in which voice; return (text, voice or "", language or "auto")."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("text is missing or empty: give the answer to speak as a non-empty string")
    if len(text) > settings.max_text_chars:
        raise InvalidInput(f"text has {len(text)} characters; the most a stream takes is {settings.max_text_chars}")
    _check_plain(text, "text")
    voice = voice or ""
    if not isinstance(voice, str) or (voice and not _VOICE_PATTERN.fullmatch(voice)):
        raise InvalidInput(f"voice {shown(voice)} is not a voice name (letters, digits, '-', '_', '+', '.')")
    language = language or "auto"
    if language not in LANGUAGES:
        raise InvalidInput(f"language {shown(language)} is not supported; use one of {', '.join(LANGUAGES)}")
    return text, voice, language


def _check_plain(text: str, name: str):
    if _CONTROL.search(text):
        raise InvalidInput(f"{name} contains control characters; send plain text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{name} is not valid Unicode (it holds a lone surrogate); send UTF-8 text") from None


def choose_voice(text: str, voice: str, language: str, settings: Settings, engine) -> tuple[str, str]:
    """Pick (language, voice) for the whole stream: one answer is spoken in one voice."""
    if language == "auto":
        detected = chunking.detect_language(text)
        # Mixed answers are mostly Korean sentences with English words in them; the Korean voice reads both.
        language = "en" if detected == "en" else "ko"
    configured = settings.voice_en if language == "en" else settings.voice_ko
    return language, voice or configured or engine.default_voice(language)


@dataclass(frozen=True)
class Split:
    """An answer as the pipeline speaks it: its parts' texts, the one engine and voice for all of them (named as
    the manifest pins them), and (with the prompt cache on) each part's cache key."""
    texts: list[str]
    engine: str
    language: str
    voice: str
    engine_settings: dict[str, str]
    keys: list[str]


def part_texts(settings: Settings, text: str) -> list[str]:
    """The answer's parts as they will be spoken; InvalidInput if there is nothing to speak or too much."""
    texts = chunking.split_for_speech(text, first_max=settings.first_chunk_max_chars,
                                      target=settings.chunk_target_chars, max_len=settings.chunk_max_chars)
    if not texts:
        raise InvalidInput("text has nothing to speak once markup and whitespace are removed")
    if len(texts) > MAX_PARTS:
        raise InvalidInput(f"text makes {len(texts)} parts; the most a stream holds is {MAX_PARTS}")
    return texts


def split_answer(settings: Settings, text: str, voice: str, language: str) -> Split:
    """Split the answer into parts and resolve its voice; the same text and settings always split the same way,
    in ConnectFunction and in Plan alike."""
    texts = part_texts(settings, text)
    engine = engines.get_engine(settings.tts_engine, settings)  # an unknown engine fails the plan, not every part
    language, voice = choose_voice(text, voice, language, settings, engine)
    identity = engine.identity()
    keys = [cache.key_for(settings.tts_engine, identity, voice, t) for t in texts] if settings.prompt_cache else []
    return Split(texts, settings.tts_engine, language, voice, identity, keys)


def cached_parts(ddb, settings: Settings, split: Split, *, now_ms: int) -> dict[int, str]:
    """index -> prompt-cache object of every part spoken before: one BatchGetItem per 100 parts."""
    hits = cache.lookup(ddb, settings.cache_table, split.keys, now_ms=now_ms,
                        retention_days=settings.cache_retention_days) if split.keys else set()
    return {i: cache.object_key(k) for i, k in enumerate(split.keys) if k in hits}


def part_item(stream_id: str, index: int, text: str, planned: "manifest.Manifest | Split", *, cache_on: bool,
              now_ms: int) -> dict:
    """One Map item: everything SynthesizeFunction needs to speak part `index` as the manifest pinned it
    (`planned`: the manifest, or the Split it is about to be planned from).
    Cache keys come from what the manifest pinned, not from this run: a repeated plan (a second workflow for
    the same stream) may have been given other text, and must not file one text's audio under another's."""
    return {"stream_id": stream_id, "index": index, "text": text, "engine": planned.engine, "voice": planned.voice,
            "language": planned.language, "engine_settings": planned.engine_settings,
            "cache_key": cache.key_for(planned.engine, planned.engine_settings, planned.voice, text) if cache_on else "",
            "planned_ms": now_ms}


# Step Functions refuses state data over 256 KiB (UTF-8) with States.DataLimitExceeded, which no Catch sees: the
# stream would sit unfinished until its timeout. Plan's output (every part's text and settings) stays below, with
# room for the Map's results beside it: {"index":9999} a spoken part, {"index":9999,"error":"failed"} (32 bytes
# with its comma) a failed one, whose reason the workflow keeps out of its state.
STATE_MAX_BYTES = 262_144
_RESULT_BYTES_PER_PART = 32
_STATE_MARGIN_BYTES = 8_192


def plan_output(stream_id: str, planned: manifest.Manifest, settings: Settings, *, first: str, cache_on: bool,
                planned_here: bool, now_ms: int) -> dict:
    """What the Map needs: the parts still to synthesize in this run (see FIRST_PART_*); and for the metrics,
    whether this run's write planned the stream. InvalidInput if that is more than a workflow's state holds."""
    # A stream cancelled before this (repeated) plan has nothing left to synthesize; one that failed still plays
    # the parts before its failure (part 0, handed to a run of its own after a later part failed for good).
    todo = planned.texts if planned.texts is not None and manifest.still_plays(planned) else []
    if planned.status == manifest.STATUS_FAILED:
        todo = todo[:planned.failed_index]
    owned = owned_parts(first, planned.total)
    parts = [part_item(stream_id, i, t, planned, cache_on=cache_on, now_ms=now_ms)
             for i, t in enumerate(todo) if i not in planned.ready and (owned is None or i in owned)]
    output = {"stream_id": stream_id, "total": planned.total, "parts": parts, "first_part": first,
              "max_concurrency": settings.map_max_concurrency,
              "planned_here": planned_here,
              # Only the run whose plan found part 0 cached reports it: ConnectFunction measures the part 0 it
              # speaks itself, and a later delivery may find part 0 spoken by the run before.
              "first_part_cached": planned_here and not first and 0 in planned.keys}
    size = len(json.dumps(output, ensure_ascii=False, separators=(",", ":")).encode())
    needed = size + _RESULT_BYTES_PER_PART * len(parts) + _STATE_MARGIN_BYTES
    if needed > STATE_MAX_BYTES:
        raise InvalidInput(f"the answer makes {len(parts)} parts to speak, {needed} bytes of workflow state with "
                           f"their results; a workflow holds {STATE_MAX_BYTES}: lower MaxTextChars or raise "
                           "ChunkTargetChars")
    return output


def plan_stream(ddb, settings: Settings, event, *, now_ms: int) -> dict:
    """Split the answer into parts, pin the voice in the manifest, and list the parts still to synthesize."""
    stream_id, text, voice, language = check_stream_request(event, settings)
    first = first_part_role(event)
    split = split_answer(settings, text, voice, language)
    # A chat turn is identified by its question (the stream began before the answer existed).
    content_hash = event.get("input_hash") or input_hash(text, voice, language)
    if not isinstance(content_hash, str) or not _HASH.fullmatch(content_hash):
        raise InvalidInput("input_hash must be 64 hex characters")
    with aws_errors_as_retryable():
        # ConnectFunction, which speaks part 0 (or hands it to this run), planned the stream already: one read
        # instead of a cache lookup and a write that would find it planned.
        planned = manifest.read_planned(ddb, settings.table_name, stream_id, content_hash) if first else None
        if first and planned is None:  # nobody would ever speak the part this run leaves out
            raise InvalidInput(f"first_part={first} is for a stream ConnectFunction planned; {stream_id} is not planned")
        planned_here = False
        if planned is None:
            planned, planned_here = manifest.plan(
                ddb, settings.table_name, stream_id, content_hash,
                texts=split.texts, engine=split.engine, voice=split.voice, language=split.language,
                now_ms=now_ms, ttl_hours=settings.manifest_ttl_hours, engine_settings=split.engine_settings,
                cached=cached_parts(ddb, settings, split, now_ms=now_ms),
            )
    return plan_output(stream_id, planned, settings, first=first, cache_on=bool(split.keys),
                       planned_here=planned_here, now_ms=now_ms)


# Who speaks part 0 (the workflow input's `first_part`): "" this run, like every part; "inline" ConnectFunction,
# while this run speaks the rest; "only" this run, and nothing else (ConnectFunction could not speak it in time).
FIRST_PART_INLINE, FIRST_PART_ONLY = "inline", "only"


def first_part_role(event) -> str:
    role = event.get("first_part") or ""
    if role not in ("", FIRST_PART_INLINE, FIRST_PART_ONLY):
        raise InvalidInput(f"first_part {shown(role)} is not known; use inline or only (or leave it out)")
    return role


def owned_parts(role: str, total: int | None) -> set[int] | None:
    """The parts a workflow run speaks, and answers for at Finish (None: all of them)."""
    if role == FIRST_PART_INLINE:
        return set(range(1, total if isinstance(total, int) else 0))
    if role == FIRST_PART_ONLY:
        return {0}
    return None


@contextmanager
def aws_errors_as_retryable():
    """Throttling and 5xx from S3/DynamoDB are worth another try; the workflow's Retry names RetryableError."""
    try:
        yield
    except ClientError as error:
        code, status = aws_error(error)
        if is_transient_aws_error(error):
            raise RetryableError(f"{error.operation_name} failed with {code or status}: try again") from error
        raise
    except BotoCoreError as error:
        raise RetryableError(f"AWS request failed: {error}") from error


def speak_part(settings: Settings, part: dict) -> tuple[bytes, float]:
    """One part's speech as Connect's WAV, with the stream's pinned engine and voice: (wav, engine ms).
    Validates the part first; touches no AWS resource."""
    stream_id = check_stream_id(part.get("stream_id"))
    index = part.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_PARTS:
        raise InvalidInput(f"part index must be a whole number from 0 to {MAX_PARTS - 1}, got {shown(index)}")
    text = part.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"part {index} of stream {stream_id} has no text")
    pinned = part.get("engine_settings") if isinstance(part.get("engine_settings"), dict) else {}
    cache_key = part.get("cache_key")
    if cache_key and cache_key != cache.key_for(part.get("engine") or "", pinned, part.get("voice") or "", text):
        # Its audio would be filed under another text's key, and every later stream saying that text would play it.
        raise InvalidInput(f"part {index} of stream {stream_id}: cache_key is not the key of its text, engine and voice")
    engine = engines.get_engine(part.get("engine") or "", engines.pinned_settings(settings, pinned))
    engine_started = time.perf_counter()
    speech = engine.synthesize(text.strip(), part.get("voice") or "")
    engine_ms = (time.perf_counter() - engine_started) * 1000
    return audio.to_connect_wav(speech.pcm16, speech.sample_rate), engine_ms


def store_key(settings: Settings, part: dict) -> str:
    """Where a new part's audio goes: its prompt-cache object (written once, found again by any later stream
    that says the same), or, with the cache off, its own object under the stream."""
    cache_key = part.get("cache_key") or ""
    if cache_key and settings.prompt_cache:
        return cache.object_key(cache_key)
    return part_key(part["stream_id"], part["index"])


def store_part(ddb, s3, settings: Settings, part: dict, wav: bytes, *, now_ms, index_meanwhile=None) -> str:
    """Write a spoken part to S3, then mark it ready (the object first, so a part marked ready is always
    complete). Returns the S3 key it plays from; StreamCancelled if the stream was cancelled meanwhile.

    The prompt-cache entry of a new part is written after its object, so an entry never points at nothing: by
    the workflow's Finish, for all its parts and the part 0 ConnectFunction spoke, in one request
    (index_written); for the part 0 of an answer that needs no workflow, by `index_meanwhile(call)`, which runs
    the write alongside the ready mark."""
    stream_id, index = part["stream_id"], part["index"]
    key = store_key(settings, part)
    with aws_errors_as_retryable():
        s3.put_object(Bucket=settings.bucket_name, Key=key, Body=wav, ContentType="audio/wav")
        written_ms = now_ms()  # the ready mark and the cache entry say the same time
        pending = None
        if index_meanwhile and key != part_key(stream_id, index):
            pending = index_meanwhile(lambda: index_written(ddb, settings, {key: written_ms}))
        marked = manifest.mark_ready(ddb, settings.table_name, stream_id, index, now_ms=written_ms, key=key)
        if pending is not None:
            pending()  # waits for the index write
    if not marked:
        raise StreamCancelled(f"stream {stream_id} was cancelled (or has no part {index}); part {index} will not play")
    return key


def index_written(ddb, settings: Settings, written: dict[str, int]) -> int:
    """Index the prompt-cache objects among `written` (S3 key -> epoch ms it was written) in as few requests as
    DynamoDB allows; returns how many. Keys outside the cache (PromptCache off) are skipped."""
    entries = {cache_key: ms for key, ms in written.items() if (cache_key := cache.key_of_object(key))}
    if entries:
        with aws_errors_as_retryable():
            cache.remember(ddb, settings.cache_table, entries, retention_days=settings.cache_retention_days)
    return len(entries)


def synthesize_part(ddb, s3, settings: Settings, part: dict, *, now_ms) -> dict:
    """Speak one part with the stream's pinned engine and voice, store its WAV, then mark it ready.

    Writing the same key again (at-least-once delivery) leaves one object, and the first ready mark stands.
    """
    wav, engine_ms = speak_part(settings, part)
    key = store_part(ddb, s3, settings, part, wav, now_ms=now_ms)
    planned = part.get("planned_ms")
    return {"stream_id": part["stream_id"], "index": part["index"], "key": key, "bytes": len(wav),
            "engine_ms": round(engine_ms, 1),
            "ready_after_ms": now_ms() - planned if isinstance(planned, int) and planned > 0 else None}


# Engines fast and bounded enough to speak on Connect's 8-second path (an HTTP server's timeout is its own).
INLINE_ENGINES = ("espeak", "polly")


def failure_message(failure) -> str:
    """A one-line reason from a Step Functions Catch result ({Error, Cause}); Cause may hold a Lambda error."""
    if not isinstance(failure, dict):
        return "unknown failure"
    error = str(failure.get("Error") or "Error")
    cause = failure.get("Cause") or ""
    try:
        cause = json.loads(cause).get("errorMessage", cause)
    except (TypeError, ValueError, AttributeError):
        pass
    return f"{error}: {cause}"[:1000] if cause else error


def record_failure(ddb, settings: Settings, event) -> dict:
    """Record a part that failed for good, or a stream that could not be planned; never raises on bad input,
    because it runs inside the workflow's error path."""
    message = failure_message(event.get("failure") if isinstance(event, dict) else None)
    stream_id = event.get("stream_id") if isinstance(event, dict) else None
    if not isinstance(stream_id, str) or not STREAM_ID_PATTERN.fullmatch(stream_id):
        return {"recorded": False, "error": message}
    index = event.get("index")
    with aws_errors_as_retryable():
        if isinstance(index, int) and not isinstance(index, bool):
            recorded = manifest.mark_part_failed(ddb, settings.table_name, stream_id, index, message)
        else:  # a run speaking all but part 0 does not fail the part 0 ConnectFunction is still speaking
            role = event.get("first_part") if isinstance(event.get("first_part"), str) else ""
            recorded = manifest.fail_stream(ddb, settings.table_name, stream_id, message,
                                            owned=owned_parts(role, MAX_PARTS))
    return {"stream_id": stream_id, "index": index, "recorded": recorded, "error": message}


def finish_stream(ddb, settings: Settings, event) -> dict:
    """Record the stream's outcome, then index in the prompt cache the parts this run wrote (the Map's
    `part_results`), and part 0 if ConnectFunction spoke it beside this run: one request for up to 25 parts,
    instead of one per part as each was written."""
    stream_id = check_stream_id(event.get("stream_id") if isinstance(event, dict) else None)
    # Set when the Map itself failed (not one part): its reason is what the stream failed of.
    reason = failure_message(event["map_failure"]) if event.get("map_failure") else ""
    role = first_part_role(event)
    owned = owned_parts(role, event.get("total"))
    spoken = spoken_parts(event.get("part_results"))
    with aws_errors_as_retryable():
        finished = manifest.finish(ddb, settings.table_name, stream_id, reason=reason, owned=owned)
    if role == FIRST_PART_INLINE and 0 < finished.created_ms < finished.ready.get(0, 0):
        # ConnectFunction spoke part 0 and left its entry to this one write, off the caller's path. A part 0
        # served from the prompt cache was ready when the stream was created, and its entry keeps its own time.
        # Marked after this read (a slow engine), part 0 stays out of the cache: a later stream speaks it again.
        spoken.append(0)
    # Key and time come from the manifest's ready marks, not from the workflow: an entry only for audio in S3.
    written = {finished.keys[i]: finished.ready[i] for i in spoken if i in finished.ready and i in finished.keys}
    outcome = {"stream_id": stream_id, "status": finished.status, "total": finished.total,
               "failed_index": finished.failed_index, "error": finished.error}
    try:
        return {**outcome, "indexed": index_written(ddb, settings, written)}
    except RetryableError as error:
        # The outcome stands: a part missing from the cache is only spoken again by a later stream, which is no
        # reason to fail this one (or to retry Finish after botocore's and BatchWriteItem's own retries).
        return {**outcome, "indexed": 0, "index_error": str(error)}


def spoken_parts(results) -> list[int]:
    """The parts a Map spoke, from its results ({index} per part spoken, {index, error} per part that failed)."""
    if results is None:
        return []  # the Map failed as a whole, or this is not a workflow's Finish
    if not isinstance(results, list):
        raise InvalidInput(f"part_results must be the Map's list of results, not {shown(results)}")
    spoken = []
    for result in results:
        index = result.get("index") if isinstance(result, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise InvalidInput(f"a part result must carry its index as a whole number: {shown(result)}")
        if "error" not in result:
            spoken.append(index)
    return spoken


def check_question(question, settings: Settings) -> str:
    """What the caller asked, as transcribed: plain text of a sensible length."""
    if not isinstance(question, str) or not question.strip():
        raise InvalidInput("Question is missing or empty: pass the caller's words (e.g. the Lex transcript)")
    if len(question) > MAX_QUESTION_CHARS:
        raise InvalidInput(f"Question has {len(question)} characters; the most accepted is {MAX_QUESTION_CHARS}")
    _check_plain(question, "Question")
    return question.strip()


def chat_backend(settings: Settings):
    if settings.chat_backend == "bedrock":
        return chat.BedrockChat(settings.bedrock_model_id, timeout_s=settings.chat_timeout_ms / 1000)
    if settings.chat_backend == "http":
        header = None
        if settings.chat_auth_secret:  # a bad value is a ValueError that names the secret, never its value
            header = secrets.header_value(secrets.read_secret(settings.chat_auth_secret),
                                          "the chatbot's auth secret (CHAT_AUTH_SECRET)")
        return chat.HttpChat(settings.chat_url, timeout_s=settings.chat_timeout_ms / 1000, auth_header=header)
    raise InvalidInput(f"chat backend {settings.chat_backend!r} is not known; use http or bedrock")


def ask_chatbot(ddb, settings: Settings, event, *, now_ms: int, backend=None) -> dict:
    """First step of a chat turn: ask the bot with the conversation so far, and hand its answer to Plan.

    Any chatbot failure becomes an apology in the caller's language, spoken by the same engine and voice, so
    the caller never hears silence; the failure is returned (and logged) for the operators.
    """
    if not isinstance(event, dict):
        raise InvalidInput("the chat request must be a JSON object")
    stream_id = check_stream_id(event.get("stream_id"))
    contact_id = check_stream_id(event.get("contact_id"))
    turn = event.get("turn")
    if not isinstance(turn, int) or isinstance(turn, bool) or turn < 1:
        raise InvalidInput(f"turn must be a whole number from 1, got {shown(turn)}")
    question = check_question(event.get("question"), settings)
    _, voice, language = check_content("x", event.get("voice"), event.get("language"), settings)
    spoken_language = language if language != "auto" else ("en" if chunking.detect_language(question) == "en" else "ko")
    failure = history_error = ""
    with aws_errors_as_retryable():  # a throttled read is asked again before the bot is: nothing spent yet
        earlier = conversation.history(ddb, settings.conversation_table, contact_id, before_turn=turn)
    try:
        bot = backend or chat_backend(settings)
        past = chat.bounded_history(list(earlier.values()), max_turns=settings.history_turns,
                                    max_chars=settings.history_chars)
        answer = bot.ask(question, past, contact_id=contact_id, language=spoken_language)
        # The bot's answer is input like any other: text the pipeline would refuse (or that holds nothing to
        # speak, such as only markup) becomes the apology here, in the stream's voice, not a failed stream.
        answer = check_content(answer[:settings.max_text_chars], "", "auto", settings)[0]
        part_texts(settings, answer)
    except (chat.ChatError, ValueError) as error:
        answer, failure = chat.APOLOGY[spoken_language], str(error)
    else:
        # Best effort, never retried: a retry would ask the bot again (another answer, more tokens, maybe a bot's
        # side effect twice) for a write whose loss only shortens the next turn's history by this exchange.
        try:
            conversation.record_exchange(ddb, settings.conversation_table, contact_id, turn, question, answer,
                                         earlier_turns=earlier, keep_turns=settings.history_turns, now_ms=now_ms,
                                         ttl_hours=settings.manifest_ttl_hours)
        except (ClientError, BotoCoreError) as error:
            # A ClientError names its code, operation and message; a BotoCoreError (a timeout) only its message
            history_error = str(error) if isinstance(error, ClientError) else f"{type(error).__name__}: {error}"
    result = {"stream_id": stream_id, "text": answer[:settings.max_text_chars], "input_hash": event.get("input_hash"),
              "chat_error": failure, "history_error": history_error}
    if voice:
        result["voice"] = voice
    if language != "auto":
        result["language"] = language
    return result
