"""Relay: an LLM's answer streamed through Flask, token by token (the ChatGPT pattern).

Shows: the browser talks only to this server, which calls the LLM with `requests`
(stream=True), parses its SSE bytes with the kit's EventParser, and re-emits each
piece as `data: {"content": …}`, then `event: usage`, then `event: done`. A failure
before the first byte is an HTTP status; a later one is `event: relay-error`. When
the client leaves, the upstream connection is closed: the LLM stops generating.
Run: flask --app demos.relay run --debug   (alone, it serves the fake LLM too),
or the hub at /relay/
Watch the raw stream: curl -N "http://127.0.0.1:8000/relay/chat?q=3%2B5%3D%3F"
A real LLM: UPSTREAM_BASE_URL=https://api.openai.com/v1 UPSTREAM_API_KEY=sk-…
UPSTREAM_MODEL=gpt-4o-mini (any OpenAI-compatible server), or UPSTREAM_DIALECT=dashscope.
Leaves out on purpose: chat history on the server, tool calls, retries (but one: a
connection the LLM's server closed without a word, as it does a kept-alive one it let go).
"""
import http.cookiejar
import os
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ProtocolError
from flask import current_app, render_template, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from demos import fake_llm
from streamkit import llm, sse, web
from streamkit.relaying import Relay, redact

CONNECT_TIMEOUT = 3.05  # Requests' advice: a little over a multiple of 3 s (TCP's retransmit)
MAX_TEXT = 8000  # characters per message
POOL_SIZE = 1000  # idle connections to the LLM kept for the next chats (one per chat at once)


def create_app(test_config=None):
    app = web.new_app(__name__)
    app.config.from_mapping(UPSTREAM_BASE_URL="", UPSTREAM_API_KEY="", UPSTREAM_MODEL="",
                            UPSTREAM_DIALECT="openai", UPSTREAM_TIMEOUT=30.0)
    if test_config is None:
        app.config.from_mapping({name: os.environ[name] for name in list(app.config)
                                 if name.startswith("UPSTREAM_") and name in os.environ})
    else:
        app.config.update(test_config)
    check_config(app.config)  # now, not mid-stream
    session = upstream_session()
    builtin = not app.config["UPSTREAM_BASE_URL"]
    app.logger.info("relay: upstream %s", app.config["UPSTREAM_BASE_URL"] or "the built-in fake LLM")
    if builtin:  # alone, serve the fake LLM at the path the hub gives it
        app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/fake-llm": fake_llm.create_app(test_config)})

    @app.get("/")
    def index():
        """The chat page: fetch() and EventSource, the raw wire, the fault menu."""
        where = "the built-in fake LLM" if builtin else urlsplit(app.config["UPSTREAM_BASE_URL"]).hostname
        return render_template("relay/index.html", upstream=where, faults=fake_llm.FAULTS if builtin else {},
                               model=app.config["UPSTREAM_MODEL"] or fake_llm.MODEL,
                               raw_upstream=not app.config["UPSTREAM_API_KEY"])

    @app.route("/chat", methods=["GET", "POST"])
    def chat():
        """The relayed answer: POST {"messages": […]} (fetch), or GET ?q=… (EventSource)."""
        if request.method == "HEAD":  # headers only: never start (and pay for) an answer
            return sse.event_stream(())
        messages = read_messages()
        fault = request.args.get("fault", "")
        if fault and not builtin:  # a client's header never goes to a real provider
            web.fail("fault needs the built-in fake LLM, and UPSTREAM_BASE_URL is set")
        if fault and fault not in fake_llm.FAULTS:
            web.fail(f"fault must be one of {', '.join(fake_llm.FAULTS)}; got {fault!r}")
        show_upstream = request.args.get("debug") == "1"
        if show_upstream and app.config["UPSTREAM_API_KEY"]:  # raw reads can't be masked: a key may span two
            web.fail("debug=1 (the upstream's raw bytes) works only without UPSTREAM_API_KEY: they may quote the key")
        upstream = open_upstream(session, app.config, messages, fault, request.environ)
        relay = Relay(upstream, app.config["UPSTREAM_DIALECT"], app.config["UPSTREAM_API_KEY"],
                      app.config["UPSTREAM_TIMEOUT"], show_upstream)
        return sse.event_stream(relay.frames(), encoded=True)  # its finally closes the upstream

    return app


