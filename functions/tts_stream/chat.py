"""Chatbot backends: ask a question with the conversation so far, get the answer's text.

Every failure is a ChatError with a message that says what went wrong; the workflow turns it into a spoken
apology in the stream's voice, so a caller never meets silence or a dropped call because the bot failed.
"""

import http.client
import json
import ssl
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from tts_stream import chunking, deadline

MAX_ANSWER_CHARS = 20000
# The most a reply may hold: an answer of MAX_ANSWER_CHARS in JSON escapes (12 bytes for a character outside the
# BMP, "\\ud83d\\ude00"; 6 for Hangul, as json.dumps writes it by default), and room for the rest of the object.
MAX_REPLY_BYTES = MAX_ANSWER_CHARS * 12 + 4096
CONNECT_S = 2.0  # to connect to a chatbot (the TLS handshake included), before ChatTimeoutMs starts
APOLOGY = {
    "en": "Sorry, I couldn't get an answer just now. Please ask me again in a moment.",
    "ko": "죄송합니다. 지금은 답변을 가져오지 못했습니다. 잠시 후에 다시 물어봐 주세요.",
}


class ChatError(RuntimeError):
    """The chatbot did not give a usable answer (timeout, HTTP error, malformed reply, refused request)."""


@dataclass(frozen=True)
class Exchange:
    """One earlier turn of the conversation."""
    question: str
    answer: str


# An exchange that crosses the history's limit is kept with the beginning of its answer, marked as cut, when at
# least this much of the answer fits: a follow-up question is most often about what was just said, and a long
# answer (what this project is for) must not leave the next question with no context at all.
MIN_CUT_ANSWER_CHARS = 200
CUT_MARK = " [...]"


def bounded_history(history: list[Exchange], *, max_turns: int, max_chars: int) -> list[Exchange]:
    """The most recent exchanges that fit both limits, oldest first: a bot gets context, never a novel.

    The first exchange (newest first) that does not fit whole is kept cut, if it can be (MIN_CUT_ANSWER_CHARS);
    no older one is sent after it, so the bot never hears a conversation with a hole in it."""
    kept, room = [], max_chars
    for exchange in reversed(history[-max_turns:] if max_turns > 0 else []):
        size = len(exchange.question) + len(exchange.answer)
        if size <= room:
            kept.append(exchange)
            room -= size
            continue
        answer_room = room - len(exchange.question) - len(CUT_MARK)
        if answer_room >= MIN_CUT_ANSWER_CHARS:
            kept.append(Exchange(exchange.question, _beginning(exchange.answer, answer_room) + CUT_MARK))
        break
    return kept[::-1]


