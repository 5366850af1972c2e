"""Generator SSE: a Flask view that yields `data:` lines.

Shows: the classic Flask streaming view, a generator whose every `yield` is one
event on the wire, written by hand with nothing but Flask; then ticks merged with
heartbeats in one generator (the Spring WebFlux `Flux.merge` example, without a
framework).
Run: flask --app demos.basic run --debug   (alone), or the hub at /basic/
Watch the raw stream: curl -N "http://127.0.0.1:8000/basic/stream?count=3"
Leaves out on purpose: event ids and resuming, and the encoder that writes frames
for us (demo 2 adds both).
"""
import time

from flask import Flask, Response, render_template, request
from werkzeug.exceptions import HTTPException

MAX_LIFETIME = 600  # seconds: a demo stream should not outlive the workshop
HEADERS = {"Cache-Control": "no-cache",  # a live stream must never come from a cache
           "X-Accel-Buffering": "no"}  # nginx buffers proxied responses unless told not to


def create_app(test_config=None):
    app = Flask(__name__, template_folder="../templates", static_folder="../static")
    app.config.from_mapping(test_config or {})

    @app.errorhandler(HTTPException)
    def json_error(error):
        """A script reading this server gets JSON, never an HTML error page."""
        return {"error": error.description}, error.code

    @app.get("/")
    def index():
        """The page: EventSource on one side, the raw wire on the other."""
        return render_template("basic/index.html")

    @app.get("/stream")
    def stream():
        """`count` events, `interval` seconds apart, each the server's clock."""
        count, interval = arg("count", 10, int), arg("interval", 1.0, float)
        error = None
        if count is None or not 1 <= count <= 1000:
            error = "count must be an integer from 1 to 1000"
        elif interval is None or not 0.01 <= interval <= 60:  # NaN fails every comparison
            error = "interval must be a number from 0.01 to 60"
        if error is not None:
            return {"error": error}, 400
        return Response(ticks(count, interval), mimetype="text/event-stream", headers=HEADERS)

    @app.get("/heartbeat")
    def heartbeat():
        """Ticks every `interval`, heartbeats every `heartbeat`, one stream."""
        interval, beat = arg("interval", 1.0, float), arg("heartbeat", 5.0, float)
        error = None
        if interval is None or not 0.01 <= interval <= 60:
            error = "interval must be a number from 0.01 to 60"
        elif beat is None or not 0.05 <= beat <= 60:
            error = "heartbeat must be a number from 0.05 to 60"
        if error is not None:
            return {"error": error}, 400
        return Response(ticks_and_heartbeats(interval, beat, MAX_LIFETIME),
                        mimetype="text/event-stream", headers=HEADERS)

    return app


def arg(name, default, kind):
    """request.args.get(name, default, type=kind), except that text which is not a
    `kind` gives None (and so a 400), where Werkzeug would quietly use the default."""
    return request.args.get(name, type=kind) if name in request.args else default


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
            yield f"event: tick\ndata: {now}\n\n"
            next_tick = max(next_tick + interval, now)  # fell behind? skip, don't burst
        if now >= next_beat:
            yield f"event: heartbeat\ndata: {now}\n\n"
            next_beat = max(next_beat + heartbeat, now)


app = create_app()
