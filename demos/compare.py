"""Short polling vs long polling vs SSE vs WebSocket: one ticker, four ways to hear it.

Shows: the same messages reaching the page four ways at once, and what each way
costs in HTTP requests, bytes (headers included) and delivery latency. A ticker (one
per worker: run one) publishes {"id", "ts", "text"} at COMPARE_RATE_HZ (default 1)
with jitter. Lanes: GET /poll?since=ID, /long-poll?since=ID&timeout=S, /sse, /ws?since=ID.
Run: flask --app demos.compare run --debug   (alone), or the hub at /compare/
Compare them headless: python -m demos.compare bench --duration 10
"""
import sys
import time
from functools import partial

from flask import jsonify, render_template, request

from streamkit import direct, sse, web, websocket
from streamkit.ticker import MAX_ID, Stats, Ticker

LANES = {"poll": "poll", "long_poll": "long-poll", "stream": "sse"}  # view → lane
UNCOUNTED = "X-Uncounted"  # sent by the page's raw-wire panel: a second copy of /sse


def create_app(test_config=None):
    app = web.new_app(__name__, test_config, ["COMPARE_RATE_HZ"])
    app.config.setdefault("COMPARE_HEARTBEAT", 15.0)
    ticker = Ticker(app.config["COMPARE_RATE_HZ"], app.config["COMPARE_HEARTBEAT"])
    stats = Stats([*LANES.values(), "ws"])
    app.extensions["compare"] = ticker, stats
    sock = websocket.init(app)

    @app.before_request
    def start_ticker():
        ticker.start()  # on first use: one ticker per worker process, never per client
        if request.endpoint == "ws":
            since_arg(ticker, "since")  # a bad one is a 400 before the upgrade, not after

    @app.after_request
    def count(response):
        if request.endpoint in LANES and UNCOUNTED not in request.headers:
            stats.add(LANES[request.endpoint], 1, web.wire_size(response))
        return response

    @app.get("/")
    def index():
        """The page: four lanes side by side, each with its counters and chart."""
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
        counter = Stats(["sse"]) if UNCOUNTED in request.headers else stats
        return sse.event_stream(frames(ticker, since, counter), encoded=True)

    @app.get("/sse-direct")
    def direct_stream():
        """The SSE lane written by the ticker to each socket itself (tutorial: beyond WSGI)."""
        since = since_arg(ticker, "lastEventId", request.headers.get("Last-Event-ID"))
        return direct.event_stream(ticker, since, frames(ticker, since, Stats(["sse"])))

    @sock.route("/ws")
    def ws(ws):
        """WebSocket: a frame per message (after `since` first); {"ping": t} → {"pong": t}."""
        since = since_arg(ticker, "since")
        websocket.talk(ws, texts(ticker, since, stats), partial(stats.add, "ws"))

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
    """The last id a client has seen, checked; ticker.since() says what follows it."""
    return ticker.since(web.number_arg(name, None, 0, MAX_ID, int, value=value))


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


def texts(ticker, since, stats):
    """The WebSocket lane: each message's JSON, encoded once, a frame each; None: a ping."""
    stats.streams += 1
    try:
        since, news = ticker.after(since)  # with `since`: what is kept after it, at once
        while True:
            yield from [message.json for message in news] or [None]
            since, news = ticker.wait(since)  # parked until the next publish or heartbeat
    finally:  # the sending loop closes us when a send fails
        stats.streams -= 1


app = create_app()

if __name__ == "__main__":  # python -m demos.compare bench ...: the headless comparison
    from bench.compare import main

    sys.exit(main())
