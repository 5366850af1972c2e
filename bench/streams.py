#!/usr/bin/env python3
"""Hold N concurrent SSE streams (or WebSockets) against a server and measure what they cost it.

Usage:
    python bench/streams.py URL -n 1000 5000 10000 [--duration 20] [--ws]
                            [--server-pid PID] [--ramp 1000] [--json FILE]

For each N in turn: open N streams, at most --ramp of them in flight (a stream
is in flight until its response head arrives) so the server's listen backlog
is not overrun; once all are connected, measure for --duration seconds; close
them all and print one row. Plain asyncio Protocols and raw HTTP/1.1 in one
process, so holding 10,000 streams costs the client little. With --ws each
client is a WebSocket instead (an Upgrade request, then one text frame per
event; the server's pings are answered, as a browser does), e.g. URL
http://127.0.0.1:8000/compare/ws.

Columns:
    N            streams asked for
    held         streams that got a 200 (101 with --ws) and were still open at the end (connect
                 failures, non-200s and early closes are listed under the row)
    events       events received in the measurement window, all streams together
    p50/p99/max  event lateness in ms: receipt time - timestamp in the payload.
                 Data that is a bare number is unix seconds; a JSON object's "ts"
                 is seconds, or milliseconds if > 1e11. Other events only count.
    KiB/stream   (server RSS at end of window - server RSS before opening) / N
    srv RSS MiB  server RSS at the end of the window
    srv CPU %    server CPU time in the window / wall time * 100 (100 = one core)
    cli CPU %    this script's CPU in the window; near 100 would mean the client,
                 not the server, was the bottleneck
The srv columns need --server-pid (Linux /proc). If that process has children,
as a gunicorn master does, its children (down to the leaves) are measured
instead. Memory the server freed after one level is often reused by the next,
so for a clean KiB/stream at a large N, run that N alone on a fresh server.
"""
import argparse
import asyncio
import collections
import datetime
import glob
import json
import os
import platform
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

try:
    import resource
except ImportError:  # Windows
    resource = None

RAMP_TIMEOUT = 60.0  # seconds allowed to connect all N streams
SETTLE = 2.0  # pause between levels so the server can release the old streams
COLUMNS = [("N", 6), ("held", 6), ("events", 8), ("p50 ms", 8), ("p99 ms", 8),
           ("max ms", 8), ("KiB/stream", 10), ("srv RSS MiB", 11),
           ("srv CPU %", 9), ("cli CPU %", 9)]


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list; None if it is empty."""
    if not sorted_values:
        return None
    rank = -(-len(sorted_values) * p // 100)  # ceil, in integers
    return sorted_values[max(1, int(rank)) - 1]


def raise_fd_limit():
    """Every stream is a file descriptor: lift the soft limit to the hard one."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    except (ValueError, OSError):  # e.g. an unlimited hard limit on macOS
        return soft


def children(pid):
    pids = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                pids += [int(c) for c in f.read().split()]
        except OSError:  # a thread that exited meanwhile
            pass
    return pids


def server_usage(pid):
    """(RSS KiB, CPU seconds) of pid, or of its children if it has any.

    Followed down to the leaves, so a shell wrapping a gunicorn master still
    measures the workers, not the shell."""
    leaves, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = children(p)
        todo += kids
        if not kids:
            leaves.append(p)
    rss_kib, ticks = 0, 0
    for p in leaves:
        try:
            with open(f"/proc/{p}/status") as f:
                rss_kib += sum(int(line.split()[1]) for line in f
                               if line.startswith("VmRSS:"))
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:  # a worker that exited meanwhile
            pass
    return rss_kib, ticks / os.sysconf("SC_CLK_TCK")


def payload_timestamp(data):
    """Unix seconds carried by an event's data, or None."""
    try:
        return float(data)
    except ValueError:
        pass
    try:
        ts = json.loads(data).get("ts") if data.startswith("{") else None
    except ValueError:
        return None
    if isinstance(ts, (int, float)):
        return ts / 1000.0 if ts > 1e11 else float(ts)
    return None


class Window:
    """What one level collects; events count only while `open` is set."""
    def __init__(self):
        self.open, self.events, self.lateness_ms = False, 0, []


