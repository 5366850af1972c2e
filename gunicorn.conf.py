"""gunicorn settings for a streaming server: `gunicorn -c gunicorn.conf.py`.

It imports one module of the kit, streamkit/settings.py, which uses only the
standard library's `os` and `urllib.parse`: the gevent worker must monkey-patch
the standard library before any demo imports `requests`, `ssl` or `socket`.
"""
import errno
import os
import resource
import socket
import sys

from streamkit import settings

try:  # a bad setting stops the server now, in one line, before any worker starts
    SETTINGS = settings.check()
except settings.SettingError as error:
    sys.exit(f"Cannot start: {error}")

wsgi_app = "demos.hub:app"

# Loopback unless told otherwise: a workshop laptop should not serve its Wi-Fi.
bind = SETTINGS["BIND"]

# One worker by default: the in-memory demos (compare ticker, broadcast broker)
# keep their state in the worker's memory. Set WEB_CONCURRENCY (and REDIS_URL for
# the broadcast demo) to run more.
workers = SETTINGS["WEB_CONCURRENCY"]

# With several workers each listens on a socket of its own (SO_REUSEPORT, Linux) and
# the kernel spreads new connections over them. On one shared socket whichever worker
# wakes first accepts a whole burst: 50 streams opened at once all landed on one of
# two workers, which defeats WEB_CONCURRENCY for long-lived streams. One worker needs
# no spreading, and a shared socket refuses a second server on the same port.
reuse_port = workers > 1  # on_starting() decides again, for a --workers on the command line

# Each open stream is one greenlet, not one thread: a worker holds thousands.
worker_class = "gevent"
worker_connections = SETTINGS["WORKER_CONNECTIONS"]

# With gevent the worker's own greenlet reports to the arbiter, so `timeout` only
# fires when the event loop is blocked, never because a stream is long. It is
# generous so a busy loop (10,000 streams waking at once) is not mistaken for a hang.
timeout = 120

# Open streams never finish on their own: on reload or Ctrl-C, cut them after a
# moment instead of waiting the default 30 s. EventSource reconnects by itself.
graceful_timeout = 2

# Long-lived responses need a file descriptor each: raise the soft limit to the
# hard limit (commonly 1024 → 65536 or more) before the workers start.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (65536 if hard == resource.RLIM_INFINITY else hard, hard))
except (ValueError, OSError):
    pass  # macOS may refuse more than kern.maxfilesperproc: keep what we have

accesslog = os.environ.get("ACCESS_LOG")  # e.g. "-" to log requests to stdout

# gunicorn ≥ 25.1 opens a control socket at one fixed path per user; a workshop
# does not need it, and two servers on one laptop would fight over it.
control_socket_disable = True


def on_starting(server):
    """Refuse an address in use, in one line. With SO_REUSEPORT a second server would
    share the port silently, and half the requests would reach a forgotten old one;
    without it gunicorn retries for 5 s, logging each attempt."""
    server.cfg.set("reuse_port", server.cfg.workers > 1)
    if server.master_pid:  # a re-exec (USR2) takes over the old master's sockets
        return
    for address in server.cfg.address:
        if not isinstance(address, tuple):
            continue  # a unix socket
        host, port = address[0], address[1]
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
            try:
                probe.bind((host, port))
            except OSError as error:
                why = "is in use (is another server running?)" if error.errno == errno.EADDRINUSE else error.strerror
                sys.exit(f"Cannot serve at {host}:{port}: the address {why}; stop it, or set BIND=127.0.0.1:8001")


def when_ready(server):
    """The one line a newcomer needs: where to point the browser."""
    for address in server.cfg.address:
        if isinstance(address, tuple):
            host, port = address[0], address[1]
            shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
            print(f"Serving the demos at http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
        else:  # a unix socket, for a proxy in front
            print(f"Serving the demos on the unix socket {address} (Ctrl-C stops)", flush=True)


def worker_int(worker):
    """Ctrl-C in a terminal signals every process in it: the worker gets SIGINT, then
    the master's SIGQUIT. The second must not raise SystemExit into a worker that is
    already on its way out (gevent then prints a "failed with SystemExit" traceback)."""
    if getattr(worker, "kit_quitting", False) and type(worker).__module__.endswith("ggevent"):
        from gevent import GreenletExit  # only in a gevent worker, after its patching
        raise GreenletExit  # ends this signal's greenlet quietly
    worker.kit_quitting = True
