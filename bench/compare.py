#!/usr/bin/env python3
"""Short polling vs long polling vs SSE vs WebSocket, headless: demo 5's comparison as a table.

Usage:
    python -m demos.compare bench [--duration S] [--clients N] [--rate HZ]
                                  [--interval S] [--timeout S] [--png FILE] [--url URL]
    python bench/compare.py [the same options]

Without --url it starts its own server, as a user would (gunicorn -c gunicorn.conf.py,
one gevent worker, on a free loopback port; `python -m demos serve` where gunicorn is
missing), with COMPARE_RATE_HZ=--rate, and stops it afterwards. With --url (the
demo's address, e.g. http://127.0.0.1:8000/compare) it uses a running server, at the
rate that server was started with.

--clients N clients per lane run at once for --duration seconds, each a thread with
its own keep-alive connection: short polling every --interval seconds after each
answer, long polling with --timeout, one SSE stream, or one WebSocket.

Columns, per lane:
    delivered    messages the lane's clients received, all together
    gaps         ids a client skipped or got twice (every lane should show 0)
    requests     HTTP requests sent (one SSE stream, or one WebSocket's upgrade, is one)
    req/msg      requests per delivered message
    bytes/msg    bytes received per delivered message: every byte read from the
                 socket (status line, headers, chunk or WebSocket framing, body), counted here
    mean/p95/max latency in ms: arrival time - the message's `ts`, on the server's
                 clock (the offset between the clocks is measured against /time)
Below the table: the server's own estimate from /stats, and this client's CPU
(near 100 % would mean the client, not the server, was the bottleneck).
"""
import argparse
import datetime
import http.client
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so `python bench/compare.py` finds demos/
from streamkit.sse import EventParser  # noqa: E402
from wsproto import ConnectionType, WSConnection  # noqa: E402
from wsproto.events import CloseConnection, Ping, RejectConnection, Request, TextMessage  # noqa: E402

LANES = ("poll", "long-poll", "sse", "ws")
COLUMNS = [("lane", 9), ("delivered", 9), ("gaps", 4), ("requests", 8), ("req/msg", 7),
           ("bytes/msg", 9), ("mean ms", 7), ("p95 ms", 7), ("max ms", 7)]


# --- a client that counts every byte it receives -------------------------------

class _CountedReads(io.RawIOBase):
    def __init__(self, raw, client):
        self.raw, self.client = raw, client  # raw: the socket's own unbuffered file

    def readable(self):
        return True

    def readinto(self, buffer):
        n = self.raw.readinto(buffer)
        self.client.received += n or 0
        return n

    def close(self):
        self.raw.close()  # lets the socket close once http.client is done with it
        super().close()


class _CountingSocket:
    """The socket http.client reads responses from, with every byte counted."""

    def __init__(self, sock, client):
        self._sock, self._client = sock, client

    def makefile(self, *args, **kwargs):
        raw = self._sock.makefile("rb", buffering=0)
        return io.BufferedReader(_CountedReads(raw, self._client))

    def __getattr__(self, name):
        return getattr(self._sock, name)


class _Connection(http.client.HTTPConnection):
    def __init__(self, host, port, client):
        super().__init__(host, port, timeout=60)
        self.client = client

    def connect(self):
        if self.client.window.closed.is_set():  # HTTP/1.0 servers close after each answer
            raise ConnectionAbortedError("the run is over")
        super().connect()
        self.client.socket = self.sock  # http.client forgets it once a 1.0 answer starts
        self.sock = _CountingSocket(self.sock, self.client)


class Window:
    """The measurement: open from the start until the deadline; `offset` is the
    server's clock minus ours, in seconds."""

    def __init__(self, offset):
        self.offset, self.closed = offset, threading.Event()


