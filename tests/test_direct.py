"""/compare/sse-direct: the ticker writes each message to every socket itself.

Live tests read the wire on raw sockets and check the HTTP/1.1 chunk framing byte
by byte, since the direct path writes it by hand.
"""
import json
import selectors
import socket
import time
from pathlib import Path

import pytest

from demos import compare
from streamkit import direct, sse
from tests.conftest import LiveServer, live_events, read_events, wait_until


# --- without a socket: the plain path, and it says so ---------------------------------

def test_under_the_test_client_it_falls_back_and_says_so():
    app = compare.create_app({"TESTING": True, "COMPARE_RATE_HZ": 50})
    try:
        stream = read_events(app.test_client(), "/sse-direct", limit=4)
        plain = read_events(app.test_client(), "/sse", limit=1)
    finally:
        app.extensions["compare"][0].stop()
    assert stream.status == 200 and stream.headers == plain.headers
    assert stream.raw.startswith(direct.PLAIN.decode())  # the first comment line says which path
    numbers = [int(event.id) for event in stream.events]
    assert numbers == list(range(numbers[0], numbers[0] + 4))


@pytest.mark.parametrize("key", ["werkzeug.socket", "gunicorn.socket"], ids=["flask run", "a worker without gevent"])
def test_only_a_gevent_socket_is_written_to_directly(key):
    with socket.socket() as blocking:  # a thread's socket: a send may block the writer
        environ = {key: blocking, "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_METHOD": "GET"}
        assert direct.client_socket(environ) is None


@pytest.mark.parametrize("protocol, method", [("HTTP/1.0", "GET"), ("HTTP/1.1", "HEAD")])
def test_only_a_chunked_response_is_written_to_directly(protocol, method):
    from gevent import socket as gevent_socket  # a gevent socket, without patching anything
    with gevent_socket.socket() as sock:
        environ = {"gunicorn.socket": sock, "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_METHOD": "GET"}
        assert direct.client_socket(environ) is sock
        assert direct.client_socket({**environ, "SERVER_PROTOCOL": protocol, "REQUEST_METHOD": method}) is None


def test_a_chunk_is_framed_as_http_1_1_says():
    # RFC 9112, 7.1: the size in hex, CRLF, the data, CRLF.
    assert direct.chunk(b"data: x\n\n") == b"9\r\ndata: x\n\n\r\n"
    assert direct.chunk(b"a" * 255) == b"ff\r\n" + b"a" * 255 + b"\r\n"


# --- the wire, read on raw sockets -------------------------------------------------------

class Wire:
    """One GET on a raw socket: the head, then the body dechunked strictly (a size line
    that is not hex, or a chunk without its CRLF, fails the test) and parsed as SSE."""

    def __init__(self, port, path="/compare/sse-direct", headers=None, rcvbuf=None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.raw, self.head, self.body, self.ended, self.closed = b"", None, b"", False, False
        self.parser, self.events = sse.EventParser(), []

    def feed(self, data):
        if not data:
            self.closed = True
        self.raw += data
        if self.head is None:
            if b"\r\n\r\n" not in self.raw:
                return
            self.head, self.raw = self.raw.split(b"\r\n\r\n", 1)
            assert self.head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in self.head, self.head
        while not self.ended and b"\r\n" in self.raw:
            size_line, rest = self.raw.split(b"\r\n", 1)
            size = int(size_line, 16)  # ValueError: not a size line
            if len(rest) < size + 2:
                return  # the rest of the chunk is still on its way
            assert rest[size:size + 2] == b"\r\n", rest[:size + 2]
            self.raw, self.ended = rest[size + 2:], size == 0
            self.body += rest[:size]
            self.events += self.parser.feed(rest[:size])

    def read(self, until, timeout=10):
        """Read until `until(self)` or the connection closes."""
        self.sock.settimeout(timeout)
        while not until(self) and not self.closed:
            self.feed(self.sock.recv(65536))
        return self

    def ids(self):
        return [int(event.id) for event in self.events]

    def close(self):
        self.sock.close()


def read_all(wires, until, timeout):
    """Read many Wires at once (one thread, a selector) until each satisfies `until`."""
    selector = selectors.DefaultSelector()
    for wire in wires:
        wire.sock.setblocking(False)
        selector.register(wire.sock, selectors.EVENT_READ, wire)
    deadline = time.monotonic() + timeout
    waiting = len(wires)
    while waiting and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            wire = key.data
            wire.feed(wire.sock.recv(65536))
            if until(wire) or wire.closed:
                selector.unregister(wire.sock)
                waiting -= 1
    selector.close()


def consecutive(numbers):
    return bool(numbers) and numbers == list(range(numbers[0], numbers[0] + len(numbers)))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"COMPARE_RATE_HZ": "20", "SEND_TIMEOUT": "1"}  # readers keep up; a silent client is cut
    server = LiveServer(tmp_path_factory.mktemp("direct"), env=env).start()
    yield server
    server.stop()


