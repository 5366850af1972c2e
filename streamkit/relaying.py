"""The production relay's machinery (demo 3's /relay/chat): the upstream call, one
relayed answer read by a thread of its own, and the watch that wakes quiet relays.

What it adds to the simple relay, each for a failure the simple one has:
- a ping every HEARTBEAT s while the LLM is silent: a WSGI server notices a departed
  client only when a write fails, and a read blocked on a silent LLM writes nothing;
- UPSTREAM_TIMEOUT enforced by one watch thread instead of a timer per read;
- a bounded mailbox between the reader and the response (backpressure);
- one pool of connections to the LLM (no TCP and TLS handshake per chat), with one
  retry of a kept-alive connection the server closed unanswered;
- the key masked in every message; HEAD starts no answer.
"""
import contextlib
import http.cookiejar
import json
import logging
import queue
import threading
import time

import requests
from flask import current_app, request
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from streamkit import llm, settings, sse, web

HEARTBEAT = 0.5  # s: a silent upstream still gets a write to the client this often
MAILBOX = 256  # frames read but not yet sent: a reader that far ahead waits its turn
QUIET = b""  # what the watch puts in a quiet relay's mailbox: wake up and ping
AFTER_ANSWER = 1.0, 65536  # s and bytes: how much of the body to read after the answer, at most
CONNECT_TIMEOUT = 3.05  # Requests' advice: a little over a multiple of 3 s (TCP's retransmit)
POOL_SIZE = 1000  # idle connections to the LLM kept for the next chats (one per chat at once)
MAX_TEXT = 8000  # characters per message
FAKE_MODEL = "fake-llm"  # what the built-in fake LLM calls itself
WATCH_LOCK = threading.Lock()
LOG = logging.getLogger("demos.relay")  # the relay app's logger (Flask names it after its module)


def check_config(config):
    """The rules between the settings (each one alone is checked by streamkit/settings.py)."""
    settings.check({name: str(value) for name, value in config.items() if name in settings.SETTINGS and value is not None})


def read_messages():
    """The chat to send: POST {"messages": [{"role", "content"}, …]}, or GET ?q=prompt."""
    if request.method in ("GET", "HEAD"):
        prompt = request.args.get("q", "")
        if not prompt.strip() or len(prompt) > MAX_TEXT:
            web.fail(f"q must be a prompt of 1 to {MAX_TEXT} characters")
        return [{"role": "user", "content": prompt}]
    body = request.get_json(force=True, silent=True)  # curl -d sends no JSON type: take it anyway
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not 1 <= len(messages) <= 100:
        web.fail('the body must be JSON {"messages": [{"role": "user", "content": "…"}]}, 1 to 100 messages')
    for message in messages:
        if not (isinstance(message, dict) and message.get("role") in ("system", "user", "assistant")
                and isinstance(message.get("content"), str) and len(message["content"]) <= MAX_TEXT):
            web.fail(f'each message must be {{"role": "system|user|assistant", "content": "<≤ {MAX_TEXT} chars>"}}')
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def read_fault(builtin, faults):
    """?fault=…: the fake LLM's X-Fake-Fault, for the page's "simulate a failure"."""
    fault = request.args.get("fault", "")
    if fault and not builtin:  # a client's header never goes to a real provider
        web.fail("fault needs the built-in fake LLM, and UPSTREAM_BASE_URL is set")
    if fault and fault not in faults:
        web.fail(f"fault must be one of {', '.join(faults)}; got {fault!r}")
    return fault


