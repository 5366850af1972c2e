"""Fake LLM: the OpenAI and DashScope streaming APIs, answered offline.

Shows: what an LLM API puts on the wire, byte for byte, in the two dialects the
relay (demo 3) reads: OpenAI chat completions (a role chunk, one `delta` per
token, `finish_reason`, an optional usage chunk, `data: [DONE]`) and Alibaba
DashScope (`id:`/`event:result`, each event carrying the *whole* text so far).
The official `openai` SDK streams from it unchanged. Deterministic answers,
FAKE_LLM_DELAY_MS per token (default 30), and opt-in faults (`X-Fake-Fault`).
Run: flask --app demos.fake_llm run --debug   (alone), or the hub at /fake-llm/
Watch the raw stream: curl -N http://127.0.0.1:8000/fake-llm/v1/chat/completions
  -H "Content-Type: application/json" -H "X-Fake-Fault: split"
  -d '{"model": "fake-llm", "stream": true, "messages": [{"role": "user", "content": "3+5=?"}]}'
Leaves out on purpose: any actual language model, tools, images, several choices.
"""
import re
import socket
import time

from flask import render_template, request

from streamkit import llm, sse, web

MODEL = "fake-llm"
FAULTS = {  # X-Fake-Fault: value → what the upstream does (the relay page offers these)
    "401": "answers 401 Unauthorized, as for a wrong API key",
    "429": "answers 429 Too Many Requests, as when rate limited",
    "500": "answers 500 Internal Server Error",
    "drop": "drops the connection after a few tokens",
    "stall": "goes silent after a few tokens (for 60 s)",
    "malformed": "sends one event of broken JSON",
    "error-event": "reports an error inside the stream",
    "nospace": "writes data: without the space (valid: the parser copes)",
    "crlf": "ends lines with CRLF, cut after the CR (valid)",
    "split": "writes each event in two pieces, cut inside a character (valid)",
}
FAULT_AT = 3  # a fault strikes after this many events, so some text has arrived
HTTP_FAULTS = {401: "Incorrect API key provided (simulated).", 429: "Rate limit reached (simulated).",
               500: "The server had an error while processing your request (simulated)."}
STALL = 60.0  # seconds of silence: longer than the relay's default UPSTREAM_TIMEOUT
OPEN_STREAMS = set()  # streams being written right now; GET /stats counts them
# Roughly how GPT tokenizers cut text: a CJK character alone, a word with its
# leading space, up to 3 digits, punctuation with its space, runs of blanks.
TOKEN = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]|[^\r\n\w]?[^\W\d_\u3400-\u9fff]+"
                   r"|\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SUM = re.compile(r"\s*(-?\d{1,9})\s*([-+*])\s*(-?\d{1,9})\s*=?\s*[?？]?\s*")
ENGLISH = ("I am the workshop's fake LLM — I make every answer up on this machine, one "
           "token at a time, so you can watch a stream arrive without a network or an "
           "API key. Each token is one event on the wire: compare them in the raw-wire panel.")
CHINESE = ("你好！我是工作坊内置的假模型：每个回答都在本机逐个词元生成，每个词元就是线路上的一个事件。"
           "不用联网，也不用密钥，就能看到流式输出。")


def create_app(test_config=None):
    app = web.new_app(__name__, test_config, ["FAKE_LLM_DELAY_MS"])
    delay = app.config["FAKE_LLM_DELAY_MS"] / 1000

    @app.get("/")
    def index():
        """The page: send a request in either dialect and watch the raw answer."""
        return render_template("fake-llm/index.html", faults=FAULTS)

    @app.get("/v1/models")
    def models():
        """What the openai SDK's client.models.list() reads."""
        return {"object": "list", "data": [
            {"id": MODEL, "object": "model", "created": 1700000000, "owned_by": "workshop"}]}

    @app.get("/stats")
    def stats():
        """Streams open now: the relay's tests watch them close when a client leaves."""
        return {"open_streams": len(OPEN_STREAMS)}

    @app.post("/v1/chat/completions")
    def chat_completions():
        """OpenAI chat completions: one JSON answer, or SSE chunks when "stream" is true."""
        body = read_body()
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return complete("openai", read_messages(body.get("messages")), body.get("model") or MODEL,
                        body.get("max_tokens", body.get("max_completion_tokens")),
                        stream=bool(body.get("stream")), include_usage=include_usage)

    @app.post("/api/v1/services/aigc/text-generation/generation")
    def dashscope():
        """DashScope text generation: SSE when the X-DashScope-SSE: enable header is sent."""
        body = read_body()
        given = body.get("input") if isinstance(body.get("input"), dict) else {}
        messages = given.get("messages") or (
            [{"role": "user", "content": given["prompt"]}] if isinstance(given.get("prompt"), str) else None)
        parameters = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
        return complete("dashscope", read_messages(messages), body.get("model") or MODEL,
                        parameters.get("max_tokens"), include_usage=True,
                        stream=request.headers.get("X-DashScope-SSE") == "enable")

    def complete(dialect, messages, model, max_tokens, stream, include_usage):
        """Either dialect: an HTTP error if a fault asks, else the answer, whole or streamed."""
        fault = read_fault()
        if fault in ("401", "429", "500"):
            status = int(fault)
            return llm.error_body(dialect, status, HTTP_FAULTS[status]), status, (
                {"Retry-After": "1"} if status == 429 else {})
        pieces, finish = reply(messages, max_tokens)
        usage = count_usage(messages, pieces)
        if not stream:
            return llm.answer(dialect, pieces, finish, model, usage)
        if dialect == "openai":
            frames = llm.openai_stream(pieces, finish, model, usage if include_usage else None, delay)
        else:
            frames = llm.dashscope_stream(pieces, finish, usage, delay)
        return sse.event_stream(counted(with_fault(frames, fault, dialect, request.environ, delay)))

    return app


