#!/usr/bin/env python3
"""Hostile clients against the kit: do the deadlines let go of them, and do the others notice?

Usage:
    python bench/hostile.py [--silent 200] [--trickle 50] [--slowloris 50] [--readers 20]
                            [--duration 40] [--send-timeout 5] [--body-timeout 5]
                            [--every 2] [--rate 50] [--compare-rate 1] [--no-nginx]

Starts, on loopback, all stopped by PID at the end (also on Ctrl-C or an error):
  - the kit: `gunicorn -c gunicorn.conf.py`, one gevent worker, with SEND_TIMEOUT and
    BODY_TIMEOUT from the options (small, so a run takes about a minute) and
    COMPARE_RATE_HZ from --compare-rate (the kit's 1 Hz by default);
  - nginx with deploy/nginx.conf (only its two ports changed) in front of it, if nginx
    is installed (--no-nginx skips it): the slowloris clients go there, since a request
    head that never finishes is the proxy's to stop (streamkit/guards.py).
Then opens, all at once, bounded in count and in time:
  silent     streams that are never read: a socket with SO_RCVBUF 4096 sends its GET
             and never calls recv(), the laptop whose lid closed; spread over
             /basic/heartbeat?interval=0.05, /counter/stream?count=1000&interval=0.05,
             /compare/sse and /broadcast/stream?channel=hostile
  trickle    POSTs to /relay/chat whose body (Content-Length 2000) trickles in at
             about 10 bytes/s
  slowloris  connections to nginx that send a request head one header line every
             3 s and never finish it (only with nginx)
  readers    well-behaved streams of /broadcast/stream?channel=hostile
while it publishes 4 KB messages to the channel `hostile` at --rate a second (so the
silent broadcast subscribers' buffers fill) over one keep-alive connection.

Every --every s it prints a row:
  s            seconds since the hostile clients were opened
  gunicorn     ESTABLISHED TCP connections to gunicorn's port (/proc/net/tcp): every
               client's, readers' and the publisher's included
  nginx        the same for nginx's port
  TCP MiB      the kernel's TCP memory, all sockets (/proc/net/sockstat "mem", pages)
  orphans      TCP sockets no process holds any more (/proc/net/sockstat), e.g. a cut
               stream whose unread bytes the kernel still tries to deliver
  silent       silent clients still held. The client cannot see the server let go: the
               FIN waits behind the bytes it never reads. So a silent client is held
               while its socket is open on both ends: no error or EOF on a peek
               (recv MSG_PEEK, non-blocking) and the server's end of that very
               connection still ESTABLISHED in /proc/net/tcp
  trickle      trickling POSTs still open: the client saw neither EOF nor an error
  slowloris    slowloris connections still open, the same way
  p99 ms       readers' lateness (receipt time - the payload's ts) over the row's interval
  events       events the readers received in that interval
  cli CPU %    this script's CPU over the interval (100 = one core)
At the end: for each kind of hostile client, when they were released (median and max
seconds after they were opened; silent ones as seen at each row, so to within --every)
and how many got which answer; for silent clients still held, how many bytes their
kernel holds unread (FIONREAD): a client with room left still acknowledges, so it is
not stuck yet.
Linux only (/proc). Every target is 127.0.0.1.
"""
import argparse
import asyncio
import datetime
import errno
import fcntl
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SILENT_PATHS = ["/basic/heartbeat?interval=0.05", "/counter/stream?count=1000&interval=0.05",
                "/compare/sse", "/broadcast/stream?channel=hostile"]
TS = re.compile(rb'"ts": ?([0-9]+(?:\.[0-9]+)?)')
MESSAGE = "x" * 4000  # 4 KB; the demo accepts at most 4096 bytes
TRICKLE_LENGTH, TRICKLE_BYTES, TRICKLE_EVERY = 2000, 5, 0.5  # 10 bytes/s, never done within a run
SLOWLORIS_EVERY = 3.0
CONNECT_TIMEOUT = 10.0
COLUMNS = [("s", 5), ("gunicorn", 8), ("nginx", 6), ("TCP MiB", 7), ("orphans", 7), ("silent", 6),
           ("trickle", 7), ("slowloris", 9), ("p99 ms", 7), ("events", 7), ("cli CPU %", 9)]


# --- servers ------------------------------------------------------------------------------