def upstream_request(config, messages, fault, environ):
    """The keyword arguments of requests.post() for a streaming call to the LLM:
    url, headers and JSON body in the configured dialect."""
    dialect, key = config["UPSTREAM_DIALECT"], config["UPSTREAM_API_KEY"]
    extra, body = llm.request_for(dialect, config["UPSTREAM_MODEL"] or FAKE_MODEL, messages)
    # identity: a compressed stream would arrive in bursts, whenever the compressor flushes
    headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity", **extra}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if fault:
        headers["X-Fake-Fault"] = fault
    url = (config["UPSTREAM_BASE_URL"] or builtin_url(environ, dialect)) + llm.PATHS[dialect]
    # Our own fake is reached directly, never through an HTTP_PROXY from the environment.
    proxies = {"http": None, "https": None} if not config["UPSTREAM_BASE_URL"] else None
    return {"url": url, "headers": headers, "json": body, "proxies": proxies}


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
    call = upstream_request(config, messages, fault, environ)
    timeout = (CONNECT_TIMEOUT, config["UPSTREAM_TIMEOUT"])
    for post in (session.post, requests.post):  # the second, once, on a connection of its own
        try:
            upstream = post(**call, stream=True, timeout=timeout)
            break
        except requests.RequestException as error:  # refused, unreachable, or no answer in time
            if post == session.post and closed_unanswered(error):
                # As the openai SDK does. The price: a server that read the chat and then
                # died without a word gets it twice (a closed idle connection is far likelier).
                current_app.logger.info("relay: the upstream closed a connection unanswered; asking again")
                continue
            give_up(f"could not reach the upstream at {call['url']} ({type(error).__name__})")
    check_answer(upstream, config["UPSTREAM_API_KEY"])
    return upstream


def check_answer(upstream, key):
    """An answer that is not a 200 event stream becomes the client's HTTP error, in the
    provider's own words (with the key masked): 401 and 429 as they are, others 502."""
    kind = upstream.headers.get("Content-Type", "")
    if upstream.status_code != 200 or not kind.startswith("text/event-stream"):
        with upstream:
            said = (llm.error_message(upstream.raw.read(65536, decode_content=True))
                    if upstream.status_code != 200 else f"{kind}, not an event stream")
        status = upstream.status_code if upstream.status_code in (401, 429) else 502
        give_up(redact(f"the upstream answered {upstream.status_code}: {said}", key), status)


def give_up(message, status=502):
    current_app.logger.warning("relay: %s", message)  # never the key: it is in no message
    web.fail(message, status)


def redact(message, key):
    """An upstream may quote the key in an error (OpenAI masks most of it; be sure).
    Masked first, then cut short: a cut through the key would leave a piece unmatched."""
    return (message.replace(key, "***") if key else message)[:400]


class Relay:
    """One relayed answer. A reader thread turns upstream bytes into our frames; the
    response writes them out, or a ping when the upstream is quiet: a WSGI server notices
    a departed client only when a write fails, and a read blocked on a silent LLM writes nothing."""

    live = set()  # the relays streaming now, in this process: the watch visits them
    watch = None  # the thread that wakes quiet relays, started by the first one

    def __init__(self, upstream, dialect, key, timeout, show_upstream=False):
        self.upstream, self.key, self.timeout, self.show = upstream, key, timeout, show_upstream
        self.convert = llm.READERS[dialect]
        self.mailbox, self.reading, self.gone, self.timed_out = queue.Queue(MAILBOX), False, False, False
        self.complete = False  # the whole answer is in the mailbox: the reader reads the body's end
        self.heard = self.sent = time.monotonic()  # the upstream's last read, our last write
        untimed(upstream)  # from here on the watch enforces UPSTREAM_TIMEOUT

    def frames(self):
        """The response body: all frames ready, in one write; a ping when woken with none."""
        self.reading = True
        threading.Thread(target=self.pump, name="relay reader", daemon=True).start()
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
        if not self.complete:  # complete: the LLM has stopped already
            self.cut()
        while not self.mailbox.empty():  # nor may the reader wait for room in the mailbox for ever
            self.mailbox.get_nowait()

    def cut(self):
        cut(self.upstream)

    def pump(self):
        """The reader thread: upstream bytes → events → our frames, into the mailbox."""
        try:
            for frame in self.convert(sse.iter_events(self.reads())):
                if self.gone:
                    break
                self.mailbox.put(frame)  # waits while the mailbox is full: backpressure
                self.heard = time.monotonic()  # time spent waiting for the client is not the LLM's silence
            else:
                self.complete = True
        except Exception as error:  # the upstream broke, went silent, or we stopped it
            if not self.gone:
                self.mailbox.put(error_frame(error, self.key, self.timed_out))
        finally:
            if not self.gone:
                self.mailbox.put(None)  # the client's answer ends here
            if self.complete:
                self.read_to_end()
            self.upstream.close()

    def reads(self):
        """The upstream's bytes, each read as it arrives; with debug=1 the page sees them too."""
        # Kept on self: when the parsing stops at the answer's end, a generator let go
        # would be closed, and close the connection that read_to_end() means to keep.
        self.body = self.upstream.iter_content(chunk_size=None)
        for chunk in self.body:
            self.heard = time.monotonic()
            if self.show:
                text = chunk.decode("utf-8", "backslashreplace")  # a cut character shows as \\xe4
                self.mailbox.put(sse.format_event(json.dumps(text, ensure_ascii=False), event="upstream").encode())
            yield chunk

    def read_to_end(self):
        read_to_end(self.upstream)