def _beginning(text: str, most: int) -> str:
    """At most `most` characters from the start of `text`: up to the last sentence end in them, or else the last
    space, when that keeps at least half of them; a hard cut only for text with neither (Korean and English
    both space their words)."""
    window = text[:most + 1]  # a sentence that ends at the last character kept is seen by its following space
    cut = max(window.rfind(end) for end in (". ", "? ", "! ", "\n"))
    if cut >= most // 2:
        return window[:cut + 1].rstrip()
    cut = window[:most].rfind(" ")
    return (window[:cut] if cut >= most // 2 else window[:most]).rstrip()


def _answer_text(answer) -> str:
    if not isinstance(answer, str) or not answer.strip():
        raise ChatError("the chatbot's reply has no answer text")
    if len(answer) > MAX_ANSWER_CHARS:
        raise ChatError(f"the chatbot's answer has {len(answer)} characters; the most spoken is {MAX_ANSWER_CHARS}")
    return answer.strip()


class HttpChat:
    """A team's own chatbot behind HTTP. The contract is in README.md (Chatbot HTTP contract)."""

    name = "http"

    def __init__(self, url: str, *, timeout_s: float = 20.0, auth_header: str | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"ChatUrl {url!r} is not an http(s) URL")
        self.url, self.parts, self.timeout_s, self.auth_header = url, parts, timeout_s, auth_header

    def ask(self, question: str, history: list[Exchange], *, contact_id: str = "", language: str = "") -> str:
        body = json.dumps({
            "question": question,
            "history": [{"question": e.question, "answer": e.answer} for e in history],
            "contact_id": contact_id,
            "language": language,
        }, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", "Accept": "application/json"}
        if self.auth_header:
            headers["Authorization"] = self.auth_header
        connection_class = http.client.HTTPSConnection if self.parts.scheme == "https" else http.client.HTTPConnection
        kwargs = {"context": ssl.create_default_context()} if self.parts.scheme == "https" else {}
        connection = connection_class(self.parts.hostname, self.parts.port, timeout=min(self.timeout_s, CONNECT_S),
                                      **kwargs)
        path = deadline.request_target(self.parts)
        cut_off, connected = threading.Event(), False
        try:
            connection.connect()  # within CONNECT_S, the TLS handshake included; ChatTimeoutMs starts after it
            connected = True
            connection.sock.settimeout(self.timeout_s)
            with deadline.cut_off_at(connection.sock, self.timeout_s) as cut_off:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read(MAX_REPLY_BYTES + 1)
            if cut_off.is_set():
                raise TimeoutError
        except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out, a cut-off or bad reply
            if cut_off.is_set() or (connected and isinstance(error, TimeoutError)):
                raise ChatError(f"the chatbot did not answer within {self.timeout_s:g} s") from None
            if isinstance(error, TimeoutError):
                raise ChatError(f"the chatbot could not be reached within {min(self.timeout_s, CONNECT_S):g} s") \
                    from None
            raise ChatError(f"the chatbot could not be reached: {error.__class__.__name__}") from None
        finally:
            connection.close()
        if response.status != 200:
            # Not the body: a bot's error page often repeats the question, and this message is logged.
            raise ChatError(f"the chatbot answered HTTP {response.status}")
        if len(payload) > MAX_REPLY_BYTES:
            raise ChatError(f"the chatbot's reply is over {MAX_REPLY_BYTES} bytes; an answer is at most "
                            f"{MAX_ANSWER_CHARS} characters")
        if response.length:  # bytes its Content-Length promised that never came (read(n) does not raise)
            raise ChatError(f"the chatbot's reply was cut off {response.length} bytes short")
        try:
            reply = json.loads(payload)
        except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
            raise ChatError("the chatbot's reply is not JSON") from None
        return _answer_text(reply.get("answer") if isinstance(reply, dict) else None)


class BedrockChat:
    """Amazon Bedrock's Converse API, for teams without a bot of their own."""

    name = "bedrock"
    SYSTEM = ("You answer callers on a phone line. Reply in the caller's language (Korean or English) in a few "
              "short spoken sentences, with no Markdown, lists or URLs.")

    def __init__(self, model_id: str, *, client=None, max_tokens: int = 400, timeout_s: float = 20.0):
        if not model_id:
            raise ValueError("BedrockModelId is empty: set it to a model id your account can invoke")
        self.model_id, self._client, self.max_tokens, self.timeout_s = model_id, client, max_tokens, timeout_s

    def ask(self, question: str, history: list[Exchange], *, contact_id: str = "", language: str = "") -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._client is None:
            import boto3
            from botocore.config import Config

            # Asked once, within ChatTimeoutMs: botocore's defaults (60 s to answer, 3 tries) would keep the caller
            # in silence long after the apology was due.
            self._client = boto3.client("bedrock-runtime", config=Config(
                connect_timeout=min(self.timeout_s, CONNECT_S), read_timeout=self.timeout_s,
                retries={"mode": "standard", "total_max_attempts": 1}))
        messages = []
        for exchange in history:
            messages.append({"role": "user", "content": [{"text": exchange.question}]})
            messages.append({"role": "assistant", "content": [{"text": exchange.answer}]})
        messages.append({"role": "user", "content": [{"text": question}]})
        try:
            response = self._client.converse(modelId=self.model_id, messages=messages, system=[{"text": self.SYSTEM}],
                                             inferenceConfig={"maxTokens": self.max_tokens})
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "error")
            raise ChatError(f"Bedrock refused the question: {code}") from None
        except BotoCoreError as error:
            raise ChatError(f"Bedrock could not be reached: {error.__class__.__name__}") from None
        try:
            content = response["output"]["message"]["content"]
            text = "".join(block.get("text", "") for block in content)
        except (KeyError, TypeError):
            raise ChatError("Bedrock's reply has no message") from None
        if response.get("stopReason") == "max_tokens":  # cut off mid-sentence: speak the whole sentences only
            text = chunking.whole_sentences(text)
        return _answer_text(text)
