"""The Flask plumbing every demo shares: the app skeleton, JSON errors, checked parameters."""
import os

from flask import Flask, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException, abort

from streamkit import settings

GUARDS = ["SEND_TIMEOUT", "BODY_TIMEOUT"]  # every app's: see streamkit/guards.py

MAX_BODY = 64 * 1024  # bodies over 64 KiB are refused with 413


def new_app(import_name, test_config=None, names=()):
    """A demo's Flask app: shared templates and static files, JSON errors, and the
    settings `names` (streamkit/settings.py) from the environment, or from
    `test_config` in tests, checked now rather than mid-stream.

    Every demo serves its own copy of /static, so a page's url_for() links stay
    right whether the demo runs alone or mounted under the hub's prefix.
    """
    app = Flask(import_name, template_folder="../templates", static_folder="../static")
    app.json = JSONProvider(app)
    names = [*GUARDS, *names]
    app.config.from_mapping(MAX_CONTENT_LENGTH=MAX_BODY)
    app.config.from_mapping(settings.read(names, os.environ if test_config is None else {}))
    app.config.update(test_config or {})
    for name in names:
        app.config[name] = settings.parse(name, app.config[name])
    app.register_error_handler(HTTPException, _json_error)
    app.after_request(_no_type_without_body)
    app.wsgi_app = guarded(app.wsgi_app, app.config)
    return app


def guarded(wsgi_app, config):
    """`wsgi_app` with the deadlines of streamkit/guards.py: a stream whose client takes
    nothing for SEND_TIMEOUT s is cut; a body not in after BODY_TIMEOUT s is a 408."""
    from streamkit import guards  # here: guards imports this module
    return guards.Deadlines(wsgi_app, config["SEND_TIMEOUT"], config["BODY_TIMEOUT"], config["MAX_CONTENT_LENGTH"])


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, but JSON nested deeper than Python's parser goes is bad input (a
    400 through get_json), not a RecursionError (a 500): `[` × 1000 is 1 KB."""

    def loads(self, s, **kwargs):
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def _no_type_without_body(response):
    # Flask labels every response text/html, even a 204 with no body at all; some
    # SSE clients (httpx-sse) take that label on a stream's end for an error.
    if response.status_code in (204, 304):
        response.headers.pop("Content-Type", None)
    return response


def _json_error(error):
    # A client may be a script reading JSON; never answer it with an HTML page.
    if error.code == 413:
        return jsonify(error=f"request body too large: at most {MAX_BODY // 1024} KiB is accepted"), 413
    return jsonify(error=error.description), error.code


def fail(message, status=400):
    """Stop the request with {"error": message}: a client error, never a 500."""
    response = jsonify(error=message)
    response.status_code = status
    abort(response)


def number_arg(name, default, low, high, kind=float, value=None):
    """The query parameter `name` as a number in [low, high], or a 400 that says
    what is accepted. `value` overrides the query string (e.g. from a header)."""
    raw = request.args.get(name) if value is None else value
    if raw is None or raw == "":
        return default
    try:
        number = kind(raw)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        kind_name = "an integer" if kind is int else "a number"
        fail(f"{name} must be {kind_name} from {low} to {high}, got {raw!r}")
    return number


SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket", "kit.socket")  # kit: python -m demos serve


def connection_socket(environ):
    """The socket of the client connection serving this request, which gunicorn,
    Werkzeug (`flask run`) and `python -m demos serve` put in the WSGI environ;
    None under the Flask test client."""
    for key in SOCKET_KEYS:
        if key in environ:
            return environ[key]
    return None


def own_url(environ):
    """http://host:port where this server listens, for calling itself: the local
    end of this request's socket. Never the Host header: a proxy may rewrite it,
    and a client must not choose where the server connects. None if unknown."""
    client = connection_socket(environ)
    address = client.getsockname() if client is not None else None
    if not isinstance(address, tuple):
        return None  # the test client, or a Unix socket
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    return f"http://{host}:{address[1]}"


# What an HTTP/1.1 answer costs on the wire beyond its body, for demo 5's byte counts.
SERVER_HEAD = 79  # "Server: gunicorn", "Date: …", "Connection: keep-alive" lines gunicorn adds
CHUNKED_HEAD = 28  # "Transfer-Encoding: chunked\r\n", on a response without a length
CHUNK_FRAMING = 6  # "8d\r\n" before a chunk and "\r\n" after it


def wire_size(response):
    """Bytes of the status line and headers (ours exactly, the server's estimated),
    plus the body when its length is known; a stream's body is counted as sent."""
    lines = [f"HTTP/1.1 {response.status}", *(f"{k}: {v}" for k, v in response.headers.items())]
    size = sum(len(line) + 2 for line in lines) + 2 + SERVER_HEAD
    if response.content_length is None:
        return size + CHUNKED_HEAD + len(b"0\r\n\r\n")
    return size + response.content_length
