"""Clients that hold the server without meaning to: the laptop lid and the slow body.

A laptop whose lid closes mid-stream never reads again and never says goodbye. A
heartbeat does not find it: a write succeeds as long as the kernel can buffer it, and
once the buffers are full the next write blocks for ever, holding the stream's
greenlet, its subscription and its memory. Two deadlines, one on
each side of the conversation, for every demo at once, in one layer (Deadlines):

- The send deadline: a response whose client has taken no bytes for SEND_TIMEOUT s while
  some wait for it is cut. One watch thread per process looks at every response once
  a second, in the kernel's own words on Linux (bytes the client acknowledged, bytes
  still queued for it: no per-chunk work); elsewhere by counting the bytes the server
  has written, so a write blocked that long shows. It shuts the socket down; the
  write fails, the server closes the response, and the stream's `finally` releases
  what it held (subscription, queue, upstream). A client that reads, however slowly,
  misses nothing. On Linux the socket also gets TCP_USER_TIMEOUT, so the kernel gives
  up on a peer that acknowledges nothing at all (a sleeping laptop) after as long.
- The body deadline: a request body must have arrived whole within BODY_TIMEOUT s, however
  slowly it trickles (each read waits at most what is left); otherwise 408 and the
  connection is closed.

A request head that never finishes (slowloris) is the proxy's to stop: see
deploy/nginx.conf.
"""
import io
import json
import logging
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

log = logging.getLogger(__name__)

WATCHED = set()  # responses of this process being written now
GUARDED = set()  # sockets whose request an outer Deadlines is passing on right now
_watching = False
_lock = threading.RLock()  # the watch start, the lids


def watched(body, sock, seconds):
    """The response body `body`, looked after by the watch (see Watched)."""
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux: the kernel gives up on a silent peer too
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
        except OSError:
            pass  # not a TCP socket
    return (Watched if KERNEL_SAYS else Counted)(body, sock, seconds)


class Watched:
    """A response the watch looks after. The server iterates the body itself (no frame
    of ours between it and each chunk: a parked greenlet's saved stack would grow by
    kilobytes) and calls close() at the end. Where the kernel reports what the client
    acknowledged (Linux's TCP_INFO), that is the client's progress."""

    __slots__ = ("body", "sock", "seconds", "taken", "stuck_since")

    def __init__(self, body, sock, seconds):
        self.body, self.sock, self.seconds = body, sock, seconds
        self.taken, self.stuck_since = None, None  # what the watch saw last
        start_watch(seconds)
        WATCHED.add(self)

    def __iter__(self):
        return iter(self.body)

    def close(self):
        WATCHED.discard(self)
        if hasattr(self.body, "close"):
            self.body.close()

    def progress(self):
        """(bytes the client has taken, bytes still waiting for it), or None if unknown."""
        queued, acked = unsent(self.sock), acknowledged(self.sock)
        return None if queued is None or acked is None else (acked, queued)

    def check(self, now):
        """True when the client has taken no bytes for `seconds` while some wait for it."""
        seen = self.progress()
        if seen is None or seen[0] != self.taken or not seen[1]:  # progress, or nothing to take
            self.taken, self.stuck_since = seen and seen[0], None
            return False
        if self.stuck_since is None:
            self.stuck_since = now
        return now - self.stuck_since > self.seconds


class Counted(Watched):
    """Where the kernel does not say (macOS, Windows): count the bytes the server wrote,
    chunk by chunk; a write blocked on a full buffer shows as no progress."""

    __slots__ = ("iterator", "written", "pending")

    def __init__(self, body, sock, seconds):
        super().__init__(body, sock, seconds)
        self.iterator, self.written, self.pending = iter(body), 0, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.written += self.pending  # asked for the next chunk: the last one is written
        self.pending = 0
        chunk = next(self.iterator)
        self.pending = len(chunk)
        return chunk

    def progress(self):
        return self.written, self.pending


