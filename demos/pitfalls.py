"""Why doesn't my stream stream? The production pitfalls, each broken then fixed.

Shows: one stream whose query knobs switch each trap and its fix: `bare=1` drops
the `X-Accel-Buffering: no` header (nginx's defaults then buffer it), the same
stream under `/gzip/` through a gzip middleware (it arrives in a lump; under
`/gzip-flush/` it does not), `delay` (silence before the first event, which an
idle timeout cuts) and `heartbeat` (pings that keep it alive and notice a departed
client), `end`, `ids` and `retry` + `jitter` (the ways out of a reconnect storm).
The page adds a live count of producers still running, seven streams to one host,
and closed laptop lids (POST /lids: clients that never read, cut at SEND_TIMEOUT).
The wrong worker: bench/workers.py; the proxy: deploy/nginx.conf. Its defaults are
the pitfalls: no heartbeat, no end event.
Run: flask --app demos.pitfalls run --debug   (alone), or the hub at /pitfalls/
Watch the raw stream: curl -N "http://127.0.0.1:8000/pitfalls/stream?count=3&interval=0.5"
Through the gzip middleware: curl -N --compressed "http://127.0.0.1:8000/pitfalls/gzip/stream?count=3"
"""
import json
import random
import time
import zlib

from flask import Response, jsonify, render_template, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from streamkit import guards, sse, web

RUNNING = set()  # streams whose generator has not finished: the page shows the count


def create_app(test_config=None):
    app = web.new_app(__name__, test_config)

    @app.get("/")
    def index():
        """The page: a stream with a switch per pitfall, and seven streams to one host."""
        return render_template("pitfalls/index.html")

    @app.get("/stream")
    def stream():
        """`count` events `interval` apart; every other knob is a pitfall or its fix."""
        count = web.number_arg("count", 10, 1, 1000, int)
        interval = web.number_arg("interval", 1.0, 0.01, 60)
        delay = web.number_arg("delay", 0.0, 0, 60)
        heartbeat = web.number_arg("heartbeat", None, 0.05, 60)  # absent: none at all
        end, ids, bare = (web.number_arg(name, 0, 0, 1, int) for name in ("end", "ids", "bare"))
        retry = web.number_arg("retry", None, 10, 600_000, int)
        jitter = web.number_arg("jitter", 0, 0, 600_000, int)
        if jitter and retry is None:
            web.fail("jitter is added to retry: give retry (milliseconds) too")
        last_id = web.number_arg("lastEventId", 0, 0, count, int,
                                 value=request.headers.get("Last-Event-ID")) if ids else 0
        if last_id == count:
            return "", 204  # nothing left: 204 is the one answer that stops EventSource for good
        if retry is not None:
            retry += random.randint(0, jitter)  # clients dropped together come back spread out
        frames = ticks(count, interval, delay, heartbeat, ids=ids, first=last_id + 1,
                       end=end, retry=retry)
        if bare:  # what a plain Flask view sends: a proxy's defaults may buffer it
            return Response(frames, mimetype="text/event-stream")
        return sse.event_stream(frames)

    @app.post("/lids")
    def lids():
        """Opens `count` clients of a busy stream that never read, as closed laptops do."""
        count, base = web.number_arg("count", 5, 1, 50, int), web.own_url(request.environ)
        if base is None:
            web.fail("closing laptop lids needs a TCP server (gunicorn, flask run, python -m demos serve)")
        try:
            if not guards.close_lids(base, f"{request.script_root}/stream?count=1000&interval=0.01", count):
                web.fail(f"at most {guards.MAX_LIDS} lids are open at once; they close after 5 minutes", 429)
        except OSError as error:
            web.fail(f"could not open the lids ({type(error).__name__})", 503)
        return jsonify(opened=count, send_timeout=app.config["SEND_TIMEOUT"]), 202

    @app.get("/stats")
    def stats():
        """How many stream generators are still running: the page polls it."""
        return jsonify(producers=len(RUNNING))

    # The very same app seen through a gzip middleware, naive and flushing.
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {
        "/gzip": Gzip(app.wsgi_app), "/gzip-flush": Gzip(app.wsgi_app, flush=True)})
    return app


def ticks(count, interval, delay=0.0, heartbeat=None, ids=False, first=1, end=False, retry=None):
    """Events first..count: the first after `delay` seconds, then one per `interval`.
    Without a heartbeat the silences are truly silent: no proxy sees a byte, and
    the server cannot tell that the client left until a write to it fails."""
    token = object()
    RUNNING.add(token)
    try:
        if retry is not None:
            yield sse.format_event(None, retry=retry)
        if heartbeat is not None:
            yield sse.PING  # first bytes at once: the headers leave with it
        for n in range(first, count + 1):
            yield from sse.pings(delay if n == first else interval, heartbeat)
            yield sse.format_event(json.dumps({"n": n, "ts": time.time()}), id=n if ids else None)
        if end:
            yield sse.format_event(json.dumps({"last": count}), event="end")
    finally:  # runs when the stream ends, or when the server closes us after a failed write
        RUNNING.discard(token)


class Gzip:
    """WSGI middleware that gzips what the client accepts gzip for, written the way
    many are: compress each chunk, pass on whatever zlib hands back. zlib keeps
    small writes until it has a block's worth or the body ends, so the events of
    a stream leave in one lump. flush=True is the fix a compressor can make: a
    sync flush after every chunk. Better still, don't compress text/event-stream."""

    def __init__(self, app, flush=False):
        self.app, self.flush = app, flush

    def __call__(self, environ, start_response):
        if "gzip" not in environ.get("HTTP_ACCEPT_ENCODING", ""):
            return self.app(environ, start_response)
        zipping = []

        def start(status, headers, exc_info=None):
            if not status.startswith(("204", "304")):  # bodiless answers stay bodiless
                zipping.append(True)
                headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
                headers += [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
            return start_response(status, headers, exc_info)

        body = self.app(environ, start)
        return self.compressed(body) if zipping else body

    def compressed(self, body):
        zipper = zlib.compressobj(wbits=31)  # 31: with gzip's header and trailer
        try:
            for chunk in body:
                data = zipper.compress(chunk)
                if self.flush:
                    data += zipper.flush(zlib.Z_SYNC_FLUSH)
                if data:
                    yield data
            yield zipper.flush()
        finally:
            if hasattr(body, "close"):
                body.close()


app = create_app()
