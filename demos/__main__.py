"""`python -m demos serve [DEMO] [--port N]` and `python -m demos list`.

serve runs the hub (or one demo at the root) on gevent's own WSGI server, for
machines without gunicorn (Windows). Patching comes first, before anything
imports socket, ssl or requests.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (imports after the patch on purpose)
import socket  # noqa: E402

from gevent.pywsgi import WSGIHandler, WSGIServer  # noqa: E402

from demos import hub  # noqa: E402


class Handler(WSGIHandler):
    """gevent's handler, adding the connection's socket to the environ as gunicorn
    and Werkzeug do: the relay asks it where this server listens."""

    def get_environ(self):
        environ = super().get_environ()
        environ["kit.socket"] = self.socket
        return environ


class Server(WSGIServer):
    """gevent's WSGI server, with Nagle's algorithm off as gunicorn has it. pywsgi
    sends a response's head and body in two writes; with Nagle on, the body waits
    for the client's delayed ACK of the head: about 40 ms on every small answer."""

    def handle(self, sock, address):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m demos")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the hub, or one demo at /")
    serve.add_argument("demo", nargs="?", choices=list(hub.DEMOS))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    commands.add_parser("list", help="name the demos, in reading order")
    args = parser.parse_args(argv)

    if args.command == "list":
        for prefix, module in hub.DEMOS.items():
            print(f"{prefix:10} {hub.title(module)}")
        return
    app = hub.DEMOS[args.demo].app if args.demo else hub.app
    print(f"Serving {args.demo or 'every demo'} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    try:
        Server((args.host, args.port), app, handler_class=Handler).serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
