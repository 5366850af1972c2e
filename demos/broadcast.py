"""Publish/subscribe: one message, every subscriber, whichever worker holds it.

Shows: the flask-sse + Redis example, by hand. POST a message to a channel and
every open stream of that channel gets it once: `id: n` and JSON data with the
message, its publish time `ts` and the `pid` of the worker that delivered it. The
broker is this worker's memory by default (right for one worker); with REDIS_URL
set, Redis pub/sub carries every message to every worker on every machine.
Run: flask --app demos.broadcast run --debug   (alone), or the hub at /broadcast/
     REDIS_URL=redis://127.0.0.1:6379/0 WEB_CONCURRENCY=2 gunicorn -c gunicorn.conf.py
Watch the raw stream: curl -N "http://127.0.0.1:8000/broadcast/stream?channel=main"
Publish: curl -d '{"channel": "main", "message": "hi"}' http://127.0.0.1:8000/broadcast/publish
Leaves out on purpose: history. Pub/sub forgets: a subscriber that was away misses
what was published meanwhile, and Last-Event-ID is ignored (tutorial chapter 5).
"""
import hmac
import re

from flask import jsonify, render_template, request

from streamkit import brokers, sse, web

CHANNEL = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SAMPLE = '{"channel": "main", "message": "hello"}'


def create_app(test_config=None):
    app = web.new_app(__name__, test_config, ["REDIS_URL", "BROADCAST_TOKEN"])
    app.config.setdefault("BROADCAST_MAX_MESSAGE", 4096)  # bytes of UTF-8
    # Checked now, connected on first use: from_url() parses, it does not connect.
    broker = brokers.from_url(app.config.get("REDIS_URL"))
    token = app.config.get("BROADCAST_TOKEN")

    @app.get("/")
    def index():
        """The page: join a channel, publish to it, watch who delivers what."""
        return render_template("broadcast/index.html", broker=broker.name,
                               token_required=bool(token))

    @app.post("/publish")
    def publish():
        """The page's Publish button: one message to every subscriber of a channel."""
        check_token(token)
        body = request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            web.fail(f"the body must be a JSON object such as {SAMPLE}")
        channel = channel_name(body.get("channel", "main"))
        message = body.get("message")
        if not isinstance(message, str) or not message.strip():
            web.fail(f"message must be a non-empty string, as in {SAMPLE}")
        try:
            size = len(message.encode("utf-8"))
        except UnicodeEncodeError:
            web.fail("message must be valid Unicode text (it holds a lone surrogate)")
        limit = app.config["BROADCAST_MAX_MESSAGE"]
        if size > limit:
            web.fail(f"message is {size} bytes of UTF-8; at most {limit} are accepted", 413)
        try:
            id, ts = broker.publish(channel, message)
        except brokers.BrokerDown as error:
            web.fail(str(error), 503)
        return jsonify(channel=channel, id=id, ts=ts), 202

    @app.get("/stream")
    def stream():
        """EventSource joins a channel here: each message once, with its id."""
        channel = channel_name(request.args.get("channel", "main"))
        heartbeat = web.number_arg("heartbeat", 15.0, 0.05, 60)
        return sse.event_stream(broker.stream(channel, heartbeat), encoded=True)

    @app.get("/stats")
    def stats():
        """The page polls this: how many subscribers a channel has, per worker."""
        channel = channel_name(request.args.get("channel", "main"))
        try:
            workers = broker.workers(channel)
        except brokers.BrokerDown as error:
            web.fail(str(error), 503)
        return jsonify(broker=broker.name, channel=channel, workers=workers,
                       subscribers=sum(worker["subscribers"] for worker in workers))

    return app


def channel_name(value):
    if not isinstance(value, str) or not CHANNEL.fullmatch(value):
        web.fail(f"channel must be 1 to 64 letters, digits, '.', '_' or '-', got {value!r:.80}")
    return value


def check_token(expected):
    """With BROADCAST_TOKEN set, publishing needs `Authorization: Bearer <token>`."""
    if not expected:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        web.fail("publishing needs the header 'Authorization: Bearer <BROADCAST_TOKEN>'", 401)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        web.fail("wrong token: publishing needs the server's BROADCAST_TOKEN", 403)


app = create_app()