@pytest.mark.live
def test_live_500_streams_get_every_message_once_in_order(server):
    wires = [Wire(server.port) for _ in range(500)]
    try:
        read_all(wires, lambda wire: len(wire.events) >= 15, timeout=20)
    finally:
        for wire in wires:
            wire.close()
    assert all(wire.body.startswith(direct.DIRECT) for wire in wires)  # the direct path served
    assert all(b"X-Accel-Buffering: no" in wire.head and b"text/event-stream" in wire.head for wire in wires)
    assert [len(wire.events) >= 15 for wire in wires] == [True] * 500
    assert all(consecutive(wire.ids()) for wire in wires)  # no gap, no repeat, in order
    for wire in wires:
        assert [json.loads(event.data)["id"] for event in wire.events] == wire.ids()
    # Every stream that read the same id read the same message: one frame for all.
    first = {n: event.data for wire in wires for n, event in zip(wire.ids(), wire.events)}
    assert all(first[n] == event.data for wire in wires for n, event in zip(wire.ids(), wire.events))


@pytest.mark.live
@pytest.mark.parametrize("back", [1, 5])
def test_live_resumes_after_last_event_id(server, back):
    first = Wire(server.port).read(lambda wire: len(wire.events) >= 6)
    first.close()
    seen = first.ids()[-back]
    resumed = Wire(server.port, headers={"Last-Event-ID": seen}).read(lambda wire: len(wire.events) >= 8)
    resumed.close()
    assert resumed.ids()[0] == seen + 1 and consecutive(resumed.ids())
    query = Wire(server.port, f"/compare/sse-direct?lastEventId={seen}").read(lambda wire: len(wire.events) >= 3)
    query.close()
    assert query.ids()[0] == seen + 1


