#!/usr/bin/env python3
"""What the relay adds: the same stamped upstream read directly and through the relay.

Usage:
    python bench/relay.py [--paced RATE N]... [--burst N] (0 skips a scenario)
                          [--streams 1000] [--rate 20] [--duration 20] [--workers 1] [--pin]
                          [--no-simple] [--no-naive] [--no-nginx] [--json FILE]

Starts these servers on loopback, all stopped at the end:
  - an upstream (this script with --serve-upstream, a separate process): the
    OpenAI streaming format, each event's content the unix time it was written;
  - the relay: `gunicorn -c gunicorn.conf.py`, one gevent worker, with
    UPSTREAM_BASE_URL pointing at that upstream;
  - two yardsticks, in the paced and concurrent scenarios: a naive relay
    (create_naive_app below) under the same gunicorn settings (--no-naive skips
    it), and nginx as a pure proxy, if it is installed (--no-nginx skips it).
Then, for each scenario, reads the upstream directly, then through the
production relay /relay/chat ("relay"), the simple relay /relay/simple on the
same server ("simple"; --no-simple skips it) and the yardsticks, and prints one
row per path:
    paced       one stream, RATE events/s, N events: lateness per event; by
                default three rates, 50, 200 and 1,000 events/s (an LLM writes
                20 to 100 tokens a second), each repeatable as --paced RATE N
    burst       one stream, N events written as fast as the socket takes them:
                events/s received (the relay parses every event fully)
    concurrent  STREAMS streams at --rate events/s for --duration s each, opened
                together: how many completed, and lateness
Columns: streams completed, ramp s (until the last stream's response head
came), window s (the steady state: from then until the first stream's last
event, all streams open), events received, events/s, lateness (receipt - stamp)
p50/p99/max in ms over the events stamped in that window, and CPU %
(100 = one core) of this client, the relay (gunicorn master + worker) and the
upstream over the scenario. An `added` row is that relay minus direct.
The client is plain asyncio over raw HTTP/1.0 in one process; its CPU column
says whether it, not the relay, was the bottleneck. On a small machine the
three share the cores; --pin (Linux) gives the relays cores of their own.
"""
import argparse
import asyncio
import heapq
import json
import os
import re
import resource
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Both servers write one-line `data: {json}` events ending in a blank line, so the
# client finds every stamp of the whole events in a read with one bytes regex: it
# costs a few µs per event, and the client must stay cheaper than what it measures.
STAMP = re.compile(rb'"content": ?"(\d+\.\d+)"')
# An LLM writes 20 to 100 tokens a second: the slower the stream, the colder each event runs.
DEFAULT_PACED = [(50, 250), (200, 1000), (1000, 5000)]
FRAME = b'data: {"choices":[{"index":0,"delta":{"content":"%.6f"},"finish_reason":null}]}\n\n'
END = (b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
       b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":%d}}\n\ndata: [DONE]\n\n')


# --- the stamped upstream (a separate process) ------------------------------------------

class Upstream:
    """Paced streams share one timer heap, so 1,000 streams at 20/s cost 20,000
    writes a second and no more; burst streams write batches as fast as TCP takes them."""

    def __init__(self):
        self.due, self.seq, self.wake = [], 0, asyncio.Event()

    async def handle(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
        body = json.loads(await reader.readexactly(length))
        plan = json.loads(body["messages"][-1]["content"])
        chunked = b"HTTP/1.1" in head.split(b"\r\n", 1)[0]
        # Like a real provider, no "Connection: close" on HTTP/1.1 (it closes after the body anyway).
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     + (b"Transfer-Encoding: chunked\r\n" if chunked else b"Connection: close\r\n") + b"\r\n")
        stream = {"writer": writer, "chunked": chunked, "left": plan["events"], "done": asyncio.Event()}
        if plan["rate"]:
            stream["period"] = 1 / plan["rate"]
            self.schedule(time.time(), stream)
            await stream["done"].wait()
        else:
            await self.burst(stream, plan.get("batch", 100))
        self.send(stream, END % plan["events"])
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    def send(self, stream, data):
        if stream["chunked"]:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        stream["writer"].write(data)

    def schedule(self, when, stream):
        self.seq += 1
        heapq.heappush(self.due, (when, self.seq, stream))
        self.wake.set()

    async def ticker(self):
        while True:
            now = time.time()
            while self.due and self.due[0][0] <= now:
                when, _, stream = heapq.heappop(self.due)
                self.send(stream, FRAME % time.time())
                stream["left"] -= 1
                if stream["left"]:
                    self.schedule(when + stream["period"], stream)
                else:
                    stream["done"].set()
            self.wake.clear()
            timeout = self.due[0][0] - time.time() if self.due else None
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def burst(self, stream, batch):
        left = stream["left"]
        while left:
            count = min(batch, left)
            self.send(stream, FRAME % time.time() * count)
            left -= count
            await stream["writer"].drain()


async def serve_upstream(port):
    upstream = Upstream()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await asyncio.gather(server.serve_forever(), upstream.ticker())


# --- the yardstick: a naive relay ---------------------------------------------------------

def create_naive_app():
    """SPEC's "naive Flask relay", for calibration: upstream lines out as they come,
    nothing parsed, no heartbeat, no disconnect handling. Served by the same gunicorn
    settings as the kit (`relay:create_naive_app()`), it shows what a relay costs
    on this machine before the kit's work (full parsing, errors, pings) is added."""
    import requests
    from flask import Flask, Response, request
    app = Flask("naive")

    @app.post("/relay/chat")
    def chat():
        body = {"model": "bench", "stream": True, "messages": request.json["messages"]}
        upstream = requests.post(os.environ["UPSTREAM_BASE_URL"] + "/chat/completions", json=body, stream=True)

        def lines():
            with upstream:
                for line in upstream.iter_lines():
                    if line:
                        yield line + b"\n\n"
        return Response(lines(), mimetype="text/event-stream")
    return app


# --- the client ---------------------------------------------------------------------------

class StreamReader(asyncio.Protocol):
    """One stream, read with callbacks (no task or future per read: the client must
    cost less than what it measures). POSTs over HTTP/1.0, so the body ends when the
    server closes; appends (stamp, lateness in s) of each event to `late`, the time
    the response head came to `opened` and the stamp of the stream's last event to
    `last`. `done` gets the number of events with a stamp."""

    def __init__(self, request, late, opened, last, keep_stamps):
        self.request, self.late, self.opened, self.last, self.keep_stamps = request, late, opened, last, keep_stamps
        self.done = asyncio.get_running_loop().create_future()
        self.head, self.partial, self.count, self.newest = None, b"", 0, None

    def connection_made(self, transport):
        transport.write(self.request)

    def data_received(self, data):
        now = time.time()
        if self.head is None:  # still reading the response head
            data, self.partial = self.partial + data, b""
            if (end := data.find(b"\r\n\r\n")) < 0:
                self.partial = data
                return
            self.head, data = data[:end], data[end + 4:]
            self.opened.append(now)
        if not self.head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
            self.partial += data  # the error body, shown when the server closes
        elif not self.keep_stamps:  # burst: count events cheaply, so the client keeps up
            self.count += data.count(b"\n\n")
        else:
            pending = self.partial + data
            end = pending.rfind(b"\n\n") + 2  # after the last whole event; 1 if none ended
            if end == 1:
                self.partial = pending
                return
            self.partial = pending[end:]
            for stamp in STAMP.findall(pending, 0, end):
                self.newest = float(stamp)
                self.late.append((self.newest, now - self.newest))
                self.count += 1

    def connection_lost(self, error):
        if error or not (self.head or b"").startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
            said = (self.head or b"") + b"\n" + self.partial[:500]
            self.done.set_exception(error or RuntimeError(said.decode(errors="replace")))
            return
        if self.newest:
            self.last.append(self.newest)
        self.done.set_result(self.count)


async def read_stream(port, path, body, late, opened, last, keep_stamps=True):
    data = json.dumps(body).encode()
    request = (b"POST %s HTTP/1.0\r\nHost: bench\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
    loop = asyncio.get_running_loop()
    _, reader = await loop.create_connection(lambda: StreamReader(request, late, opened, last, keep_stamps),
                                             "127.0.0.1", port)
    return await reader.done


def request_for(path, plan):
    content = json.dumps(plan)
    if path == "direct":
        return "/v1/chat/completions", {"model": "bench", "stream": True,
                                        "messages": [{"role": "user", "content": content}]}
    return "/relay/simple" if path == "simple" else "/relay/chat", {"messages": [{"role": "user", "content": content}]}


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000 if ordered else float("nan")


def cpu_seconds(pid):
    """User + system CPU of a process and its children (a gunicorn master's worker)."""
    total = 0.0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for each in pids:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def scenario(ports, pids, path, plan, streams=1, keep_stamps=True):
    port = ports["upstream" if path == "direct" else "relay" if path == "simple" else path]
    url, body = request_for(path, plan)
    late, opened, last = [], [], []
    # One relay column: the server that relayed this row (the kit's, or a yardstick).
    watched = {"relay CPU": pids.get(path, pids["relay"]), "upstream CPU": pids["upstream"]}  # simple: the kit's
    cpu = {column: cpu_seconds(pid) for column, pid in watched.items()}
    client_cpu = resource.getrusage(resource.RUSAGE_SELF)
    started, started_at = time.monotonic(), time.time()
    results = await asyncio.gather(*(read_stream(port, url, body, late, opened, last, keep_stamps)
                                     for _ in range(streams)), return_exceptions=True)
    wall = time.monotonic() - started
    used = resource.getrusage(resource.RUSAGE_SELF)
    counts = [r for r in results if isinstance(r, int)]
    errors = [r for r in results if not isinstance(r, int)]
    # Steady state: lateness counts only while every stream is open, from the
    # last response head to the first stream's last event.
    all_open, first_done = max(opened, default=started_at), min(last, default=float("inf"))
    late = [lateness for stamp, lateness in late if all_open <= stamp <= first_done]
    row = {"path": path, "rate": plan["rate"], "events": sum(counts), "events/s": sum(counts) / wall,
           "completed": sum(c == plan["events"] or not keep_stamps for c in counts), "streams": streams,
           "ramp s": all_open - started_at, "measured": len(late), "window s": first_done - all_open if last else "",
           "p50": percentile(late, 50), "p99": percentile(late, 99), "max": max(late, default=0) * 1000,
           "cli CPU": (used.ru_utime + used.ru_stime - client_cpu.ru_utime - client_cpu.ru_stime) / wall * 100,
           "errors": [repr(e)[:200] for e in errors[:3]]}
    for column, pid in watched.items():
        row[column] = (cpu_seconds(pid) - cpu[column]) / wall * 100
    return row


# --- running it all -----------------------------------------------------------------------

def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def pinned_to(cores):
    """Run a child on these cores only (None: anywhere)."""
    return None if cores is None else lambda: os.sched_setaffinity(0, cores)


NGINX_CONF = """# nginx as a pure proxy in front of the bench's upstream: the cost of one
# more hop through a fast C proxy, set up for streaming as deploy/nginx.conf is.
worker_processes 1;
pid nginx.pid;
events { worker_connections 4096; }  # two per stream
http {
    access_log off;
    client_body_temp_path client_body_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;
    server {
        listen 127.0.0.1:%(port)d;
        location / {
            proxy_pass http://127.0.0.1:%(upstream)d;
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_read_timeout 120s;
        }
    }
}
"""


def start_nginx(ports, log, preexec):
    """nginx (not a Python server), as a pure proxy: what one more hop costs here."""
    prefix = Path(tempfile.mkdtemp(prefix="bench-relay-nginx-"))
    (prefix / "nginx.conf").write_text(NGINX_CONF % {"port": ports["nginx"], "upstream": ports["upstream"]})
    process = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr",
                                "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec)
    process.prefix = prefix  # removed when it stops
    return process


def start_servers(log, workers, naive, nginx, pin):
    ports = {"upstream": free_port(), "relay": free_port(), "naive": free_port(), "nginx": free_port()}
    # --pin: the relays get the last `workers` cores, the load (upstream, client) the rest,
    # as on a real deployment, where the LLM and the browsers are not on the relay's cores.
    relay_cores = load_cores = None
    if pin:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) <= workers:
            raise SystemExit(f"--pin needs more cores than --workers: this machine lets us use {len(cores)}")
        relay_cores, load_cores = set(cores[-workers:]), set(cores[:-workers])
        os.sched_setaffinity(0, load_cores)
    upstream = subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(ports["upstream"])],
                                stdout=log, stderr=subprocess.STDOUT, preexec_fn=pinned_to(load_cores))
    env = {**os.environ, "UPSTREAM_BASE_URL": f"http://127.0.0.1:{ports['upstream']}/v1",
           "UPSTREAM_MODEL": "bench", "UPSTREAM_TIMEOUT": "60", "WEB_CONCURRENCY": str(workers)}
    env.pop("UPSTREAM_API_KEY", None)
    servers = {"upstream": upstream}
    for name, app in [("relay", []), ("naive", ["--pythonpath", "bench", "relay:create_naive_app()"])][:1 + naive]:
        servers[name] = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                                          "--bind", f"127.0.0.1:{ports[name]}", *app], cwd=ROOT, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, preexec_fn=pinned_to(relay_cores))
    if nginx:
        servers["nginx"] = start_nginx(ports, log, pinned_to(relay_cores))
    for name in servers:
        wait_for(ports[name])
    time.sleep(1)  # let the workers finish booting
    return ports, servers