class Client(threading.Thread):
    """One client of one lane, on its own keep-alive connection."""

    def __init__(self, lane, prefix, host, port, window, args):
        super().__init__(daemon=True, name=f"{lane}-client")
        self.lane, self.prefix, self.window, self.args = lane, prefix, window, args
        self.address, self.connection, self.socket = (host, port), _Connection(host, port, self), None
        self.requests = self.received = 0
        self.latencies, self.ids, self.error = [], [], None

    def run(self):
        lanes = {"poll": self.poll, "long-poll": self.long_poll, "sse": self.sse, "ws": self.ws}
        try:
            lanes[self.lane]()
        except (OSError, ValueError, http.client.HTTPException) as error:
            if not self.window.closed.is_set():
                self.error = f"{type(error).__name__}: {error}"

    def poll(self):
        since = ""
        while not self.window.closed.is_set():
            answer = self.get_json(f"/poll?since={since}")
            self.deliver(answer["messages"])
            since = answer["last_id"]
            self.window.closed.wait(self.args.interval)

    def long_poll(self):
        since = ""
        while not self.window.closed.is_set():
            answer = self.get_json(f"/long-poll?since={since}&timeout={self.args.timeout}")
            self.deliver(answer["messages"])
            since = answer["last_id"]

    def sse(self):
        self.requests += 1
        self.connection.request("GET", self.prefix + "/sse", headers={"Accept": "text/event-stream"})
        response = self.connection.getresponse()
        if response.status != 200:
            raise http.client.HTTPException(f"/sse answered {response.status}")
        parser = EventParser()
        while chunk := response.read1(65536):
            self.deliver([json.loads(event.data) for event in parser.feed(chunk)])

    def ws(self):
        """One WebSocket (wsproto, as the server's simple-websocket): a frame per message."""
        self.requests += 1
        self.socket = sock = socket.create_connection(self.address, timeout=60)
        connection, text = WSConnection(ConnectionType.CLIENT), ""
        sock.sendall(connection.send(Request(host=f"{self.address[0]}:{self.address[1]}",
                                             target=self.prefix + "/ws")))
        while data := sock.recv(65536):
            self.received += len(data)
            connection.receive_data(data)
            for event in connection.events():
                if isinstance(event, RejectConnection):
                    raise http.client.HTTPException(f"/ws answered {event.status_code}")
                if isinstance(event, Ping):  # the server's heartbeat
                    sock.sendall(connection.send(event.response()))
                elif isinstance(event, CloseConnection):
                    return
                elif isinstance(event, TextMessage):
                    text += event.data  # a frame may arrive in pieces
                    if event.message_finished:
                        self.deliver([json.loads(text)])
                        text = ""

    def get_json(self, path):
        self.requests += 1
        self.connection.request("GET", self.prefix + path)
        response = self.connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise http.client.HTTPException(f"{path} answered {response.status}: {body[:200]!r}")
        return json.loads(body)

    def deliver(self, messages):
        """Record when each message arrived, on the server's clock."""
        now = time.time() + self.window.offset
        for message in messages:
            if not self.window.closed.is_set():
                self.latencies.append((now - message["ts"]) * 1000)
                self.ids.append(message["id"])

    def hang_up(self):
        if self.socket is not None:
            try:
                self.socket.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recv()
            except OSError:
                pass


# --- the run ------------------------------------------------------------------------