class StreamProtocol(asyncio.Protocol):
    """One SSE stream: response head, chunked or close-delimited body, frames."""
    # 10,000 of these are alive at once: slots keep each one small.
    __slots__ = ("request", "window", "head", "transport", "status", "chunked",
                 "raw", "chunk_left", "sse", "closed")

    def __init__(self, request, window):
        self.request, self.window = request, window
        self.head = asyncio.get_running_loop().create_future()  # -> status code
        self.transport, self.status, self.chunked = None, None, False
        self.raw, self.chunk_left, self.sse, self.closed = b"", 0, b"", False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc):
        self.closed = True
        if not self.head.done():
            self.head.set_exception(exc or ConnectionError("closed before the head"))

    def data_received(self, data):
        if self.status is None:
            self.raw += data
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.raw[:end].decode("latin-1").lower().split("\r\n")
            data, self.raw = self.raw[end + 4:], b""
            code = (lines[0].split() + ["", ""])[1]  # "HTTP/1.1 200 OK"
            self.status = int(code) if code.isdigit() else 0  # 0: not HTTP at all
            self.chunked = any(line.replace(" ", "") == "transfer-encoding:chunked"
                               for line in lines[1:])
            self.head.set_result(self.status)
        if self.chunked:
            self.dechunk(data)
        else:
            self.feed(data)

    def dechunk(self, data):
        """Strip chunk framing as bytes arrive; a size line may come in pieces."""
        self.raw += data
        while self.raw:
            if self.chunk_left == 0:
                eol = self.raw.find(b"\r\n")
                if eol < 0:
                    return
                size = self.raw[:eol].split(b";")[0].strip()  # drop chunk extensions
                self.raw = self.raw[eol + 2:]
                if not size:  # the CRLF that ends each chunk's data
                    continue
                try:
                    self.chunk_left = int(size, 16)
                except ValueError:
                    self.chunk_left = 0  # broken framing: treat as the end
                if self.chunk_left == 0:  # last chunk: the server ended the stream
                    self.transport.close()
                    return
            piece, self.raw = self.raw[:self.chunk_left], self.raw[self.chunk_left:]
            self.chunk_left -= len(piece)
            self.feed(piece)

    def feed(self, data):
        # Normalise CRLF over the whole buffer, so a "\r" | "\n" split still matches.
        self.sse = (self.sse + data).replace(b"\r\n", b"\n")
        while (end := self.sse.find(b"\n\n")) >= 0:
            frame, self.sse = self.sse[:end], self.sse[end + 2:]
            self.on_frame(frame)

    def on_frame(self, frame):
        data = [line[5:].removeprefix(b" ") for line in frame.split(b"\n")
                if line.startswith(b"data:")]  # comment lines (":...") drop out here
        if data:
            self.on_event(b"\n".join(data))

    def on_event(self, data):
        if not self.window.open:
            return
        self.window.events += 1
        ts = payload_timestamp(data.decode("utf-8", "replace").strip())
        if ts is not None:
            self.window.lateness_ms.append((time.time() - ts) * 1000.0)

    def abort(self):
        # RST rather than FIN: no TIME_WAIT piles up on the client's ports.
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            linger_zero = struct.pack("ii", 1, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
        self.transport.abort()


class WebSocketProtocol(StreamProtocol):
    """One WebSocket: the 101 head, then the server's frames (unmasked, RFC 6455)."""
    __slots__ = ()
    PONG = b"\x8a\x80\x00\x00\x00\x00"  # an empty pong, masked (with a zero key) as a client must

    def feed(self, data):
        self.sse += data  # (the frames' buffer)
        while len(self.sse) >= 2:
            opcode, length, start = self.sse[0] & 0x0F, self.sse[1] & 0x7F, 2
            if length >= 126:
                start = 4 if length == 126 else 10
                if len(self.sse) < start:
                    return
                length = int.from_bytes(self.sse[2:start], "big")
            if len(self.sse) < start + length:
                return
            payload, self.sse = self.sse[start:start + length], self.sse[start + length:]
            if opcode == 1:  # text: one event (this bench's servers send no fragments)
                self.on_event(payload)
            elif opcode == 9:  # the server's ping
                self.transport.write(self.PONG)
            elif opcode == 8:  # close
                self.transport.close()
                return


async def open_stream(target, window, gate, deadline, kind=StreamProtocol):
    """Connect one stream, holding a place in the gate until its head arrives."""
    host, port, request = target
    loop = asyncio.get_running_loop()
    async with gate:
        connect = loop.create_connection(
            lambda: kind(request, window), host, port)
        _, proto = await asyncio.wait_for(connect, deadline - loop.time())
        try:
            await asyncio.wait_for(proto.head, deadline - loop.time())
        except BaseException:
            proto.abort()
            raise
        return proto


async def run_level(n, args, target):
    """Open n streams, measure for args.duration seconds, close them: one row."""
    loop, window, pid = asyncio.get_running_loop(), Window(), args.server_pid
    rss_base = server_usage(pid)[0] if pid else None
    gate, deadline = asyncio.Semaphore(args.ramp), loop.time() + RAMP_TIMEOUT
    kind, expected = (WebSocketProtocol, 101) if args.ws else (StreamProtocol, 200)
    tasks = [loop.create_task(open_stream(target, window, gate, deadline, kind))
             for _ in range(n)]
    await asyncio.wait(tasks, timeout=RAMP_TIMEOUT + 1)  # backstop; each has a deadline
    for t in tasks:
        t.cancel()  # no-op on the finished ones
    results = await asyncio.gather(*tasks, return_exceptions=True)
    protos = [r for r in results if isinstance(r, StreamProtocol)]
    errors = collections.Counter(type(r).__name__ for r in results
                                 if isinstance(r, BaseException))
    ok = [p for p in protos if p.status == expected]

    window.open = True  # the measurement window: only now do events count
    wall0, cli0 = time.monotonic(), time.process_time()
    srv0 = server_usage(pid)[1] if pid else None
    await asyncio.sleep(args.duration)
    rss_end, srv1 = server_usage(pid) if pid else (None, None)
    wall, cli = time.monotonic() - wall0, time.process_time() - cli0
    window.open = False
    held = sum(not p.closed for p in ok)
    for p in protos:
        if not p.closed:
            p.abort()

    lat = sorted(window.lateness_ms)
    return {
        "n": n, "held": held, "events": window.events,
        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else None,
        "kib_per_stream": (rss_end - rss_base) / n if pid else None,
        "server_rss_mib": rss_end / 1024 if pid else None,
        "server_cpu_pct": (srv1 - srv0) / wall * 100 if pid else None,
        "client_cpu_pct": cli / wall * 100,
        "connect_failed": n - len(protos), "non_200": len(protos) - len(ok),
        "closed_early": len(ok) - held, "connect_errors": dict(errors),
    }


def format_row(row):
    cells = [row[k] for k in ("n", "held", "events", "p50_ms", "p99_ms", "max_ms",
                              "kib_per_stream", "server_rss_mib", "server_cpu_pct",
                              "client_cpu_pct")]
    texts = ["-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)
             for v in cells]
    return "  ".join(t.rjust(width) for t, (_, width) in zip(texts, COLUMNS))


def parse_target(url, ws=False):
    """(host, port, request bytes) for an http:// URL; with ws, a WebSocket handshake."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        sys.exit(f"error: only http://host[:port]/path URLs are supported, not {url!r}")
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname if port == 80 else f"{parts.hostname}:{port}"
    if ws:  # the key may be the same for every client: only the server's answer depends on it
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    else:
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
                   "Cache-Control: no-cache\r\n\r\n").encode()
    return parts.hostname, port, request


async def bench(args, target, header):
    try:  # one probe first, so an unreachable URL gives one clear line
        _, writer = await asyncio.wait_for(asyncio.open_connection(*target[:2]), 5)
        writer.close()
    except (OSError, asyncio.TimeoutError) as exc:
        sys.exit(f"error: cannot reach {args.url}: {exc or 'timed out'}")
    print(f"# {'WebSockets' if args.ws else 'SSE streams'}: {args.url}  duration {args.duration:g} s  python "
          f"{header['python']}  {header['date']}  fd limit {header['fd_limit']}")
    print("  ".join(name.rjust(width) for name, width in COLUMNS), flush=True)
    rows = []
    for i, n in enumerate(args.n):
        if i:
            await asyncio.sleep(SETTLE)
        rows.append(row := await run_level(n, args, target))
        print(format_row(row), flush=True)
        if row["connect_failed"] or row["non_200"] or row["closed_early"]:
            why = ", ".join(f"{k} x{v}" for k, v in row["connect_errors"].items())
            print(f"{'^':>6}  {row['connect_failed']} failed to connect"
                  f"{why and f' ({why})'}, {row['non_200']} non-200, "
                  f"{row['closed_early']} closed early by the server", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="http://host:port/path of the SSE endpoint")
    parser.add_argument("-n", type=int, nargs="+", required=True, help="stream counts")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured")
    parser.add_argument("--server-pid", type=int, help="server or gunicorn master pid")
    parser.add_argument("--ramp", type=int, default=1000, help="connects in flight")
    parser.add_argument("--json", help="also write header and rows to this file")
    parser.add_argument("--ws", action="store_true", help="WebSockets instead of SSE streams")
    args = parser.parse_args()
    header = {"url": args.url, "duration_s": args.duration,
              "python": platform.python_version(),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "fd_limit": raise_fd_limit(), "server_pid": args.server_pid}
    rows = asyncio.run(bench(args, parse_target(args.url, args.ws), header))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
