"""Short polling vs long polling vs SSE: one ticker, three ways to hear it.

Shows: the same messages reaching the page three ways at once, and what each way
costs in HTTP requests, bytes (headers included) and delivery latency. A ticker
publishes {"id", "ts", "text"} at COMPARE_RATE_HZ (default 1) with jitter.
  poll       GET /poll?since=ID            answers at once, mostly "nothing new"
  long-poll  GET /long-poll?since=ID&timeout=S   holds the request until news
  SSE        GET /sse                      one response, a frame per message
Run: flask --app demos.compare run --debug   (alone), or the hub at /compare/
Watch the raw stream: curl -N http://127.0.0.1:8000/compare/sse
Compare them headless: python -m demos.compare bench --duration 10
Leaves out on purpose: WebSocket (see the tutorial), several workers (each
worker has its own ticker: run this demo with one).
"""
import sys
import time

from flask import jsonify, render_template, request

from streamkit import direct, sse, web
from streamkit.ticker import Ticker

MAX_ID = 2**53 - 1  # ids are ms-since-epoch based; JavaScript numbers stay exact up to here
LANES = {"poll": "poll", "long_poll": "long-poll", "stream": "sse"}  # view → lane
UNCOUNTED = "X-Uncounted"  # sent by the page's raw-wire panel: a second copy of /sse


def create_app(test_config=None):
    app = web.new_app(__name__, test_config, ["COMPARE_RATE_HZ"])
    app.config.setdefault("COMPARE_HEARTBEAT", 15.0)
    ticker = Ticker(app.config["COMPARE_RATE_HZ"], app.config["COMPARE_HEARTBEAT"])
    stats = Stats()
    app.extensions["compare"] = ticker, stats

    @app.before_request
    def start_ticker():
        ticker.start()  # on first use: one ticker per worker process, never per client

    @app.after_request
    def count(response):
        if request.endpoint in LANES and UNCOUNTED not in request.headers:
            stats.add(LANES[request.endpoint], 1, web.wire_size(response))
        return response

    @app.get("/")
    def index():
        """The page: three lanes side by side, each with its counters and chart."""
        return render_template("compare/index.html", rate_hz=ticker.rate_hz)

    @app.get("/poll")
    def poll():
        """Short polling: answer at once with whatever is newer than `since`."""
        since = since_arg(ticker, "since")
        return messages_json(*ticker.after(since))

    @app.get("/long-poll")
    def long_poll():
        """Long polling: hold the request until something newer than `since` exists."""
        since = since_arg(ticker, "since")
        timeout = web.number_arg("timeout", 20.0, 0, 30)
        return messages_json(*wait_for_news(ticker, since, timeout))

    @app.get("/sse")
    def stream():
        """SSE: one response, one frame per message; resumes after Last-Event-ID."""
        since = since_arg(ticker, "lastEventId", request.headers.get("Last-Event-ID"))
        counter = Stats() if UNCOUNTED in request.headers else stats
        return sse.event_stream(frames(ticker, since, counter), encoded=True)

    @app.get("/sse-direct")
    def direct_stream():
        """The SSE lane written by the ticker to each socket itself (tutorial: beyond WSGI)."""
        since = since_arg(ticker, "lastEventId", request.headers.get("Last-Event-ID"))
        return direct.event_stream(ticker, since, frames(ticker, since, Stats()))

    @app.get("/time")
    def clock():
        """The server's clock, from which the page estimates its own offset."""
        return jsonify(time=time.time())

    @app.get("/stats")
    def counters():
        """Requests and bytes served per lane since the server started."""
        return jsonify(rate_hz=ticker.rate_hz, last_id=ticker.seq,
                       streams=stats.streams, lanes=stats.lanes)

    return app


def since_arg(ticker, name, value=None):
    """The last id a client has seen. None means "from now on". Ids number from
    the clock, so one from before a restart is below this run's ids: the client
    gets everything this run has kept. One beyond the newest cannot be ours (a
    clock set back?): it gets the history too."""
    since = web.number_arg(name, None, 0, MAX_ID, int, value=value)
    if since is None:
        return ticker.seq
    return since if since <= ticker.seq else 0


def messages_json(last_id, messages):
    response = jsonify(messages=[m.data for m in messages], last_id=last_id)
    response.headers["Cache-Control"] = "no-store"  # a cached answer would hide news
    return response


def wait_for_news(ticker, since, timeout):
    """The long poll: parked until a publish wakes us, or empty-handed at `timeout`."""
    deadline = time.monotonic() + timeout
    last_id, news = ticker.after(since)
    while not news and (left := deadline - time.monotonic()) > 0:
        last_id, news = ticker.wait(since, left)
    return last_id, news


def frames(ticker, since, stats):
    """The SSE lane: each message's frame, encoded once by the ticker for every
    stream, written as soon as it is published; a ping when the ticker is quiet."""
    stats.streams += 1
    try:
        chunk = sse.PING_BYTES  # the first bytes go out at once
        while True:
            stats.add("sse", 0, len(chunk) + web.CHUNK_FRAMING)
            yield chunk
            since, news = ticker.wait(since)  # parked until the next publish or heartbeat
            chunk = b"".join(message.frame for message in news) if news else sse.PING_BYTES
    finally:  # the server closes us when a write to a departed client fails
        stats.streams -= 1


class Stats:
    """Requests and bytes per lane. Plain counters without a lock: under gevent
    nothing runs between a read and its write, and under threads a rare lost
    increment does not matter for a demo figure."""

    def __init__(self):
        self.lanes = {lane: {"requests": 0, "bytes": 0} for lane in LANES.values()}
        self.streams = 0  # SSE responses open right now

    def add(self, lane, requests, size):
        self.lanes[lane]["requests"] += requests
        self.lanes[lane]["bytes"] += size


app = create_app()

if __name__ == "__main__":  # python -m demos.compare bench ...: the headless comparison
    from bench.compare import main

    sys.exit(main())
