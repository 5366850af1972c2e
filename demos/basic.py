"""Generator SSE: a Flask view that yields `data:` lines.

Shows: the classic Flask streaming view, a generator whose every `yield` is one
event on the wire, with the format written by hand once; then ticks merged with
heartbeats in one generator (the Spring WebFlux `Flux.merge` example, without a
framework).
Run: flask --app demos.basic run --debug   (alone), or the hub at /basic/
Watch the raw stream: curl -N "http://127.0.0.1:8000/basic/stream?count=3"
Leaves out on purpose: event ids and resuming (demo 2), the encoder helper.
"""
import time

from flask import Response, render_template

from streamkit import sse, web

MAX_LIFETIME = 600  # seconds: a demo stream should not outlive the workshop


def create_app(test_config=None):
    app = web.new_app(__name__, test_config)

    @app.get("/")
    def index():
        """The page: EventSource on one side, the raw wire on the other."""
        return render_template("basic/index.html")

    @app.get("/stream")
    def stream():
        """`count` events, `interval` seconds apart, each the server's clock."""
        count = web.number_arg("count", 10, 1, 1000, int)
        interval = web.number_arg("interval", 1.0, 0.01, 60)
        return Response(ticks(count, interval), mimetype="text/event-stream",
                        headers=sse.HEADERS)

    @app.get("/heartbeat")
    def heartbeat():
        """Ticks every `interval`, heartbeats every `heartbeat`, one stream."""
        interval = web.number_arg("interval", 1.0, 0.01, 60)
        beat = web.number_arg("heartbeat", 5.0, 0.05, 60)
        return sse.event_stream(ticks_and_heartbeats(interval, beat, MAX_LIFETIME))

    return app


def ticks(count, interval):
    """The classic: one `data:` line and a blank line make one event."""
    for n in range(count):
        if n:
            time.sleep(interval)  # under gevent this parks the greenlet, not the worker
        yield f"data: {time.time()}\n\n"


def ticks_and_heartbeats(interval, heartbeat, lifetime):
    """Two schedules merged by one generator: sleep until the nearer deadline,
    emit whatever is due. A named heartbeat event (not a comment) lets the page
    show it; a comment would keep the connection alive just as well."""
    start = time.time()
    next_tick, next_beat = start, start + heartbeat
    while next_tick - start < lifetime:
        time.sleep(max(0.0, min(next_tick, next_beat) - time.time()))
        now = time.time()
        if now >= next_tick:
            yield sse.format_event(now, event="tick")
            next_tick = max(next_tick + interval, now)  # fell behind? skip, don't burst
        if now >= next_beat:
            yield sse.format_event(now, event="heartbeat")
            next_beat = max(next_beat + heartbeat, now)


app = create_app()
