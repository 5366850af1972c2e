"""Clients that hold the server without meaning to: the laptop lid and the slow body.

A laptop whose lid closes mid-stream never reads again and never says goodbye. A
heartbeat does not find it: a write succeeds as long as the kernel can buffer it, and
once the buffers are full the next write blocks for ever, holding the stream's
greenlet, its subscription and its memory. Two WSGI middlewares put a deadline on
each side of the conversation, for every demo at once:

- SendDeadline: a response whose client has taken no bytes for SEND_TIMEOUT s while
  some wait for it is cut. One watch thread per process looks at every response once
  a second: how many bytes the server wrote, and (Linux) how many still sit in the
  kernel's send queue unacknowledged; elsewhere, whether a write has been blocked
  that long. It shuts the socket down; the write fails, the server closes the
  response, and the stream's `finally` releases what it held (subscription, queue,
  upstream). A client that reads, however slowly, misses nothing. On Linux the socket
  also gets TCP_USER_TIMEOUT, so the kernel gives up on a peer that acknowledges
  nothing at all (a sleeping laptop) after as long.
- BodyDeadline: a request body must have arrived whole within BODY_TIMEOUT s, however
  slowly it trickles (each read waits at most what is left); otherwise 408 and the
  connection is closed.

A request head that never finishes (slowloris) is the proxy's to stop: see
deploy/nginx.conf.
"""
import io
import json
import socket
import struct
import threading
import time

try:
    import fcntl
    import termios
    TIOCOUTQ = getattr(termios, "TIOCOUTQ", None)  # Linux: SIOCOUTQ on a socket
except ImportError:  # Windows
    TIOCOUTQ = None

from streamkit import web

WATCHED = set()  # responses of this process being written now
_watch = {"pid": None}
_lock = threading.Lock()


class SendDeadline:
    """WSGI middleware: a response whose client takes no bytes for `seconds` is cut."""

    def __init__(self, app, seconds):
        self.app, self.seconds = app, seconds

    def __call__(self, environ, start_response):
        sock = web.connection_socket(environ)
        if sock is None or "kit.send_deadline" in environ:  # the test client; or watched already
            return self.app(environ, start_response)
        environ["kit.send_deadline"] = self.seconds
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(self.seconds * 1000))
            except OSError:
                pass  # not a TCP socket
        return Watched(self.app(environ, start_response), sock, self.seconds)


class Watched:
    """A response body that counts the bytes the server has written of it: the server
    asks for the next chunk only once it has written the last one."""

    __slots__ = ("body", "iterator", "sock", "seconds", "written", "pending", "taken", "stuck_since")

    def __init__(self, body, sock, seconds):
        self.body, self.iterator, self.sock, self.seconds = body, iter(body), sock, seconds
        self.written = self.pending = 0  # bytes written; bytes of the chunk being written
        self.taken, self.stuck_since = 0, None  # what the watch saw last
        start_watch(seconds)
        WATCHED.add(self)

    def __iter__(self):
        return self

    def __next__(self):
        self.written += self.pending  # asked for the next chunk: the last one is written
        self.pending = 0
        chunk = next(self.iterator)
        self.pending = len(chunk)
        return chunk

    def close(self):
        WATCHED.discard(self)
        if hasattr(self.body, "close"):
            self.body.close()

    def check(self, now):
        """True when the client has taken no bytes for `seconds` while some wait for it."""
        queued = unsent(self.sock)  # in the kernel's send queue, not yet acknowledged
        taken = self.written - (queued or 0)
        if taken != self.taken or not (self.pending or queued):  # progress, or nothing to take
            self.taken, self.stuck_since = taken, None
            return False
        if self.stuck_since is None:
            self.stuck_since = now
        return now - self.stuck_since > self.seconds


def unsent(sock):
    """Bytes in the socket's send queue that the peer has not acknowledged (Linux's
    SIOCOUTQ): they pile up there long before a write blocks. None where unknown."""
    if TIOCOUTQ is None:
        return None
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return None


def start_watch(seconds):
    with _lock:
        if _watch["pid"] is None:
            _watch["pid"] = True
            threading.Thread(target=watch, args=(min(1.0, seconds / 4),), name="send-deadline",
                             daemon=True).start()


def watch(every):
    """Cut every response whose client has taken nothing for longer than its deadline."""
    while True:
        time.sleep(every)
        now = time.monotonic()
        for response in list(WATCHED):
            if response.check(now):
                WATCHED.discard(response)
                try:
                    response.sock.shutdown(socket.SHUT_RDWR)  # a blocked write fails now, the next one too
                except OSError:
                    pass  # closed already


class BodyDeadline:
    """WSGI middleware: the request body, read whole within `seconds`, or a 408."""

    def __init__(self, app, seconds, limit):
        self.app, self.seconds, self.limit = app, seconds, limit

    def __call__(self, environ, start_response):
        length = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if "kit.body_deadline" in environ or not (chunked or (length.isdigit() and int(length) > 0)):
            return self.app(environ, start_response)
        environ["kit.body_deadline"] = self.seconds
        if length.isdigit() and int(length) > self.limit:
            return self.app(environ, start_response)  # Flask answers 413 without reading it
        try:
            body = self.read(environ, int(length) if length.isdigit() else None)
        except TimeoutError:
            body = None
        if body is None:
            message = f"the request body did not arrive within BODY_TIMEOUT ({self.seconds:g} s)"
            answer = json.dumps({"error": message}).encode()
            start_response("408 Request Timeout", [("Content-Type", "application/json"),
                                                   ("Content-Length", str(len(answer)))])
            return CloseAfter([answer], web.connection_socket(environ))
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.app(environ, start_response)

    def read(self, environ, length):
        """The body, or None if it was not all there in time. At the deadline a timer
        shuts the socket for reading: the read in progress returns what it has."""
        sock, stream = web.connection_socket(environ), environ["wsgi.input"]
        late = threading.Event()
        timer = threading.Timer(self.seconds, cut_reading, (sock, late)) if sock is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            body = stream.read(self.limit + 1 if length is None else length)
        except OSError:  # what a reading socket shut under it may raise
            return None
        finally:
            if timer is not None:
                timer.cancel()
        if late.is_set() or (length is not None and len(body) < length):
            return None
        return body


def cut_reading(sock, late):
    late.set()
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass


class CloseAfter:
    """A short body, after which the connection is shut down, not kept alive."""

    def __init__(self, chunks, sock):
        self.chunks, self.sock = chunks, sock

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RD)  # the rest of that body is never read
            except OSError:
                pass
