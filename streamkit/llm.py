"""The two LLM streaming dialects the kit speaks, each written and read.

OpenAI chat completions (also DeepSeek, Ollama, vLLM…): one `data:` event per
token carrying only the new text, in `choices[0].delta.content`; a
`finish_reason`; a usage chunk if asked for; then `data: [DONE]`.
Alibaba DashScope: `id:n` / `event:result` events whose `output.text` is the
*whole* answer so far, `finish_reason` the string "null" until the last one.
The fake LLM (demo 4) writes them; the relay (demo 3) reads them into the kit's
own events: `data: {"content": …}`, then `event: usage`, then `event: done`.
"""
import json
import re
import socket
import time
import uuid

from streamkit import sse, web

PATHS = {"openai": "/chat/completions", "dashscope": "/services/aigc/text-generation/generation"}
DONE = sse.format_event("[DONE]", event="done").encode()


def request_for(dialect, model, messages):
    """Extra headers and the JSON body that ask each dialect for a stream."""
    if dialect == "openai":
        return {}, {"model": model, "messages": messages, "stream": True,
                    "stream_options": {"include_usage": True}}
    # incremental_output false: every event carries the whole text (what we undo below)
    return {"X-DashScope-SSE": "enable"}, {"model": model, "input": {"messages": messages},
                                           "parameters": {"incremental_output": False}}


# --- the fake LLM's answers: deterministic, offline, tokenized roughly as GPT does -------

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


def reply(messages, max_tokens=None):
    """The answer to the last user message of [(role, text), …], as tokens, and why it stops."""
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
    return pieces[:max_tokens], "length" if max_tokens < len(pieces) else "stop"


def count_usage(messages, pieces):
    prompt = sum(len(TOKEN.findall(text)) for _, text in messages)
    return {"prompt_tokens": prompt, "completion_tokens": len(pieces),
            "total_tokens": prompt + len(pieces)}


# --- writing: the fake LLM's side ---------------------------------------------------------

def compact(value):
    """JSON as the providers send it: no spaces, non-ASCII as raw UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def openai_stream(pieces, finish, model, usage, delay):
    """OpenAI's wire: a role chunk at once, a chunk per token, the finish, usage, [DONE]."""
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model}
    tail = {"usage": None} if usage else {}  # with include_usage every chunk has the key

    def chunk(delta, finish_reason=None):
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return f"data: {compact({**head, 'choices': [choice], **tail})}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in pieces:
        time.sleep(delay)
        yield chunk({"content": piece})
    yield chunk({}, finish)
    if usage:
        yield f"data: {compact({**head, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


def dashscope_stream(pieces, finish, usage, delay):
    """DashScope's wire: no space after the colons, and the whole text so far each time."""
    request_id, text = str(uuid.uuid4()), ""
    for n, piece in enumerate(pieces, 1):
        if n > 1:
            time.sleep(delay)
        text += piece
        output = {"finish_reason": finish if n == len(pieces) else "null", "text": text}
        data = compact({"output": output, "usage": dashscope_usage(usage["prompt_tokens"], n),
                        "request_id": request_id})
        yield f"id:{n}\nevent:result\n:HTTP_STATUS/200\ndata:{data}\n\n"


def dashscope_usage(prompt_tokens, completion_tokens):
    return {"input_tokens": prompt_tokens, "output_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def answer(dialect, pieces, finish, model, usage):
    """The whole answer as one JSON object, when no stream was asked for."""
    if dialect == "dashscope":
        return {"output": {"finish_reason": finish, "text": "".join(pieces)}, "request_id": str(uuid.uuid4()),
                "usage": dashscope_usage(usage["prompt_tokens"], usage["completion_tokens"])}
    message = {"role": "assistant", "content": "".join(pieces)}
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
            "created": int(time.time()), "model": model, "usage": usage,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]}


ERROR_CODES = {  # status: (OpenAI's type and code, DashScope's code)
    401: ("invalid_request_error", "invalid_api_key", "InvalidApiKey"),
    429: ("requests", "rate_limit_exceeded", "Throttling"),
    500: ("server_error", None, "InternalError"),
}