def get_json(base, path):
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=10)
    try:
        connection.request("GET", parts.path + path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise http.client.HTTPException(f"{base + path} answered {response.status}")
        return json.loads(body)
    finally:
        connection.close()


def clock_offset(base):
    """Server clock minus ours, from the quickest of five round trips."""
    best = (float("inf"), 0.0)
    for _ in range(5):
        sent = time.time()
        server = get_json(base, "/time")["time"]
        received = time.time()
        best = min(best, (received - sent, server - (sent + received) / 2))
    return best[1]


def percentile(sorted_values, p):
    """Nearest-rank percentile of a sorted list; None when it is empty."""
    if not sorted_values:
        return None
    return sorted_values[max(1, -(-len(sorted_values) * p // 100)) - 1]


def gaps(ids):
    """Ids skipped or repeated by one client."""
    return sum(abs(b - a - 1) for a, b in zip(ids, ids[1:]))


def run(base, args):
    """All four lanes at once for args.duration seconds: one row per lane."""
    parts = urlsplit(base)
    window = Window(clock_offset(base))
    before = get_json(base, "/stats")
    clients = [Client(lane, parts.path, parts.hostname, parts.port or 80, window, args)
               for lane in LANES for _ in range(args.clients)]
    cpu0, wall0 = time.process_time(), time.monotonic()
    for client in clients:
        client.start()
    time.sleep(args.duration)
    window.closed.set()
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    rows = {lane: summarize(lane, [c for c in clients if c.lane == lane]) for lane in LANES}
    after = get_json(base, "/stats")
    for client in clients:
        client.hang_up()
    deadline = time.monotonic() + 5
    for client in clients:  # daemon threads: one still stuck after 5 s is left behind
        client.join(timeout=max(0.0, deadline - time.monotonic()))
    return {"rows": rows, "published": after["last_id"] - before["last_id"],
            "rate_hz": after["rate_hz"], "client_cpu_pct": cpu / wall * 100,
            "errors": sorted({c.error for c in clients if c.error}),
            "server": {lane: {key: after["lanes"][lane][key] - before["lanes"][lane][key]
                              for key in ("requests", "bytes")} for lane in LANES}}


def summarize(lane, clients):
    latencies = sorted(ms for c in clients for ms in c.latencies)
    delivered = len(latencies)
    requests, received = sum(c.requests for c in clients), sum(c.received for c in clients)
    return {"lane": lane, "delivered": delivered, "gaps": sum(gaps(c.ids) for c in clients),
            "requests": requests, "req_per_msg": requests / delivered if delivered else None,
            "bytes_per_msg": received / delivered if delivered else None,
            "mean_ms": sum(latencies) / delivered if delivered else None,
            "p95_ms": percentile(latencies, 95), "max_ms": latencies[-1] if latencies else None,
            "latencies": latencies}


def print_table(result):
    print("  ".join(name.rjust(width) for name, width in COLUMNS))
    for row in result["rows"].values():
        cells = [row[key] for key in ("lane", "delivered", "gaps", "requests", "req_per_msg",
                                      "bytes_per_msg", "mean_ms", "p95_ms", "max_ms")]
        print("  ".join(format_cell(value, key).rjust(width)
                        for value, key, (_, width) in zip(cells, ["lane", "", "", "", "req"] + [""] * 4, COLUMNS)))
    server = ", ".join(f"{lane} {s['requests']} requests {s['bytes']:,} bytes"
                       for lane, s in result["server"].items())
    print(f"# published {result['published']} messages in the run (each client could get them all)")
    print(f"# the server's own count (its headers estimated): {server}")
    print(f"# client CPU {result['client_cpu_pct']:.0f} % of one core")
    for error in result["errors"]:
        print(f"# client error: {error}")


def format_cell(value, key):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if key == "req" else f"{value:.0f}" if value >= 10 else f"{value:.1f}"
    return str(value)


def write_png(path, result, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"# no chart: matplotlib is not installed (python -m pip install matplotlib); "
              f"{path} not written")
        return
    rows = result["rows"].values()
    figure, (latency, requests, size) = plt.subplots(1, 3, figsize=(13, 4))
    for row in rows:
        values = [max(ms, 0.1) for ms in row["latencies"]]
        latency.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post",
                     label=row["lane"])
    latency.set(xscale="log", xlabel="latency, ms (log scale)", ylabel="share of messages",
                title="delivery latency")
    latency.legend()
    names = [row["lane"] for row in rows]
    requests.bar(names, [row["req_per_msg"] or 0 for row in rows], color="#0b6bcb")
    requests.set(title="HTTP requests per message")
    size.bar(names, [row["bytes_per_msg"] or 0 for row in rows], color="#0b6bcb")
    size.set(title="bytes received per message")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"# chart written to {path}")


# --- a server of our own ------------------------------------------------------

def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(rate):
    """gunicorn as in the README (gevent's own server where gunicorn is missing)."""
    port = free_port()
    try:
        import gunicorn  # noqa: F401
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                   "--bind", f"127.0.0.1:{port}", "--workers", "1"]
        name = "gunicorn, 1 gevent worker"
    except ImportError:
        command = [sys.executable, "-m", "demos", "serve", "--port", str(port)]
        name = "python -m demos serve"
    log = tempfile.TemporaryFile()
    env = {**os.environ, "COMPARE_RATE_HZ": str(rate)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/compare"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        try:
            get_json(base, "/time")
            return process, base, name
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
    process.kill()
    process.wait()
    log.seek(0)
    sys.exit(f"error: the server did not start:\n{log.read().decode(errors='replace')}")


def find_demo(url):
    """The demo's base URL: as given, or under /compare when given the hub's root."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        sys.exit(f"error: --url must be http://host[:port][/path], not {url!r}")
    base = url.rstrip("/")
    for candidate in [base] + ([base + "/compare"] if parts.path in ("", "/") else []):
        try:
            get_json(candidate, "/time")
            return candidate
        except (OSError, ValueError, http.client.HTTPException):
            pass
    sys.exit(f"error: no compare demo answers at {url} (try http://127.0.0.1:8000/compare)")


def bounded(kind, low, high):
    def check(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {text!r}")
        return value
    return check


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m demos.compare",
                                     description="Demo 5: short polling vs long polling vs SSE vs WebSocket.")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="run the four lanes headless and print a table",
                                description=__doc__.split("\n\n")[0])
    bench.add_argument("--duration", type=bounded(float, 1, 3600), default=20.0,
                       help="seconds to measure (default 20)")
    bench.add_argument("--clients", type=bounded(int, 1, 300), default=5,
                       help="clients per lane (default 5)")
    bench.add_argument("--rate", type=bounded(float, 0.01, 100),
                       help="messages per second of the server started here (default 1)")
    bench.add_argument("--interval", type=bounded(float, 0.05, 60), default=1.0,
                       help="short polling: seconds between an answer and the next request (default 1)")
    bench.add_argument("--timeout", type=bounded(float, 0, 30), default=20.0,
                       help="long polling: the timeout each request asks for (default 20)")
    bench.add_argument("--png", help="also draw the comparison into this PNG file (needs matplotlib)")
    bench.add_argument("--url", help="a running demo, e.g. http://127.0.0.1:8000/compare")
    args = parser.parse_args(argv)
    if args.url and args.rate is not None:
        parser.error("--rate sets the rate of the server started here; a server at --url "
                     "ticks at its own COMPARE_RATE_HZ")

    server = None
    if args.url:
        base, name = find_demo(args.url), "running server"
    else:
        server, base, name = start_server(args.rate or 1.0)
    try:
        result = run(base, args)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=15)
    title = (f"compare bench: {base} ({name}), rate {result['rate_hz']:g} Hz, "
             f"{args.duration:g} s, {args.clients} clients per lane, poll every {args.interval:g} s, "
             f"long-poll timeout {args.timeout:g} s")
    print(f"# {title}\n# python {platform.python_version()}, "
          f"{datetime.datetime.now().isoformat(timespec='seconds')}")
    print_table(result)
    if args.png:
        write_png(args.png, result, title)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
