"""Relay: an LLM's answer streamed through Flask, token by token (the ChatGPT pattern).

Shows: the browser talks only to this server, which calls the LLM with `requests`
(stream=True), parses its SSE bytes with the kit's EventParser and re-emits each
piece as `data: {"content": …}`, then `event: usage`, then `event: done`. A failure
before the first byte is an HTTP status; a later one is `event: relay-error`.
Two relays, one wire:
  /relay/simple  the whole idea: the response generator reads the LLM itself. Start here.
  /relay/chat    the production relay (streamkit/relaying.py): it pings while the LLM
                 is silent, so a client that left is noticed within a second.
Run: flask --app demos.relay run --debug   (alone, it serves the fake LLM too),
or the hub at /relay/
Watch the raw stream: curl -N "http://127.0.0.1:8000/relay/simple?q=3%2B5%3D%3F"
A real LLM: UPSTREAM_BASE_URL=https://api.openai.com/v1 UPSTREAM_API_KEY=sk-…
UPSTREAM_MODEL=gpt-4o-mini (any OpenAI-compatible server), or UPSTREAM_DIALECT=dashscope.
Leaves out on purpose: chat history on the server, tool calls, retries.
"""
from urllib.parse import urlsplit

import requests
from flask import render_template, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from demos import fake_llm
from streamkit import llm, relaying, sse, web

HELD = set()  # simple relays reading an LLM stream right now: the page shows how many
SETTINGS = ["UPSTREAM_BASE_URL", "UPSTREAM_API_KEY", "UPSTREAM_MODEL", "UPSTREAM_DIALECT", "UPSTREAM_TIMEOUT"]


def create_app(test_config=None):
    app = web.new_app(__name__, test_config, SETTINGS)
    relaying.check_config(app.config)  # e.g. a key without a URL: refused now, not mid-stream
    config, builtin = app.config, not app.config["UPSTREAM_BASE_URL"]
    if builtin:  # alone, serve the fake LLM at the path the hub gives it
        app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/fake-llm": fake_llm.create_app(test_config)})
    session = relaying.upstream_session()
    app.logger.info("relay: upstream %s", config["UPSTREAM_BASE_URL"] or "the built-in fake LLM")

    @app.get("/")
    def index():
        """The chat page: simple or production relay, fetch() or EventSource, the fault menu."""
        where = "the built-in fake LLM" if builtin else urlsplit(config["UPSTREAM_BASE_URL"]).hostname
        return render_template("relay/index.html", upstream=where, faults=fake_llm.FAULTS if builtin else {},
                               model=config["UPSTREAM_MODEL"] or fake_llm.MODEL,
                               raw_upstream=not config["UPSTREAM_API_KEY"])

    @app.get("/stats")
    def stats():
        """LLM streams each relay holds open: after Stop, a stalled simple relay still holds one."""
        return {"simple": len(HELD), "production": len(relaying.Relay.live)}

    @app.route("/simple", methods=["GET", "POST"])
    def simple():
        """The simple relay: POST {"messages": […]} (fetch), or GET ?q=… (EventSource)."""
        if request.method == "HEAD":  # headers only: never start (and pay for) an answer
            return sse.event_stream(())
        messages, fault, key = relaying.read_messages(), relaying.read_fault(builtin, fake_llm.FAULTS), config["UPSTREAM_API_KEY"]
        call = relaying.upstream_request(config, messages, fault, request.environ)
        try:
            upstream = requests.post(**call, stream=True, timeout=(3.05, config["UPSTREAM_TIMEOUT"]))
        except requests.RequestException as error:  # refused, unreachable, or no answer in time
            web.fail(f"could not reach the upstream at {call['url']} ({type(error).__name__})", 502)
        # Nothing sent yet: an answer that is not a 200 event stream is the client's HTTP error.
        if upstream.status_code != 200 or "event-stream" not in upstream.headers.get("Content-Type", ""):
            with upstream:
                said = llm.error_message(upstream.raw.read(65536))
            status = upstream.status_code if upstream.status_code in (401, 429) else 502
            web.fail(relaying.redact(f"the upstream answered {upstream.status_code}: {said}", key), status)
        return sse.event_stream(held(relay_simply(upstream, config["UPSTREAM_DIALECT"], key)))

    @app.route("/chat", methods=["GET", "POST"])
    def chat():
        """The production relay: the same wire, and a ping while the LLM is silent."""
        if request.method == "HEAD":  # headers only: never start (and pay for) an answer
            return sse.event_stream(())
        messages, fault = relaying.read_messages(), relaying.read_fault(builtin, fake_llm.FAULTS)
        show_upstream = request.args.get("debug") == "1"
        if show_upstream and config["UPSTREAM_API_KEY"]:  # raw reads can't be masked: a key may span two
            web.fail("debug=1 (the upstream's raw bytes) works only without UPSTREAM_API_KEY: they may quote the key")
        upstream = relaying.open_upstream(session, config, messages, fault, request.environ)
        relay = relaying.Relay(upstream, config["UPSTREAM_DIALECT"], config["UPSTREAM_API_KEY"],
                               config["UPSTREAM_TIMEOUT"], show_upstream)
        return sse.event_stream(relay.frames(), encoded=True)  # its finally closes the upstream

    return app


def relay_simply(upstream, dialect, key):
    """The LLM's bytes → its events → our frames, one at a time, as they arrive."""
    try:
        yield sse.PING  # the first bytes at once: the headers go out, proxies see life
        events = sse.iter_events(upstream.iter_content(chunk_size=None))
        yield from llm.READERS[dialect](events)
    except Exception as error:  # it broke, went silent, or sent what we cannot read
        yield relaying.error_frame(error, key)
    finally:  # the answer ended, or the client left (the server closes us when a write fails)
        upstream.close()


def held(frames):
    """Counts the simple relays at work for the page's /stats (the relay needs none of it)."""
    token = object()
    HELD.add(token)
    try:
        yield from frames
    finally:  # closing us closes `frames` first: its upstream is closed by then
        HELD.discard(token)


app = create_app()