def unsent(sock):
    """Bytes in the socket's send queue that the peer has not acknowledged (SIOCOUTQ)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return None  # closed


def acknowledged(sock):
    """Bytes of this connection the peer has acknowledged (struct tcp_info's bytes_acked)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, ValueError):
        return None
    return struct.unpack_from("Q", info, 120)[0] if len(info) >= 128 else None


KERNEL_SAYS = TIOCOUTQ is not None and hasattr(socket, "TCP_INFO")  # Linux


WATCH_SLICE = 500  # responses checked between two chances for everyone else to run


def start_watch(seconds):
    global _watching
    with _lock:
        if not _watching:  # one watch per process, started by the first response
            _watching = True
            threading.Thread(target=watch, args=(min(1.0, seconds / 4),), name="send-deadline",
                             daemon=True).start()


def watch(every):
    """Cut every response whose client has taken nothing for longer than its deadline."""
    while True:
        time.sleep(every)
        now = time.monotonic()
        for n, response in enumerate(list(WATCHED)):
            if n % WATCH_SLICE == WATCH_SLICE - 1:
                time.sleep(0)  # let the streams run: 10,000 checks in one go held them ~30 ms
            try:
                stuck = response.check(now)
            except Exception:  # never let one odd socket end the watch for the whole process
                log.exception("send deadline: could not check a response")
                continue
            if stuck:
                WATCHED.discard(response)
                try:
                    response.sock.shutdown(socket.SHUT_RDWR)  # a blocked write fails now, the next one too
                except OSError:
                    pass  # closed already


class Deadlines:
    """WSGI middleware, one layer for both deadlines: the request body must arrive
    within `body_seconds` (else 408), and the response's client must keep taking
    bytes (see Watched). Each layer of middleware costs every parked stream memory
    (about 4 KiB at 10,000 streams, bench/README.md), so both share one."""

    def __init__(self, app, send_seconds, body_seconds, limit):
        self.app, self.seconds, self.body_seconds, self.limit = app, send_seconds, body_seconds, limit

    def __call__(self, environ, start_response):
        sock = web.connection_socket(environ)
        # Nothing is added to the environ: it lives as long as the stream.
        if sock is None or sock in GUARDED:  # the test client; or an outer layer has it
            return self.app(environ, start_response)
        GUARDED.add(sock)
        try:
            early = self.read_body(environ, start_response)
            body = early or self.app(environ, start_response)
        finally:
            GUARDED.discard(sock)
        return body if early else watched(body, sock, self.seconds)

    def read_body(self, environ, start_response):
        """Read the body within the deadline and hand it on; or answer 408 (returned)."""
        length = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not (chunked or (length.isdigit() and int(length) > 0)):
            return None  # no body
        if length.isdigit() and int(length) > self.limit:  # refused unread: the rest is never read either
            return self.refuse(environ, start_response, "413 Request Entity Too Large",
                               f"request body too large: at most {self.limit // 1024} KiB is accepted")
        body = self.read(environ, int(length) if length.isdigit() else None)
        if body is None:
            return self.refuse(environ, start_response, "408 Request Timeout",
                               f"the request body did not arrive within BODY_TIMEOUT ({self.body_seconds:g} s)")
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return None

    @staticmethod
    def refuse(environ, start_response, status, message):
        """A JSON error, after which the connection closes: its body is never read."""
        answer = json.dumps({"error": message}).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))])
        return CloseAfter([answer], web.connection_socket(environ))

    def read(self, environ, length):
        """The body, or None if it was not all there in time. At the deadline a timer
        shuts the socket for reading: the read in progress returns what it has."""
        sock, stream = web.connection_socket(environ), environ["wsgi.input"]
        late = threading.Event()
        timer = threading.Timer(self.body_seconds, cut_reading, (sock, late)) if sock is not None else None
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
        if len(body) < length if length is not None else late.is_set():
            return None  # (a whole body that beat the timer by a hair still counts)
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


LIDS = []  # (socket, opened at) of the clients close_lids() opened, closed after LID_LIFE s
LID_LIFE = 300.0
MAX_LIDS = 50  # open at once, whoever asks: a demo must not become a way to exhaust sockets


def close_lids(base_url, path, count):
    """Open `count` clients of `path` on this server that never read: closed laptops,
    for the pitfalls page. Each sends its GET and is never read from again; a tiny
    receive window makes the server's writes back up after a few kilobytes. They are
    closed after LID_LIFE s, however long the server holds their streams. False when
    MAX_LIDS are open; OSError (those opened closed again) when one cannot connect."""
    host, port = base_url.rsplit("//", 1)[1].rsplit(":", 1)
    with _lock:
        forget_lids()
        if len(LIDS) + count > MAX_LIDS:
            return False
        opened = []
        try:
            for _ in range(count):
                lid = socket.socket(socket.AF_INET6 if host.startswith("[") else socket.AF_INET)
                opened.append(lid)
                lid.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                lid.connect((host.strip("[]"), int(port)))
                lid.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        except OSError:
            for lid in opened:
                lid.close()
            raise
        LIDS.extend((lid, time.monotonic()) for lid in opened)
    timer = threading.Timer(LID_LIFE, forget_lids)
    timer.daemon = True
    timer.start()
    return True


def forget_lids():
    """Close the lids opened LID_LIFE s ago (or nearly: a timer may fire early)."""
    while LIDS and time.monotonic() - LIDS[0][1] >= LID_LIFE - 1:
        try:
            LIDS.pop(0)[0].close()
        except IndexError:  # another caller took it
            break
