"""Push-style SSE: a Servlet-like writer that another greenlet send()s to.

Shows: the push style of a Java Servlet or Spring `SseEmitter` — a producer
running on its own calls `send()` on a writer, then `complete()` — next to the
pull style of demo 1, where the server pulls each frame out of a generator.
Adds what a resumable stream needs: `retry`, an `id` per event, an `end` event,
and resuming after `Last-Event-ID` with nothing lost and nothing repeated.
Run: flask --app demos.counter run --debug   (alone), or the hub at /counter/
Watch the raw stream: curl -N "http://127.0.0.1:8000/counter/stream?count=3"
Resume by hand: curl -N -H "Last-Event-ID: 2" "http://127.0.0.1:8000/counter/stream?count=3"
"""
import json
import queue
import threading
import time

from flask import jsonify, render_template, request

from streamkit import sse, web

RETRY_MS = 2000  # how long EventSource waits before it reconnects
RUNNING = set()  # producers still counting: the page and the tests watch it


class ClientGone(Exception):
    """send() on a writer whose client has left."""


class EventWriter:
    """The push side, like a Servlet's response writer: send() from any thread
    or greenlet, complete() to finish. The response iterates stream()."""

    def __init__(self, heartbeat):
        self._mailbox = queue.Queue()
        self._heartbeat = heartbeat
        self.open = True

    def send(self, data, **fields):
        if not self.open:
            raise ClientGone
        self._mailbox.put(sse.format_event(data, **fields))

    def complete(self):
        self._mailbox.put(None)

    def stream(self, producer, *args):
        """The response body: starts `producer(self, *args)` on its own thread
        once the response is being sent (not for a HEAD request, not before),
        then yields whatever it sends."""
        threading.Thread(target=producer, args=(self, *args), daemon=True).start()
        try:
            yield from sse.drain(self._mailbox, self._heartbeat)
        finally:  # the WSGI server closes us when a write to the client fails
            self.open = False


def create_app(test_config=None):
    app = web.new_app(__name__, test_config)

    @app.get("/")
    def index():
        """The page: the counter, its reconnects, and the raw wire."""
        return render_template("counter/index.html", retry_ms=RETRY_MS)

    @app.get("/stream")
    def stream():
        """Counts 1..count; a reconnect resumes after Last-Event-ID."""
        count = web.number_arg("count", 10, 1, 1000, int)
        interval = web.number_arg("interval", 1.0, 0.01, 60)
        heartbeat = web.number_arg("heartbeat", 15.0, 0.05, 60)
        last_id = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
        last_id = web.number_arg("lastEventId", 0, 0, count, int, value=last_id)
        if last_id == count:
            return "", 204  # all was delivered: 204 tells EventSource to stop for good
        writer = EventWriter(heartbeat)
        return sse.event_stream(writer.stream(count_up, last_id + 1, count, interval))

    @app.get("/stats")
    def stats():
        """How many producers are running: one per open stream, none after."""
        return jsonify(producers=len(RUNNING))

    return app


def count_up(writer, first, last, interval):
    """The producer: pushes events at its own pace, as a Servlet thread would."""
    RUNNING.add(writer)
    try:
        writer.send(None, retry=RETRY_MS)
        for n in range(first, last + 1):
            if n > first:
                time.sleep(interval)
            writer.send(json.dumps({"n": n, "ts": round(time.time() * 1000)}), id=n)
        writer.send(json.dumps({"last": last}), event="end")
        writer.complete()
    except ClientGone:
        pass  # noticed at our next send: the client left, stop counting
    finally:
        RUNNING.discard(writer)


app = create_app()