def free_port():
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_for(port, process, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited ({process.returncode}) before listening on {port}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def start_gunicorn(port, args, log):
    env = {**os.environ, "SEND_TIMEOUT": str(args.send_timeout), "BODY_TIMEOUT": str(args.body_timeout),
           "WEB_CONCURRENCY": "1", "BIND": f"{HOST}:{port}", "COMPARE_RATE_HZ": str(args.compare_rate)}
    for name in ("UPSTREAM_BASE_URL", "UPSTREAM_API_KEY", "REDIS_URL", "BROADCAST_TOKEN"):
        env.pop(name, None)  # the fake LLM, the memory broker, open publishing
    return subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def start_nginx(port, upstream, log):
    """deploy/nginx.conf as it is, with its two ports changed, in a temp prefix."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    for pattern, new in [(r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{upstream};"),
                         (r"listen 127\.0\.0\.1:8080;", f"listen 127.0.0.1:{port};")]:
        text, found = re.subn(pattern, new, text)
        if found != 1:
            raise RuntimeError(f"deploy/nginx.conf should have exactly one {pattern!r}")
    prefix = Path(tempfile.mkdtemp(prefix="bench-hostile-nginx-"))
    (prefix / "nginx.conf").write_text(text)
    process = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(prefix),
                                "-c", str(prefix / "nginx.conf"), "-e", "stderr", "-g", "daemon off;"],
                               stdout=log, stderr=subprocess.STDOUT)
    process.prefix = prefix
    return process


def stop(process):
    """By its PID: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)
    if getattr(process, "prefix", None):
        shutil.rmtree(process.prefix, ignore_errors=True)


# --- what the kernel says -------------------------------------------------------------------

def server_ends(port):
    """{client port: TCP state (hex)} of the connections whose local end is `port`."""
    ends = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, remote, state = fields[1], fields[2], fields[3]
                    if int(local.rsplit(":", 1)[1], 16) == port:
                        ends[int(remote.rsplit(":", 1)[1], 16)] = state
        except OSError:
            pass
    return ends


