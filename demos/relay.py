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
Leaves out on purpose: chat history on the server, tool calls, retries.
"""
import contextlib
import json
import logging
import os
import queue
import threading
import time
from urllib.parse import urlsplit

import requests
from flask import current_app, render_template, request
from urllib3.exceptions import ReadTimeoutError
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from demos import dialects, fake_llm, sse, web

CONNECT_TIMEOUT = 3.05  # Requests' advice: a little over a multiple of 3 s (TCP's retransmit)
HEARTBEAT = 0.5  # s: a silent upstream still gets a write to the client this often
MAILBOX = 256  # frames read but not yet sent: a reader that far ahead waits its turn
MAX_TEXT = 8000  # characters per message
QUIET = b""  # what the watch puts in a quiet relay's mailbox: wake up and ping
WATCH_LOCK = threading.Lock()
LOG = logging.getLogger(__name__)  # the app's logger (Flask names it after the module)


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
    builtin = not app.config["UPSTREAM_BASE_URL"]
    app.logger.info("relay: upstream %s", app.config["UPSTREAM_BASE_URL"] or "the built-in fake LLM")
    if builtin:  # alone, serve the fake LLM at the path the hub gives it
        app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/fake-llm": fake_llm.create_app(test_config)})

    @app.get("/")
    def index():
        """The chat page: fetch() and EventSource, the raw wire, the fault menu."""
        where = "the built-in fake LLM" if builtin else urlsplit(app.config["UPSTREAM_BASE_URL"]).hostname
        return render_template("relay/index.html", upstream=where, faults=fake_llm.FAULTS if builtin else {},
                               model=app.config["UPSTREAM_MODEL"] or fake_llm.MODEL)

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
        upstream = open_upstream(app.config, messages, fault, request.environ)
        relay = Relay(upstream, app.config["UPSTREAM_DIALECT"], app.config["UPSTREAM_API_KEY"],
                      app.config["UPSTREAM_TIMEOUT"], show_upstream=request.args.get("debug") == "1")
        return sse.event_stream(relay.frames(), encoded=True)  # its finally closes the upstream

    return app


def check_config(config):
    """Refuse to start with settings that could only fail later, mid-stream."""
    base, dialect = config["UPSTREAM_BASE_URL"].rstrip("/"), config["UPSTREAM_DIALECT"]
    if dialect not in dialects.PATHS:
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


def open_upstream(config, messages, fault, environ):
    """POST the chat to the LLM, stream=True. Returns the response once its status
    and type say it will stream; any failure before that is the client's HTTP error."""
    dialect, key, timeout = config["UPSTREAM_DIALECT"], config["UPSTREAM_API_KEY"], config["UPSTREAM_TIMEOUT"]
    extra, body = dialects.request_for(dialect, config["UPSTREAM_MODEL"] or fake_llm.MODEL, messages)
    # identity: a compressed stream would arrive in bursts, whenever the compressor flushes
    headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity", **extra}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if fault:
        headers["X-Fake-Fault"] = fault
    url = (config["UPSTREAM_BASE_URL"] or builtin_url(environ, dialect)) + dialects.PATHS[dialect]
    # Our own fake is reached directly, never through an HTTP_PROXY from the environment.
    proxies = {"http": None, "https": None} if not config["UPSTREAM_BASE_URL"] else None
    try:
        upstream = requests.post(url, json=body, headers=headers, stream=True, proxies=proxies,
                                 timeout=(CONNECT_TIMEOUT, timeout))
    except requests.RequestException as error:  # refused, unreachable, or no answer in time
        give_up(f"could not reach the upstream ({type(error).__name__})")
    kind = upstream.headers.get("Content-Type", "")
    if upstream.status_code != 200 or not kind.startswith("text/event-stream"):
        with upstream:
            said = (dialects.error_message(upstream.raw.read(65536, decode_content=True))
                    if upstream.status_code != 200 else f"{kind}, not an event stream")
        status = upstream.status_code if upstream.status_code in (401, 429) else 502
        give_up(redact(f"the upstream answered {upstream.status_code}: {said}", key), status)
    return upstream


def give_up(message, status=502):
    current_app.logger.warning("relay: %s", message)  # never the key: it is in no message
    web.fail(message, status)


def redact(message, key):
    """An upstream may quote the key in an error (OpenAI masks most of it; be sure)."""
    return message.replace(key, "***") if key else message


