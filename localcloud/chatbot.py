"""A small rule-based chatbot served over HTTP on 127.0.0.1, speaking the chatbot contract in README.md.

It lets `python -m localcloud call --question ...` run a whole conversation with no outside service, and
lets tests make a bot that is slow, failing or malformed, the way real ones are.

    python -m localcloud.chatbot --port 8701
"""

import argparse
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWERS = [
    (("order", "shipped", "delivery", "arrive"),
     "Your order shipped on Monday. It should arrive by Friday afternoon. You can track it on our website."),
    (("refund", "return"),
     "You can return any item within thirty days. The refund reaches your card within five business days."),
    (("hours", "open", "close"),
     "We are open from nine in the morning to six in the evening, Monday to Saturday."),
    (("주문", "배송", "도착"),
     "주문하신 상품은 월요일에 발송되었습니다. 금요일 오후까지 도착할 예정입니다. 배송 조회는 홈페이지에서 가능합니다."),
    (("환불", "반품"),
     "구매 후 삼십 일 이내에 반품하실 수 있습니다. 환불은 영업일 기준 오 일 이내에 카드로 처리됩니다."),
    (("영업", "시간"),
     "영업시간은 월요일부터 토요일까지 오전 아홉 시부터 오후 여섯 시까지입니다."),
]
LONG_ANSWER = " ".join(f"This is sentence number {i} of a very long answer about our service plans." for i in range(1, 41))


def answer_for(question: str, history: list) -> str:
    """Rules first, then an honest 'I don't know' that shows the bot heard the question and remembers."""
    lowered = question.lower()
    if "long answer" in lowered or "everything" in lowered:
        return LONG_ANSWER
    if "what did i ask" in lowered or "방금 뭐" in question:
        if history:
            return f"You asked: {history[-1]['question']}"
        return "This is your first question."
    for words, answer in ANSWERS:
        if any(word in lowered for word in words):
            return answer
    if any("\uac00" <= ch <= "\ud7a3" for ch in question):
        return "죄송합니다. 그 질문에는 아직 답을 드릴 수 없습니다. 다른 질문이 있으신가요?"
    return "I'm sorry, I don't have an answer to that yet. Is there anything else I can help with?"


@dataclass
class Fault:
    """Misbehave on the next `times` requests: delay, an HTTP status, a malformed body, a dropped connection, or
    a reply (status line, headers and body) sent one byte every `trickle_s` seconds."""
    delay_s: float = 0.0
    status: int = 200
    body: bytes | None = None
    drop: bool = False
    trickle_s: float = 0.0
    content_length: int | None = None  # promise this many bytes, then send the body and close
    times: int = 1


@dataclass
class Bot:
    faults: list[Fault] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)  # each request's Authorization header
    paths: list[str] = field(default_factory=list)  # each request's path, with its query string
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self) -> Fault | None:
        with self.lock:
            if not self.faults:
                return None
            fault = self.faults[0]
            fault.times -= 1
            if fault.times <= 0:
                self.faults.pop(0)
            return fault


def _handler(bot: Bot):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                request = json.loads(raw)
                question = request["question"]
                history = request.get("history") or []
            except (ValueError, KeyError, TypeError):
                self._reply(400, json.dumps({"error": "send JSON with a 'question'"}).encode())
                return
            with bot.lock:
                bot.requests.append(request)
                bot.authorizations.append(self.headers.get("Authorization"))
                bot.paths.append(self.path)
            fault = bot.next_fault()
            if fault and fault.delay_s:
                time.sleep(fault.delay_s)
            if fault and fault.drop:
                self.connection.close()
                return
            if fault and (fault.status != 200 or fault.body is not None):
                self._reply(fault.status, fault.body if fault.body is not None else b'{"error": "injected"}', fault)
                return
            self._reply(200, json.dumps({"answer": answer_for(question, history)}, ensure_ascii=False).encode(), fault)

        def _reply(self, status, body, fault=None):
            trickle_s = fault.trickle_s if fault else 0.0
            length = fault.content_length if fault and fault.content_length is not None else len(body)
            try:
                if trickle_s:  # the whole reply, status line first, one byte at a time
                    head = (f"HTTP/1.0 {status} {self.responses.get(status, ('',))[0]}\r\n"
                            f"Content-Type: application/json; charset=utf-8\r\nContent-Length: {length}\r\n\r\n")
                    raw = head.encode() + body
                    for index in range(len(raw)):
                        self.wfile.write(raw[index:index + 1])
                        self.wfile.flush()
                        time.sleep(trickle_s)
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout): nothing left to tell it

    return Handler


def serve(port: int = 0, host: str = "127.0.0.1") -> tuple[ThreadingHTTPServer, Bot, str]:
    """Start the bot in a background thread; returns (server, bot, url). server.shutdown() stops it."""
    bot = Bot()
    server = ThreadingHTTPServer((host, port), _handler(bot))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, bot, f"http://{host}:{server.server_address[1]}/chat"


def main(argv=None):
    parser = argparse.ArgumentParser(description="A rule-based chatbot on 127.0.0.1 for local calls.")
    parser.add_argument("--port", type=int, default=8701)
    args = parser.parse_args(argv)
    server, _, url = serve(args.port)
    print(f"chatbot listening at {url} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