def untimed(upstream):
    """Take the read timeout off the upstream's socket, for a caller that enforces
    UPSTREAM_TIMEOUT itself: a socket timeout starts and cancels a timer on every
    read, 20,000 a second at 1,000 streams, seen in the p99. (An upstream that said
    "Connection: close" keeps it: urllib3 lets go of its socket.)"""
    if (connection := upstream.raw.connection) and connection.sock:
        connection.sock.settimeout(None)


def cut(upstream):
    """Shut the upstream connection under the thread reading it: its read returns at
    once, and it closes the response. Only the reader closes; a close() mid-read would break."""
    try:
        upstream.raw.shutdown()
    except (ValueError, RuntimeError, OSError, AttributeError):
        pass  # already read to the end


def read_to_end(upstream):
    """The answer is complete and on its way to the client, but the body is not over:
    after OpenAI's `data: [DONE]` comes chunked encoding's last chunk. Reading the
    rest lets requests put the connection back in its pool for the next chat; a body
    that goes on, or stalls, costs the connection instead."""
    seconds, left = AFTER_ANSWER
    deadline = time.monotonic() + seconds
    with contextlib.suppress(Exception):  # the client has its answer: nothing to report
        if (connection := upstream.raw.connection) and connection.sock:
            connection.sock.settimeout(seconds)  # each read waits that long at most
        # In small reads: one read of iter_content(None) is a whole HTTP chunk, however long.
        for piece in upstream.raw.stream(4096):
            left -= len(piece)
            if left < 0 or time.monotonic() > deadline:
                break


def error_frame(error, key, timed_out=False):
    """`event: relay-error` for a failure after the stream began: the status is in the data."""
    status = 502
    if isinstance(error, llm.UpstreamError):
        message = str(error)
    elif timed_out or error.args and isinstance(error.args[0], ReadTimeoutError):
        message, status = "the upstream went silent for longer than UPSTREAM_TIMEOUT", 504
    elif isinstance(error, requests.RequestException):
        message = "the connection to the upstream broke mid-answer"
    elif isinstance(error, (ValueError, LookupError, TypeError, AttributeError)):
        message = "the upstream sent an event the relay could not read"
    else:
        LOG.exception("relay: unexpected failure")
        message, status = "the relay failed", 500
    message = redact(message, key)
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
        try:
            visit(time.monotonic())
        except Exception:  # never let one odd relay end the watch for every relay
            LOG.exception("relay: the watch failed a round")


def visit(now):
    for relay in list(Relay.live):
        # A full mailbox: the reader waits for a slow client, not for the LLM.
        # A complete one: the LLM is done, and its connection may serve another chat by now.
        if (now - relay.heard > relay.timeout and not relay.timed_out and not relay.mailbox.full()
                and not relay.complete):
            relay.timed_out = True
            relay.cut()
        if now - relay.sent >= HEARTBEAT:
            with contextlib.suppress(queue.Full):  # full: it has frames to send anyway
                relay.mailbox.put_nowait(QUIET)