class Relay:
    """One relayed answer. A reader thread turns upstream bytes into our frames; the
    response writes them out, or a ping when the upstream is quiet: a WSGI server notices
    a departed client only when a write fails, and a read blocked on a silent LLM writes nothing."""

    live = set()  # the relays streaming now, in this process: the watch visits them
    watch = None  # the thread that wakes quiet relays, started by the first one

    def __init__(self, upstream, dialect, key, timeout, show_upstream=False):
        self.upstream, self.key, self.timeout, self.show = upstream, key, timeout, show_upstream
        self.convert = dialects.READERS[dialect]
        self.mailbox, self.reading, self.gone, self.timed_out = queue.Queue(MAILBOX), False, False, False
        self.heard = self.sent = time.monotonic()  # the upstream's last read, our last write
        # From here on the watch enforces UPSTREAM_TIMEOUT: a socket timeout starts and
        # cancels a timer on every read: 20,000 a second at 1,000 streams, seen in the p99.
        # (An upstream that said "Connection: close" keeps it: urllib3 lets go of its socket.)
        if (connection := upstream.raw.connection) and connection.sock:
            connection.sock.settimeout(None)

    def frames(self):
        """The response body: all frames ready, in one write; a ping when woken with none."""
        self.reading = True
        threading.Thread(target=self.pump, daemon=True).start()
        self.live.add(self)
        start_watch()
        try:
            yield sse.PING_BYTES  # the first bytes at once: the headers go out, proxies see life
            while True:
                ready = [self.mailbox.get()]  # no timeout (a timer per event): the watch wakes us
                while ready[-1] is not None and not self.mailbox.empty():
                    ready.append(self.mailbox.get_nowait())
                if ended := ready[-1] is None:
                    ready.pop()
                self.sent = time.monotonic()
                if frames := b"".join(ready):  # the watch's QUIET adds nothing
                    yield frames  # never an empty write: in chunked encoding that ends the body
                elif not ended:
                    yield sse.PING_BYTES  # woken by the watch: a write finds a departed client
                if ended:
                    return
        finally:  # the answer ended, or the client left
            self.live.discard(self)
            self.stop()

    def stop(self):
        """The client has gone: the LLM stops generating (and billing) now."""
        self.gone = True
        if not self.reading:
            return self.upstream.close()
        self.cut()
        while not self.mailbox.empty():  # nor may the reader wait for room in the mailbox for ever
            self.mailbox.get_nowait()

    def cut(self):
        """Shut the upstream connection under the reader: its read returns at once, and
        it closes the response. Only the reader closes; a close() mid-read would break."""
        try:
            self.upstream.raw.shutdown()
        except (ValueError, RuntimeError, OSError):
            pass  # already read to the end

    def pump(self):
        """The reader thread: upstream bytes → events → our frames, into the mailbox."""
        try:
            for frame in self.convert(sse.iter_events(self.reads())):
                if self.gone:
                    break
                self.mailbox.put(frame)  # waits while the mailbox is full: backpressure
        except Exception as error:  # the upstream broke, went silent, or we stopped it
            if not self.gone:
                self.mailbox.put(self.relay_error(error))
        finally:
            self.upstream.close()
            if not self.gone:
                self.mailbox.put(None)

    def reads(self):
        """The upstream's bytes, each read as it arrives; with debug=1 the page sees them too."""
        for chunk in self.upstream.iter_content(chunk_size=None):
            self.heard = time.monotonic()
            if self.show:
                text = chunk.decode("utf-8", "backslashreplace")  # a cut character shows as \\xe4
                self.mailbox.put(sse.format_event(json.dumps(text, ensure_ascii=False), event="upstream").encode())
            yield chunk

    def relay_error(self, error):
        status = 502
        if isinstance(error, dialects.UpstreamError):
            message = str(error)
        elif self.timed_out or error.args and isinstance(error.args[0], ReadTimeoutError):
            message, status = "the upstream went silent for longer than UPSTREAM_TIMEOUT", 504
        elif isinstance(error, requests.RequestException):
            message = "the connection to the upstream broke mid-answer"
        elif isinstance(error, (ValueError, LookupError, TypeError, AttributeError)):
            message = "the upstream sent an event the relay could not read"
        else:
            LOG.exception("relay: unexpected failure")
            message, status = "the relay failed", 500
        message = redact(message, self.key)
        LOG.warning("relay: %s", message)
        return sse.format_event(json.dumps({"message": message, "status": status}), event="relay-error").encode()


def start_watch():
    with WATCH_LOCK:
        if Relay.watch is None:
            Relay.watch = threading.Thread(target=wake_quiet_relays, daemon=True)
            Relay.watch.start()


def wake_quiet_relays():
    """One thread per process, instead of timers on every read and wait of every relay:
    a relay that has written nothing for HEARTBEAT s is woken to send a ping, and one
    whose upstream has sent nothing for UPSTREAM_TIMEOUT s is cut off (a 504 relay-error)."""
    while True:
        time.sleep(HEARTBEAT / 2)
        now = time.monotonic()
        for relay in list(Relay.live):
            if now - relay.heard > relay.timeout and not relay.timed_out:
                relay.timed_out = True
                relay.cut()
            if now - relay.sent >= HEARTBEAT:
                with contextlib.suppress(queue.Full):  # full: it has frames to send anyway
                    relay.mailbox.put_nowait(QUIET)


app = create_app()