def check_config(config):
    """Refuse to start with settings that could only fail later, mid-stream."""
    base, dialect = config["UPSTREAM_BASE_URL"].rstrip("/"), config["UPSTREAM_DIALECT"]
    if dialect not in llm.PATHS:
        raise ValueError(f"UPSTREAM_DIALECT must be openai or dashscope, got {dialect!r}")
    parts = urlsplit(base)
    if parts.username or parts.password:
        raise ValueError("UPSTREAM_BASE_URL must not hold credentials: use UPSTREAM_API_KEY")
    if base and (parts.scheme not in ("http", "https") or not parts.hostname or parts.query):
        raise ValueError(f"UPSTREAM_BASE_URL must look like https://api.openai.com/v1, got {base!r}")
    if base and not config["UPSTREAM_MODEL"]:
        raise ValueError("UPSTREAM_MODEL is required with UPSTREAM_BASE_URL (gpt-4o-mini, qwen-turbo, …)")
    if not base and config["UPSTREAM_API_KEY"]:
        raise ValueError("UPSTREAM_API_KEY is set without UPSTREAM_BASE_URL: it would go to the fake LLM")
    try:
        timeout = float(config["UPSTREAM_TIMEOUT"])
    except ValueError:
        timeout = 0
    if not 0.1 <= timeout <= 600:
        raise ValueError(f"UPSTREAM_TIMEOUT must be 0.1 to 600 seconds, got {config['UPSTREAM_TIMEOUT']!r}")
    config.update(UPSTREAM_BASE_URL=base, UPSTREAM_TIMEOUT=timeout)


def read_messages():
    """The chat to send: POST {"messages": [{"role", "content"}, …]}, or GET ?q=prompt."""
    if request.method == "GET":
        prompt = request.args.get("q", "")
        if not prompt.strip() or len(prompt) > MAX_TEXT:
            web.fail(f"q must be a prompt of 1 to {MAX_TEXT} characters")
        return [{"role": "user", "content": prompt}]
    body = request.get_json(silent=True)
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not 1 <= len(messages) <= 100:
        web.fail('the body must be JSON {"messages": [{"role": "user", "content": "…"}]}, 1 to 100 messages')
    for message in messages:
        if not (isinstance(message, dict) and message.get("role") in ("system", "user", "assistant")
                and isinstance(message.get("content"), str) and len(message["content"]) <= MAX_TEXT):
            web.fail(f'each message must be {{"role": "system|user|assistant", "content": "<≤ {MAX_TEXT} chars>"}}')
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def builtin_url(environ, dialect):
    """The fake LLM on this very server, at the address the server listens on."""
    if (own := web.own_url(environ)) is None:
        give_up("the built-in fake LLM needs a TCP server (gunicorn, flask run, python -m demos serve)")
    return own + ("/fake-llm/v1" if dialect == "openai" else "/fake-llm/api/v1")


def upstream_session():
    """One connection pool for the app's calls to the LLM: a chat after the first skips
    the TCP and TLS handshakes (with a real provider, tens to hundreds of ms of time to
    first token). It keeps no cookies: every user's chat goes through it."""
    session = requests.Session()
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    adapter = HTTPAdapter(pool_maxsize=POOL_SIZE)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def closed_unanswered(error):
    """The server closed the connection before a byte of an answer: what a kept-alive
    connection does when the server let it go, idle, just as we sent on it. (urllib3
    checks a pooled connection before reuse, but the server may close it a moment later.)"""
    reason = error.args[0] if error.args else None
    return isinstance(reason, ProtocolError) and isinstance(reason.args[-1], (ConnectionResetError, BrokenPipeError))


def open_upstream(session, config, messages, fault, environ):
    """POST the chat to the LLM, stream=True. Returns the response once its status
    and type say it will stream; any failure before that is the client's HTTP error."""
    dialect, key, timeout = config["UPSTREAM_DIALECT"], config["UPSTREAM_API_KEY"], config["UPSTREAM_TIMEOUT"]
    extra, body = llm.request_for(dialect, config["UPSTREAM_MODEL"] or fake_llm.MODEL, messages)
    # identity: a compressed stream would arrive in bursts, whenever the compressor flushes
    headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity", **extra}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if fault:
        headers["X-Fake-Fault"] = fault
    url = (config["UPSTREAM_BASE_URL"] or builtin_url(environ, dialect)) + llm.PATHS[dialect]
    # Our own fake is reached directly, never through an HTTP_PROXY from the environment.
    proxies = {"http": None, "https": None} if not config["UPSTREAM_BASE_URL"] else None
    for post in (session.post, requests.post):  # the second, once, on a connection of its own
        try:
            upstream = post(url, json=body, headers=headers, stream=True, proxies=proxies,
                            timeout=(CONNECT_TIMEOUT, timeout))
            break
        except requests.RequestException as error:  # refused, unreachable, or no answer in time
            if post == session.post and closed_unanswered(error):
                # As the openai SDK does. The price: a server that read the chat and then
                # died without a word gets it twice (a closed idle connection is far likelier).
                current_app.logger.info("relay: the upstream closed a connection unanswered; asking again")
                continue
            give_up(f"could not reach the upstream ({type(error).__name__})")
    kind = upstream.headers.get("Content-Type", "")
    if upstream.status_code != 200 or not kind.startswith("text/event-stream"):
        with upstream:
            said = (llm.error_message(upstream.raw.read(65536, decode_content=True))
                    if upstream.status_code != 200 else f"{kind}, not an event stream")
        status = upstream.status_code if upstream.status_code in (401, 429) else 502
        give_up(redact(f"the upstream answered {upstream.status_code}: {said}", key), status)
    return upstream


def give_up(message, status=502):
    current_app.logger.warning("relay: %s", message)  # never the key: it is in no message
    web.fail(message, status)


app = create_app()