def sockstat():
    """(kernel TCP memory in MiB, orphaned TCP sockets) from /proc/net/sockstat."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                values = dict(zip(fields[1::2], fields[2::2]))
                return int(values["mem"]) * os.sysconf("SC_PAGE_SIZE") / 2**20, int(values["orphan"])
    return None, None


# --- the clients ----------------------------------------------------------------------------

class Raw:
    """One hostile connection: a plain non-blocking socket and what became of it."""

    def __init__(self, kind, detail):
        self.kind, self.detail, self.sock, self.opened = kind, detail, None, None
        self.released, self.answer, self.port = None, "", None

    async def connect(self, port, rcvbuf=None):
        self.sock = socket.socket()
        if rcvbuf:  # before connect: the window is agreed in the handshake
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(self.sock, (HOST, port)), CONNECT_TIMEOUT)
        self.port, self.opened = self.sock.getsockname()[1], time.monotonic()

    def send(self, data):
        """Non-blocking; False once the server has closed (or reset) the connection."""
        try:
            self.sock.send(data)
            return True
        except BlockingIOError:
            return True
        except OSError:
            self.release("error on send")
            return False

    def peek(self, read=False):
        """Has the server closed the connection? A peek (or, with read, a read) tells."""
        if self.released is not None:
            return
        try:
            data = self.sock.recv(65536 if read else 1, 0 if read else socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError as error:
            self.release(errno.errorcode.get(error.errno, "error"))
            return
        if not data:
            self.release("EOF")
        elif read and not self.answer:
            self.answer = data.split(b"\r\n", 1)[0].decode("latin-1")[9:12]  # "HTTP/1.1 408 ..."

    def release(self, why):
        if self.released is None:
            self.released = time.monotonic()
            self.answer = f"{self.answer} {why}".strip()

    def close(self):
        if self.sock is not None:
            try:  # RST, not FIN: no TIME_WAIT piles up
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            self.sock.close()


class Readers:
    """Well-behaved subscribers: lateness of each event, receipt - payload ts."""

    def __init__(self):
        self.lateness, self.writers, self.closed = [], [], 0

    async def read(self, port, path, until):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), CONNECT_TIMEOUT)
        self.writers.append(writer)
        # HTTP/1.0: the body ends when the connection does, no chunk framing to strip.
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n\r\n".encode())
        buffer = b""
        while time.monotonic() < until:
            data = await reader.read(65536)
            if not data:
                self.closed += 1
                return
            now = time.time()
            buffer += data
            *frames, buffer = buffer.split(b"\n\n")
            for frame in frames:
                match = TS.search(frame)
                if match and frame.startswith((b"id:", b"data:")):
                    self.lateness.append((now - float(match[1])) * 1000)


async def publisher(port, rate, until, counts):
    """4 KB messages to the channel `hostile`, `rate` a second, one keep-alive connection."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), CONNECT_TIMEOUT)
    body = ('{"channel": "hostile", "message": "%s"}' % MESSAGE).encode()
    request = (f"POST /broadcast/publish HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    start = time.monotonic()
    try:
        while time.monotonic() < until:
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
            await reader.readexactly(length)
            counts[head[9:12].decode()] = counts.get(head[9:12].decode(), 0) + 1
            counts["n"] = counts.get("n", 0) + 1
            await asyncio.sleep(max(0.0, start + counts["n"] / rate - time.monotonic()))
    finally:
        writer.close()


async def trickle(client, until):
    """Send the body 5 bytes every 0.5 s; read what comes back; stop when the server closes."""
    head = (f"POST /relay/chat HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {TRICKLE_LENGTH}\r\n\r\n").encode()
    client.send(head + b'{"messages": [')
    sent = 0
    while client.released is None and time.monotonic() < until:
        await asyncio.sleep(TRICKLE_EVERY)
        client.peek(read=True)
        if client.released is None and sent < TRICKLE_LENGTH - 100:
            client.send(b" " * TRICKLE_BYTES)
            sent += TRICKLE_BYTES


async def slowloris(client, until):
    """A request head, one header line every few seconds, never finished."""
    client.send(f"GET /basic/ HTTP/1.1\r\nHost: {HOST}\r\n".encode())
    line = 0
    while client.released is None and time.monotonic() < until:
        await asyncio.sleep(SLOWLORIS_EVERY)
        client.peek(read=True)
        line += 1
        if client.released is None:
            client.send(f"X-Slow-{line}: {line}\r\n".encode())


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[max(1, -(-len(values) * p // 100)) - 1]


def summary(kind, clients):
    if not clients:
        return None
    times = [c.released - c.opened for c in clients if c.released is not None]
    answers = {}
    for c in clients:
        answers[c.answer or "held"] = answers.get(c.answer or "held", 0) + 1
    told = ", ".join(f"{n} {a}" for a, n in sorted(answers.items(), key=lambda kv: -kv[1]))
    when = (f"median {statistics.median(times):.1f} s, max {max(times):.1f} s" if times else "none")
    held = [unread(c.sock) for c in clients if c.released is None and c.kind == "silent"]
    if held:  # a client whose kernel still has room acknowledges: not stuck yet
        told += f" (its kernel has {statistics.median(held):.0f} bytes unread, median)"
    return f"#   {kind:<48} {len(times)}/{len(clients)} released ({when}): {told}"


def unread(sock):
    """Bytes waiting in the client's receive queue (FIONREAD): how full its buffer is."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


async def run(args, ports):
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    until = start + args.duration
    silent = [Raw("silent", SILENT_PATHS[i % len(SILENT_PATHS)]) for i in range(args.silent)]
    trickles = [Raw("trickle", "/relay/chat") for _ in range(args.trickle)]
    lorises = [Raw("slowloris", "nginx") for _ in range(args.slowloris if ports.get("nginx") else 0)]
    readers, published, tasks = Readers(), {}, []
    try:
        for path in (["/broadcast/stream?channel=hostile"] * args.readers):
            tasks.append(loop.create_task(readers.read(ports["gunicorn"], path, until)))
        await asyncio.sleep(0.5)  # the readers subscribed before the first message
        tasks.append(loop.create_task(publisher(ports["gunicorn"], args.rate, until, published)))
        for client in silent:
            await client.connect(ports["gunicorn"], rcvbuf=4096)
            client.send(f"GET {client.detail} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n\r\n".encode())
        for client in trickles:
            await client.connect(ports["gunicorn"])
            tasks.append(loop.create_task(trickle(client, until)))
        for client in lorises:
            await client.connect(ports["nginx"])
            tasks.append(loop.create_task(slowloris(client, until)))
        print("  ".join(name.rjust(width) for name, width in COLUMNS), flush=True)
        wall0, cpu0, seen, rows = time.monotonic(), time.process_time(), 0, 0
        while (now := time.monotonic()) < until and rows < 10_000:
            await asyncio.sleep(min(args.every, until - now))
            rows += 1
            ends = server_ends(ports["gunicorn"])
            for client in silent:
                client.peek()
                if client.released is None and ends.get(client.port) != "01":
                    client.release(f"server end {STATES.get(ends.get(client.port), 'gone')}")
            for client in trickles + lorises:
                client.peek(read=True)
            nginx_ends = server_ends(ports["nginx"]) if ports.get("nginx") else {}
            mem, orphans = sockstat()
            late, events = readers.lateness[seen:], len(readers.lateness) - seen
            seen = len(readers.lateness)
            wall1, cpu1 = time.monotonic(), time.process_time()
            cells = [time.monotonic() - start, sum(s == "01" for s in ends.values()),
                     sum(s == "01" for s in nginx_ends.values()) if ports.get("nginx") else None,
                     mem, orphans, sum(c.released is None for c in silent),
                     sum(c.released is None for c in trickles),
                     sum(c.released is None for c in lorises) if lorises else None,
                     percentile(late, 99), events, (cpu1 - cpu0) / (wall1 - wall0) * 100]
            wall0, cpu0 = wall1, cpu1
            texts = ["-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v) for v in cells]
            print("  ".join(t.rjust(width) for t, (_, width) in zip(texts, COLUMNS)), flush=True)
        print(f"# readers: {len(readers.lateness)} events, p50 {fmt(percentile(readers.lateness, 50))}"
              f" / p99 {fmt(percentile(readers.lateness, 99))} / max {fmt(max(readers.lateness, default=None))} ms,"
              f" {readers.closed} closed by the server; published {published.get('n', 0)}"
              f" ({', '.join(f'{n} x {k}' for k, n in published.items() if k != 'n')})")
        for path in SILENT_PATHS:
            line = summary(f"silent {path}", [c for c in silent if c.detail == path])
            if line:
                print(line)
        for kind, clients in [("trickle POST /relay/chat", trickles), ("slowloris to nginx", lorises)]:
            if line := summary(kind, clients):
                print(line)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in silent + trickles + lorises:
            client.close()
        for writer in readers.writers:
            writer.close()


STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
          "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def fmt(value):
    return "-" if value is None else f"{value:.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--silent", type=int, default=200, help="streams never read")
    parser.add_argument("--trickle", type=int, default=50, help="POSTs whose body trickles in")
    parser.add_argument("--slowloris", type=int, default=50, help="request heads never finished (nginx)")
    parser.add_argument("--readers", type=int, default=20, help="well-behaved broadcast subscribers")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds the clients are held")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between rows")
    parser.add_argument("--rate", type=float, default=50.0, help="4 KB messages published a second")
    parser.add_argument("--send-timeout", type=float, default=5.0, help="the kit's SEND_TIMEOUT (1-600)")
    parser.add_argument("--body-timeout", type=float, default=5.0, help="the kit's BODY_TIMEOUT (1-600)")
    parser.add_argument("--compare-rate", type=float, default=1.0,
                        help="the kit's COMPARE_RATE_HZ (0.01-100): how fast /compare/sse fills a buffer")
    parser.add_argument("--no-nginx", action="store_true", help="no nginx, no slowloris clients")
    args = parser.parse_args()
    limits = [("--silent", args.silent, 0, 5000), ("--trickle", args.trickle, 0, 1000),
              ("--slowloris", args.slowloris, 0, 400), ("--readers", args.readers, 0, 500),
              ("--duration", args.duration, 1, 600), ("--every", args.every, 0.2, 60),
              ("--rate", args.rate, 0.1, 1000), ("--compare-rate", args.compare_rate, 0.01, 100)]
    for name, value, low, high in limits:
        if not low <= value <= high:
            parser.error(f"{name} must be from {low} to {high}")
    nginx = not args.no_nginx and (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"))
    if not args.no_nginx and not nginx:
        print("# nginx is not installed: no slowloris clients", flush=True)
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    ports = {"gunicorn": free_port(), "nginx": free_port() if nginx else None}
    servers = []
    log = tempfile.TemporaryFile()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below runs
    try:
        servers.append(start_gunicorn(ports["gunicorn"], args, log))
        if nginx:
            servers.append(start_nginx(ports["nginx"], ports["gunicorn"], log))
        for server, port in zip(servers, [ports["gunicorn"], ports["nginx"]]):
            wait_for(port, server)
        time.sleep(1)  # let the worker finish booting
        print(f"# hostile clients: {args.silent} silent, {args.trickle} trickle, "
              f"{args.slowloris if nginx else 0} slowloris{' (nginx)' if nginx else ''}, {args.readers} readers;"
              f" SEND_TIMEOUT {args.send_timeout:g} s, BODY_TIMEOUT {args.body_timeout:g} s;"
              f" {args.rate:g} x 4 KB/s published; {datetime.datetime.now().isoformat(timespec='seconds')}",
              flush=True)
        asyncio.run(run(args, ports))
        return 0
    except KeyboardInterrupt:
        print("# interrupted", file=sys.stderr)
        return 130
    except Exception:
        log.seek(0)
        sys.stderr.write(log.read()[-4000:].decode("utf-8", "replace"))
        raise
    finally:
        for server in reversed(servers):
            stop(server)
        log.close()


if __name__ == "__main__":
    sys.exit(main())
