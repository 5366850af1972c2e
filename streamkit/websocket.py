"""WebSocket on the kit's WSGI servers: flask-sock (on simple-websocket) and the kit's rules.

flask-sock answers the handshake (`101 Switching Protocols`) and hands the view the
connection: from then on the view's greenlet (or thread) holds the socket and frames go
both ways, until either side closes. What this module adds:

- talk(): the two loops of a WebSocket. The view itself reads what the client says, so
  it returns (and the server closes the TCP connection) the moment the client closes;
  a thread of its own sends what the server has to say. The client may send
  {"ping": t} and gets {"pong": t} back on the same connection (a page's round-trip
  time); anything else closes the connection with a close code and a JSON reason.
- The send deadline (streamkit/guards.py) for a connection that has no response body:
  the sending loop is what the watch looks after, as it looks after a stream's body.
- A protocol ping where a stream would send `: ping`: it keeps proxies from cutting a
  quiet connection and finds a client that left (the browser answers it by itself).
- No permessage-deflate: each connection would keep its own compressor (about 256 KiB
  of zlib state) and compress every frame again, where the kit encodes a frame once.
"""
import json
import sys
import threading

from flask import current_app, jsonify, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed
from werkzeug.routing import WebsocketMismatch
from wsproto.events import Ping

from streamkit import guards, web

MAX_MESSAGE = web.MAX_BODY  # a client message beyond 64 KiB: simple-websocket closes with 1009
UNSUPPORTED, INVALID, POLICY = 1003, 1007, 1008  # close codes: not text, not JSON, not understood
CLOSING = 1.0  # seconds a client has to answer the server's close frame
# The server's 101 answer, as simple-websocket's wsproto writes it (h11 puts no reason
# phrase); the accept token is 28 characters. For the byte counts of demo 5.
HANDSHAKE = len(b"HTTP/1.1 101 \r\nupgrade: WebSocket\r\nconnection: Upgrade\r\n"
                b"sec-websocket-accept: " + b"x" * 28 + b"\r\n\r\n")


class Refused(Exception):
    """A message from the client that the view will not take."""

    def __init__(self, code, error):
        super().__init__(error)
        self.code, self.error = code, error


def init(app):
    """flask-sock for `app`: its routes take `@sock.route(path)`."""
    options = {"max_message_size": MAX_MESSAGE}
    if green():  # simple-websocket's reader as a bare greenlet too
        options["thread_class"] = Greenlet
    app.config.setdefault("SOCK_SERVER_OPTIONS", options)
    app.before_request(_no_compression)
    app.register_error_handler(WebsocketMismatch, _not_a_websocket)
    return Sock(app)


def _not_a_websocket(error):
    # A plain GET (curl, a link) of a WebSocket's URL: say what it is, in JSON.
    answer = jsonify(error=f"{request.script_root}{request.path} is a WebSocket: connect with a WebSocket client "
                           "(new WebSocket(url) in a browser), which sends Upgrade: websocket")
    return answer, 426, {"Upgrade": "websocket"}


def _no_compression():
    if "HTTP_SEC_WEBSOCKET_EXTENSIONS" in request.environ:  # before flask-sock answers the handshake
        del request.environ["HTTP_SEC_WEBSOCKET_EXTENSIONS"]


def frame_size(payload):
    """Bytes of a server's frame on the wire: a 2, 4 or 10-byte head (unmasked) and the payload."""
    return payload + (2 if payload < 126 else 4 if payload < 65536 else 10)


def talk(ws, outgoing, count):
    """Until either side closes: send each text of `outgoing` (None: a protocol ping)
    from a thread, and answer the client's pings here. count(requests, bytes) is told
    what the server sends, the 101 answer first."""
    count(1, HANDSHAKE)
    sock, seconds = web.connection_socket(request.environ), current_app.config["SEND_TIMEOUT"]
    start(send_all, ws, outgoing, count, sock, seconds)
    try:
        while True:
            reply = json.dumps(pong(ws.receive()))  # parked until the client says something
            ws.send(reply)
            count(0, frame_size(len(reply)))  # (JSON as json.dumps writes it is ASCII: bytes = characters)
    except Refused as refused:
        ws.close(refused.code, json.dumps({"error": refused.error}))
        # The closing handshake: the client answers our close frame, then simple-websocket's
        # reader closes the socket. Closed before that answer arrives, the socket would be
        # reset, and a client may see the reset instead of our close frame and its reason.
        ws.thread.join(CLOSING)
    except OSError:
        pass  # the client has gone, or the send deadline shut the socket: nothing to say


def pong(message):
    """The answer to one message from the client: {"ping": t} → {"pong": t}; or Refused."""
    if not isinstance(message, str):
        raise Refused(UNSUPPORTED, 'send text frames: {"ping": <number>}, not binary ones')
    try:
        ping = json.loads(message, parse_constant=refuse_constant)  # no NaN: JavaScript could not read it back
    except (ValueError, RecursionError):
        raise Refused(INVALID, 'send JSON: {"ping": <number>}') from None
    if not (isinstance(ping, dict) and ping.keys() == {"ping"}
            and isinstance(ping["ping"], (int, float)) and not isinstance(ping["ping"], bool)):
        raise Refused(POLICY, 'the only message understood is {"ping": <number>}')
    return {"pong": ping["ping"]}


def green():
    """Whether gevent has patched threading (gunicorn's gevent worker, python -m demos serve)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


class Greenlet:
    """What simple-websocket asks of a thread class, as a bare gevent greenlet."""

    def __init__(self, target):
        import gevent
        self.name, self._greenlet = "simple-websocket", gevent.Greenlet(target)

    def start(self):
        self._greenlet.start()

    def join(self, timeout=None):
        self._greenlet.join(timeout)


def start(target, *args):
    """target(*args) in a thread of its own; under gevent's patching a bare greenlet:
    a patched threading.Thread costs a few KiB more per connection (bench/README.md)."""
    if green():
        import gevent
        gevent.spawn(target, *args)
    else:
        threading.Thread(target=target, args=args, daemon=True).start()


def refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def send_all(ws, outgoing, count, sock, seconds):
    """The sending loop. It ends at the first write that fails: the client has gone (the
    view has returned, or returns now), or the send deadline shut the socket."""
    body = guards.watched(outgoing, sock, seconds) if sock is not None else outgoing
    try:
        for text in body:
            if text is None:
                if not ws.connected:
                    break
                ws.sock.send(ws.ws.send(Ping()))  # simple-websocket has no ping() of its own
                count(0, 2)
            else:
                ws.send(text)
                count(0, frame_size(len(text)))
    except (ConnectionClosed, OSError):
        pass
    finally:
        if hasattr(body, "close"):
            body.close()  # the lane's `finally` runs: it is released
