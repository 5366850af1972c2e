"""Fan-out beyond WSGI: one writer sends each message to every client's socket itself.

On the plain path (demos/compare.py `frames`) every message costs every stream a
greenlet switch and a pass through the WSGI server's write. Here one writer per board
frames each message once as an HTTP/1.1 chunk and sends it to every registered
socket in one loop, and the streams' greenlets stay parked. What that gives up:

- WSGI after the first bytes: no middleware sees the rest of the body (none can
  count, compress or buffer it), and the server's own write is bypassed.
- The framing is ours: HTTP/1.1 chunked coding written by hand, so only an HTTP/1.1
  GET takes this path.
- Back-pressure: every send is non-blocking, and a client whose socket cannot take
  a whole chunk at once is dropped (shut down: never half a frame, then the next)
  instead of buffered or waited for. EventSource reconnects with its Last-Event-ID
  and gets what it missed from the board's history.

How the connection goes back to the server: the server writes the head and the
first chunk itself (the body's first item); when it asks for the next item, the
socket is registered and the stream's greenlet parks reading it. When the client
closes, sends anything, or the writer shuts the socket down, the read returns and
the body ends: the server writes the last chunk (`0` CRLF CRLF) and carries on
with the connection as after any response. The send deadline (streamkit/guards.py)
still watches the socket: a closed laptop lid is cut after SEND_TIMEOUT.

Only gevent sockets qualify: gunicorn's gevent worker (`gunicorn.socket`) and
`python -m demos serve` (`kit.socket`). Elsewhere (the Flask test client, `flask
run`, another worker class) the plain frames serve, and the first line says so.
"""
import socket
import threading
import weakref

from flask import request

from streamkit import sse, web

DIRECT = b": direct: the ticker writes to this socket itself\n\n"
PLAIN = b": plain path: writing directly needs a gevent server's socket and HTTP/1.1\n\n"


def chunk(data):
    """`data` as one HTTP/1.1 chunk (RFC 9112, 7.1): size in hex, CRLF, data, CRLF."""
    return b"%x\r\n%s\r\n" % (len(data), data)


PING_CHUNK = chunk(sse.PING_BYTES)
# What the kernel may hold for one client (Linux doubles it: 16 KiB, two minutes of
# the 1 Hz ticker). A client further behind is dropped: its buffer is bounded, and
# a stalled one goes at once instead of after SEND_TIMEOUT.
SEND_BUFFER = 8192
_writers = weakref.WeakKeyDictionary()  # board → its Writer
_lock = threading.Lock()


def event_stream(board, since, plain):
    """The response for a stream of `board`'s items after number `since` (items carry
    their SSE `.frame`): written by the board's Writer where this request's socket
    allows it, else the generator `plain` (the same frames through WSGI)."""
    sock = client_socket(request.environ)
    if sock is None:
        return sse.event_stream(_after(PLAIN, plain), encoded=True)
    plain.close()  # never started: nothing to release
    with _lock:
        writer = _writers.get(board) or _writers.setdefault(board, Writer(board))
    return sse.event_stream(writer.stream(sock, since), encoded=True)


def client_socket(environ):
    """The client's gevent socket, if the server gives it and will chunk the response."""
    sock = web.connection_socket(environ)
    if not type(sock).__module__.startswith("gevent") or not hasattr(sock, "_sock"):
        return None  # no socket, or a blocking one: a send could stall the writer
    if environ.get("SERVER_PROTOCOL") != "HTTP/1.1" or environ.get("REQUEST_METHOD") != "GET":
        return None  # HTTP/1.0 is not chunked; HEAD has no body
    return sock


def _after(first, frames):
    yield first
    yield from frames


class Writer:
    """One board's direct clients and the greenlet that writes to them. `clients` maps
    each socket in step (sent everything up to `seen`) to the non-blocking OS socket
    under it; `joining` holds those sent more than that, with their number."""

    def __init__(self, board):
        self.board, self.seen, self.running = board, board.seq, False
        self.clients, self.joining = {}, {}
        self._lock = threading.Lock()

    def stream(self, sock, since):
        """One client's response body: the first bytes through the server, then the
        socket is registered and this greenlet parks until the stream ends."""
        seen, items = self.board.after(since)
        yield DIRECT + b"".join(item.frame for item in items)  # the server sends the head with it
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            while (behind := self._register(sock, seen)) is not None:
                seen, items = self.board.after(seen)  # fell behind the writer: catch up through WSGI
                items = items[:max(0, len(items) - (seen - behind))]  # up to the writer's number
                seen = behind
                if items:
                    yield b"".join(item.frame for item in items)
            _park(sock)
        except OSError:
            pass  # the client left before it was registered
        finally:
            with self._lock:
                self.clients.pop(sock, None)
                self.joining.pop(sock, None)

    def _register(self, sock, seen):
        """Register `sock`, sent everything up to `seen`; or return the writer's number
        when the client is behind it and must catch up first."""
        with self._lock:
            if not self.running:  # the writer starts with its first client, from now
                self.running, self.seen = True, self.board.seq
                threading.Thread(target=self._run, name="direct-writer", daemon=True).start()
            if seen < self.seen:
                return self.seen
            if seen == self.seen:
                self.clients[sock] = sock._sock
            else:  # ahead: the writer has not yet written what this client got
                self.joining[sock] = seen
            return None

    def _run(self):
        while True:
            n, items = self.board.wait(self.seen)  # parked until a post or the ringer's ring
            with self._lock:
                if not self.clients and not self.joining:
                    self.running = False  # the next client starts a new writer
                    return
                data = chunk(b"".join(item.frame for item in items)) if items else PING_CHUNK
                dropped = [sock for sock, raw in self.clients.items() if not send(raw, data)]
                dropped += self._join(n, items)
                for sock in dropped:
                    self.clients.pop(sock, None)
                    drop(sock)
                self.seen = n

    def _join(self, n, items):
        """Bring the joining clients in step: each gets only the items after the
        number it had. Returns those that could not take them."""
        joining, self.joining, dropped = self.joining, {}, []
        for sock, their in joining.items():
            mine = items[max(0, len(items) - (n - their)):] if their < n else ()
            if not mine or send(sock._sock, chunk(b"".join(item.frame for item in mine))):
                self.clients[sock] = sock._sock
            else:
                dropped.append(sock)
        return dropped


def send(raw, data):
    """Whether the non-blocking socket `raw` took all of `data` at once."""
    try:
        return raw.send(data) == len(data)
    except OSError:  # BlockingIOError: its buffers are full; EPIPE, ECONNRESET: gone
        return False


def drop(sock):
    """Shut a client's socket down: the rest of a partial chunk never follows, and the
    stream's greenlet, parked reading it, wakes and ends the response."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # gone already


def _park(sock):
    """Wait, cooperatively, until the client closes, sends anything (a next request:
    peeked, not taken, so the server reads it) or the socket is shut down."""
    while True:
        try:
            sock.recv(1, socket.MSG_PEEK)
            return
        except TimeoutError:  # a server that sets a socket timeout: keep waiting
            continue
        except OSError:
            return