def read_body():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        web.fail("the body must be a JSON object, sent with Content-Type: application/json")
    return body


def read_fault():
    fault = request.headers.get("X-Fake-Fault", "")
    if fault and fault not in FAULTS:
        web.fail(f"X-Fake-Fault must be one of {', '.join(FAULTS)}; got {fault!r}")
    return fault


def read_messages(messages):
    """The chat so far, each message's content as text (a string, or OpenAI's list of parts)."""
    if not isinstance(messages, list) or not messages:
        web.fail('messages must be a non-empty list of {"role": …, "content": …} objects')
    texts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str) or not isinstance(message.get("role"), str):
            web.fail("each message must have a string role and a string (or text parts) content")
        texts.append((message["role"], content))
    return texts


def reply(messages, max_tokens=None):
    """The deterministic answer to the last user message, as tokens, and why it stops."""
    prompt = next((text for role, text in reversed(messages) if role == "user"), "")
    if total := SUM.fullmatch(prompt):
        a, op, b = int(total[1]), total[2], int(total[3])
        answer = f"{a} {op} {b} = {a + b if op == '+' else a - b if op == '-' else a * b}"
    elif re.search(r"[\u3400-\u9fff]", prompt):
        answer = CHINESE
    else:
        shown = prompt if len(prompt) <= 200 else prompt[:200] + "…"
        answer = f"You asked: “{shown}”. {ENGLISH}"
    pieces = TOKEN.findall(answer)
    if max_tokens is None:
        return pieces, "stop"
    if type(max_tokens) is not int or max_tokens < 1:
        web.fail(f"max_tokens must be a positive integer, got {max_tokens!r}")
    return pieces[:max_tokens], "length" if max_tokens < len(pieces) else "stop"


def count_usage(messages, pieces):
    prompt = sum(len(TOKEN.findall(text)) for _, text in messages)
    return {"prompt_tokens": prompt, "completion_tokens": len(pieces),
            "total_tokens": prompt + len(pieces)}


def with_fault(frames, fault, dialect, environ, delay):
    """The frames as written to the wire, spoiled the way X-Fake-Fault asked."""
    for n, frame in enumerate(frames):
        if n == FAULT_AT and fault == "drop":
            return drop(environ)
        if n == FAULT_AT and fault == "stall":
            time.sleep(STALL)
        if n == FAULT_AT and fault == "malformed":
            yield ('data: {"choices":[{"delta":{"content":"cut sh\n\n' if dialect == "openai"
                   else 'id:0\nevent:result\ndata:{"output":{"text":"cut sh\n\n')
        if n == FAULT_AT and fault == "error-event":
            yield llm.error_event(dialect, "The model crashed (simulated).")
            return
        if fault == "nospace":
            frame = re.sub(r"(?m)^data: ", "data:", frame)
        if fault in ("crlf", "split"):
            data = frame.replace("\n", "\r\n").encode() if fault == "crlf" else frame.encode()
            at = data.find(b"\r") if fault == "crlf" else next(
                (i for i, byte in enumerate(data) if byte >= 0xC0), len(data) // 2 - 1)
            yield data[:at + 1]  # ends just after a CR, or inside a UTF-8 character
            time.sleep(max(delay / 2, 0.005))  # so the two pieces arrive as two reads
            frame = data[at + 1:]
        yield frame


def drop(environ):
    """Cut the connection mid-answer, as a crashed upstream or a dead proxy would."""
    client = web.connection_socket(environ)
    if client is None:  # no socket to cut: a body that raises makes the server drop it
        raise ConnectionAbortedError("X-Fake-Fault: drop")
    client.shutdown(socket.SHUT_RDWR)


def counted(frames):
    token = object()
    OPEN_STREAMS.add(token)
    try:
        yield from frames
    finally:  # the stream ended, or the client left and the server closed us
        OPEN_STREAMS.discard(token)


app = create_app()
