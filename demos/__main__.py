"""`python -m demos serve [DEMO] [--port N]` and `python -m demos list`.

serve runs the hub (or one demo at the root) on gevent's own WSGI server, for
machines without gunicorn (Windows). Patching comes first, before anything
imports socket, ssl or requests.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (imports after the patch on purpose)
import errno  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

from gevent.pywsgi import WSGIHandler, WSGIServer  # noqa: E402

from streamkit import settings  # noqa: E402

try:  # a bad setting stops the server now, in one line (the demos read them on import)
    settings.check()
    from demos import hub  # noqa: E402
except settings.SettingError as error:
    sys.exit(f"Cannot start: {error}")


class Handler(WSGIHandler):
    """gevent's handler, adding the connection's socket to the environ as gunicorn
    and Werkzeug do: the relay asks it where this server listens. A connection
    upgraded to a WebSocket (flask-sock) is closed when its view returns."""

    def get_environ(self):
        environ = super().get_environ()
        environ["kit.socket"] = self.socket
        return environ

    def handle_one_response(self):
        super().handle_one_response()
        if self.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            # The WebSocket's view has returned: end the connection now. Shut down, not
            # only closed: simple-websocket reads from a duplicate of this socket.
            self.close_connection = True
            try:
                self.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the client has gone already


class Server(WSGIServer):
    """gevent's WSGI server, with Nagle's algorithm off as gunicorn has it. pywsgi
    sends a response's head and body in two writes; with Nagle on, the body waits
    for the client's delayed ACK of the head: about 40 ms on every small answer."""

    def handle(self, sock, address):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


def port_number(text):
    """--port: 0 to 65535 (0: any free port), or argparse's one-line error."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return int(text)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m demos")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the hub, or one demo at /")
    serve.add_argument("demo", nargs="?", choices=list(hub.DEMOS))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port_number, default=8000)
    commands.add_parser("list", help="name the demos, in reading order")
    args = parser.parse_args(argv)

    if args.command == "list":
        for prefix, module in hub.DEMOS.items():
            print(f"{prefix:10} {hub.title(module)}")
        return
    app = hub.DEMOS[args.demo].app if args.demo else hub.app
    server = Server((args.host, args.port), app, handler_class=Handler)
    try:
        server.start()  # binds now: a port in use is refused here, in one line
    except OSError as error:
        why = "is in use (is another server running?)" if error.errno == errno.EADDRINUSE else error.strerror
        sys.exit(f"Cannot serve at {args.host}:{args.port}: the address {why}; stop it, or use --port 8001")
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"Serving {f'the {args.demo} demo' if args.demo else 'the demos'} at http://{host}:{args.port}/"
          " (Ctrl-C stops)", flush=True)
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C: stop quietly, not with a traceback
        gevent.signal_handler(signum, gevent.spawn, server.stop, timeout=1)  # cuts open streams
    server.serve_forever()


if __name__ == "__main__":
    main()
