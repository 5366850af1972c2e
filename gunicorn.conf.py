"""gunicorn settings for a streaming server: `gunicorn -c gunicorn.conf.py`.

Imports nothing from the kit: the gevent worker must monkey-patch the standard
library before any demo imports `requests`, `ssl` or `socket`.
"""
import os
import resource

wsgi_app = "demos.hub:app"

# Loopback unless told otherwise: a workshop laptop should not serve its Wi-Fi.
bind = os.environ.get("BIND", "127.0.0.1:8000")

# One worker by default: the in-memory demos (compare ticker, broadcast broker)
# keep their state in the worker's memory. Set WEB_CONCURRENCY (and REDIS_URL for
# the broadcast demo) to run more.
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))

# Each worker listens on a socket of its own (SO_REUSEPORT, Linux) and the kernel
# spreads new connections over them. On one shared socket whichever worker wakes
# first accepts a whole burst: 50 streams opened at once all landed on one of two
# workers, which defeats WEB_CONCURRENCY for long-lived streams.
reuse_port = True

# Each open stream is one greenlet, not one thread: a worker holds thousands.
worker_class = "gevent"
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "12000"))

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
