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
HTTP_FAULTS = {401: "Incorrect API key provided (simulated).", 429: "Rate limit reached (simulated).",
               500: "The server had an error while processing your request (simulated)."}
OPEN_STREAMS = set()  # streams being written right now; GET /stats counts them
CALLS = [0]  # answers asked for since the start (a list: a module global the views update)


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
        """Streams open now, and answers asked for: the tests watch who calls the LLM."""
        return {"open_streams": len(OPEN_STREAMS), "calls": CALLS[0]}

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
        CALLS[0] += 1
        if fault in ("401", "429", "500"):
            status = int(fault)
            return llm.error_body(dialect, status, HTTP_FAULTS[status]), status, (
                {"Retry-After": "1"} if status == 429 else {})
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
            web.fail(f"max_tokens must be a positive integer, got {max_tokens!r}")
        pieces, finish = llm.reply(messages, max_tokens)
        usage = llm.count_usage(messages, pieces)
        if not stream:
            return llm.answer(dialect, pieces, finish, model, usage)
        if dialect == "openai":
            frames = llm.openai_stream(pieces, finish, model, usage if include_usage else None, delay)
        else:
            frames = llm.dashscope_stream(pieces, finish, usage, delay)
        return sse.event_stream(counted(llm.with_fault(frames, fault, dialect, request.environ, delay)))

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


def counted(frames):
    token = object()
    OPEN_STREAMS.add(token)
    try:
        yield from frames
    finally:  # the stream ended, or the client left and the server closed us
        OPEN_STREAMS.discard(token)


app = create_app()