@pytest.mark.live
def test_live_the_connection_goes_back_to_the_server_when_the_stream_ends(server):
    # Anything the client sends ends the stream: the server writes the last chunk
    # and answers the next request on the same connection (keep-alive).
    wire = Wire(server.port).read(lambda wire: len(wire.events) >= 3)
    try:
        wire.sock.sendall(f"GET /compare/time HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        wire.read(lambda wire: wire.ended)
        assert consecutive(wire.ids())
        wire.sock.settimeout(5)
        answer = wire.raw
        while b'"time"' not in answer:
            answer += wire.sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer  # straight after "0\r\n\r\n"
    finally:
        wire.close()


def server_sockets(port):
    """States of the server's own ends of connections to `port` (/proc/net/tcp)."""
    states = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if int(local.split(":")[1], 16) == port and state != "0A":  # 0A: the listener
            states.append(state)
    return states


@pytest.mark.live
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_live_a_departed_client_is_released_by_the_next_tick(tmp_path):
    server = LiveServer(tmp_path, env={"COMPARE_RATE_HZ": "5"}).start()
    try:
        wires = [Wire(server.port) for _ in range(20)]
        read_all(wires, lambda wire: len(wire.events) >= 1, timeout=10)
        assert all(wire.events for wire in wires) and len(server_sockets(server.port)) >= 20
        for wire in wires:
            wire.close()
        # Released: the server closed its ends (none ESTABLISHED or CLOSE_WAIT: 01, 08).
        assert wait_until(lambda: not {"01", "08"} & set(server_sockets(server.port)), timeout=0.5), \
            server_sockets(server.port)
    finally:
        server.stop()


def server_end(port, client_port):
    """The state of the server's end of one connection (/proc/net/tcp), or None once closed."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port:
            return state
    return None


@pytest.mark.live
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_live_a_silent_client_is_cut_after_send_timeout(server):
    # A closed laptop lid at 20 messages a second: its window is full within a second or
    # two, long before the writer's 16 KiB buffer (about 10 s); SEND_TIMEOUT=1 cuts it first.
    lid = Wire(server.port, rcvbuf=1024)
    try:
        client_port = lid.sock.getsockname()[1]
        assert wait_until(lambda: server_end(server.port, client_port) == "01", timeout=5)
        # Cut: the server has shut its end down (no longer ESTABLISHED or CLOSE_WAIT).
        assert wait_until(lambda: server_end(server.port, client_port) not in ("01", "08"), timeout=6)
    finally:
        lid.close()


@pytest.fixture(scope="module")
def fast_server(tmp_path_factory):
    server = LiveServer(tmp_path_factory.mktemp("direct-fast"), env={"COMPARE_RATE_HZ": "100"}).start()
    yield server
    server.stop()


@pytest.mark.live
def test_live_a_client_that_stops_reading_is_dropped_and_the_others_are_not_stalled(fast_server):
    # 100 messages a second into a 1 KiB receive buffer nobody reads: within seconds
    # its socket cannot take a whole chunk, and the server shuts it down.
    slow = Wire(fast_server.port, rcvbuf=1024)
    readers = [Wire(fast_server.port) for _ in range(20)]
    try:
        started = time.monotonic()
        read_all(readers, lambda wire: len(wire.events) >= 600, timeout=15)
        took = time.monotonic() - started
        # Now read what the slow client was sent: whole chunks, then at most one cut
        # short, then the end of the connection: never a frame after a cut one.
        slow.sock.settimeout(5)
        while not slow.closed:
            try:
                slow.feed(slow.sock.recv(65536))
            except ConnectionResetError:
                slow.closed = True
            except TimeoutError:
                break  # still open: not dropped
    finally:
        for wire in [slow, *readers]:
            wire.close()
    assert slow.closed and not slow.ended  # dropped: shut down, not ended with a last chunk
    assert consecutive(slow.ids()) and len(slow.ids()) < 600
    assert all(consecutive(wire.ids()) and len(wire.ids()) >= 600 for wire in readers)
    assert took < 9  # 600 messages at about 100 a second: nobody waited for the slow one


@pytest.mark.live
def test_live_under_python_m_demos_serve(run_alone):
    url = run_alone("demos", "serve", "compare", ready="/time", env={"COMPARE_RATE_HZ": "20"})
    port = int(url.rsplit(":", 1)[1])
    wire = Wire(port, "/sse-direct").read(lambda wire: len(wire.events) >= 5)
    try:
        assert wire.body.startswith(direct.DIRECT) and consecutive(wire.ids())
        wire.sock.sendall(f"GET /time HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        wire.read(lambda wire: wire.ended)  # the last chunk, then the next answer
        wire.sock.settimeout(5)
        answer = wire.raw
        while b'"time"' not in answer:
            answer += wire.sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    finally:
        wire.close()


@pytest.mark.live
def test_live_under_flask_run_it_falls_back_and_says_so(run_alone):
    url = run_alone("flask", "--app", "demos.compare", "run", ready="/time", env={"COMPARE_RATE_HZ": "20"})
    stream = live_events(url + "/sse-direct", limit=3)
    assert stream.status == 200 and stream.raw.startswith(direct.PLAIN.decode())
    assert consecutive([int(event.id) for event in stream.events])


@pytest.mark.browser
def test_chromium_reads_it_like_the_plain_stream(server, page):
    page.goto(server.url + "/compare/")
    got = page.evaluate("""async () => {
        const read = (url) => new Promise((resolve) => {
          const source = new EventSource(url), seen = [];
          source.onmessage = (e) => {
            seen.push([Number(e.lastEventId), JSON.parse(e.data).id]);
            if (seen.length === 5) { source.close(); resolve(seen); }
          };
        });
        return [await read("sse-direct"), await read("sse")];
    }""")
    for seen in got:
        assert all(event_id == data_id for event_id, data_id in seen)
        assert consecutive([event_id for event_id, _ in seen])