def show(title, rows):
    print(f"\n{title}")
    columns = ["path", "completed", "ramp s", "window s", "events", "events/s", "p50", "p99", "max",
               "cli CPU", "relay CPU", "upstream CPU"]
    print("  ".join(f"{c:>12}" for c in columns))
    for row in rows:
        print("  ".join(f"{row.get(c, ''):>12.2f}" if isinstance(row.get(c), float) else f"{str(row.get(c, '')):>12}"
                        for c in columns))
        for error in row.get("errors", []):
            print(f"    error: {error}")
    for row in rows[1:]:  # what each relay adds over reading the upstream directly
        print(f"{row['path'] + ' added':>12}  " + "  ".join(f"{'':>12}" for _ in range(columns.index("p50") - 1))
              + "  " + "  ".join(f"{row[c] - rows[0][c]:>+12.2f}" for c in ("p50", "p99", "max")))


async def run(args, ports, pids):
    paths = ["direct", "relay"] + ["simple"] * args.simple + ["naive"] * args.naive + ["nginx"] * args.nginx
    for path in paths:  # warm up every path before measuring
        await scenario(ports, pids, path, {"rate": 100, "events": 20}, streams=2)
    report = {}
    for rate, count in args.paced:
        plan = {"rate": rate, "events": int(count)}
        rows = [await scenario(ports, pids, path, plan) for path in paths]
        report.setdefault("paced", []).extend(rows)
        show(f"paced: one stream, {rate:g} events/s, {int(count)} events (lateness in ms)", rows)
    if args.burst:
        plan = {"rate": 0, "events": args.burst, "batch": 100}
        report["burst"] = [await scenario(ports, pids, path, plan, keep_stamps=False)
                           for path in ("direct", "relay") + ("simple",) * args.simple]
        show(f"burst: one stream, {args.burst} events as fast as they go (events/s)", report["burst"])
    if args.streams:
        plan = {"rate": args.rate, "events": int(args.rate * args.duration)}
        report["concurrent"] = [await scenario(ports, pids, path, plan, streams=args.streams) for path in paths]
        show(f"concurrent: {args.streams} streams x {args.rate:g} events/s x {args.duration:g} s",
             report["concurrent"])
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paced", nargs=2, type=float, metavar=("RATE", "N"), action="append",
                        help="one paced stream (repeatable; default: 50 250, 200 1000 and 1000 5000)")
    parser.add_argument("--burst", type=int, default=200_000, metavar="N")
    parser.add_argument("--streams", type=int, default=1000, help="0 skips the concurrent scenario")
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--duration", type=float, default=20, help="s per stream: longer than the ramp")
    parser.add_argument("--workers", type=int, default=1, help="gevent workers for the relay")
    parser.add_argument("--pin", action="store_true",
                        help="Linux: the relays on cores of their own, the upstream and this client on the rest")
    parser.add_argument("--no-simple", dest="simple", action="store_false",
                        help="skip the kit's simple relay (/relay/simple, on the same server)")
    parser.add_argument("--no-naive", dest="naive", action="store_false",
                        help="skip the yardstick: a naive relay (lines in, lines out)")
    parser.add_argument("--no-nginx", dest="nginx", action="store_false",
                        help="skip the other yardstick: nginx as a pure proxy (skipped if not installed)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        return asyncio.run(serve_upstream(args.serve_upstream))
    args.paced = [(rate, count) for rate, count in args.paced or DEFAULT_PACED if rate and count]
    args.nginx = args.nginx and shutil.which("nginx") is not None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-relay-{os.getpid()}.log"
    with open(log_path, "wb") as log:
        ports, processes = start_servers(log, args.workers, args.naive, args.nginx, args.pin)
        try:
            pids = {name: process.pid for name, process in processes.items()}
            report = asyncio.run(run(args, ports, pids))
        finally:
            for process in processes.values():
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=15)
                if hasattr(process, "prefix"):
                    shutil.rmtree(process.prefix, ignore_errors=True)
    print(f"\n(server logs: {log_path})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