def error_body(dialect, status, message):
    """An HTTP error's body, in each provider's own shape."""
    kind, code, dashscope_code = ERROR_CODES[status]
    if dialect == "dashscope":
        return {"code": dashscope_code, "message": message, "request_id": str(uuid.uuid4())}
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def error_event(dialect, message):
    """A failure reported inside a stream that had already begun."""
    if dialect == "dashscope":
        return f"id:0\nevent:error\n:HTTP_STATUS/500\ndata:{compact(error_body(dialect, 500, message))}\n\n"
    return f"data: {compact(error_body(dialect, 500, message))}\n\n"


# --- the faults the fake LLM injects on request (X-Fake-Fault; demos/fake_llm.py lists them)

FAULT_AT = 3  # a fault strikes after this many events, so some text has arrived
STALL = 60.0  # seconds of silence: longer than the relay's default UPSTREAM_TIMEOUT


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
            yield error_event(dialect, "The model crashed (simulated).")
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


# --- reading: the relay's side ------------------------------------------------------------

class UpstreamError(Exception):
    """The upstream said, mid-stream, that something went wrong."""


def error_message(body):
    """The provider's own words: OpenAI's {"error": {"message"}}, DashScope's {"message"}."""
    try:
        body = json.loads(body)
    except ValueError:
        return "no details"
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    if not message and isinstance(body, dict):
        message = body.get("message")
    return str(message or "no details")  # whole: the relay masks the key, then cuts it short


_to_json = json.JSONEncoder(ensure_ascii=False).encode  # made once: dumps() would make one per call


def content(text):
    # JSON escapes every line break, so the frame is one data: line; it is
    # encoded here, once, and the response writes the bytes as they are.
    # (Encoding the string alone takes the encoder's fast path; a dict would not.)
    return b'data: {"content": %s}\n\n' % _to_json(text).encode()


def ending(prompt_tokens, completion_tokens):
    """The usage, when the upstream told us, then done."""
    if prompt_tokens is not None and completion_tokens is not None:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        yield sse.format_event(json.dumps(usage), event="usage").encode()
    yield DONE


def from_openai(events, piece=content):
    """OpenAI chunks → our frames: each delta's content, the usage, done. `piece`
    makes a delta's frame (str: the plain text, for demo 8's answer store)."""
    usage, finish = {}, None
    for event in events:
        if event.data == "[DONE]":
            break
        chunk = json.loads(event.data)
        if chunk.get("error"):
            raise UpstreamError(f"the upstream failed: {error_message(event.data)}")
        for choice in chunk.get("choices") or ():
            if text := choice["delta"].get("content"):
                yield piece(text)
            finish = choice.get("finish_reason") or finish
        usage = chunk.get("usage") or usage
    else:
        if not finish:  # no [DONE] and no finish_reason: the answer was cut short
            raise UpstreamError("the upstream ended the stream before the answer was complete")
    yield from ending(usage.get("prompt_tokens"), usage.get("completion_tokens"))


def from_dashscope(events, piece=content):
    """DashScope results → our frames: every event repeats the whole text so far,
    so we send only what is new; then the usage, done."""
    sent, usage = "", {}
    for event in events:
        result = json.loads(event.data)
        if event.event == "error" or "output" not in result:
            raise UpstreamError(f"the upstream failed: {error_message(event.data)}")
        text = result["output"].get("text") or ""
        if not text.startswith(sent):
            raise UpstreamError("the upstream's text stopped growing from the text so far")
        if len(text) > len(sent):
            yield piece(text[len(sent):])
            sent = text
        usage = result.get("usage") or usage
        if result["output"].get("finish_reason") not in (None, "null"):
            break
    else:
        raise UpstreamError("the upstream ended the stream before the answer was complete")
    yield from ending(usage.get("input_tokens"), usage.get("output_tokens"))


READERS = {"openai": from_openai, "dashscope": from_dashscope}
