#!/usr/bin/env python3
"""Fan-out in one run: N SSE streams of a 1 Hz broadcast on one worker, the kit's two
paths and the peers of other ecosystems, measured by the same C load client.

Usage:
    python bench/fanout.py [-n 1000 10000] [--duration 20] [--only direct plain ...]
                           [--sources 4] [--json FILE]

Servers, each fresh for each N (memory freed by one run is not reused by the next):
    direct      the kit, /compare/sse-direct (the ticker writes to every socket)
    plain       the kit, /compare/sse (the WSGI path)
    express     Node/Express, a Set of responses and one timer (needs node and
                bench/peers/express/node_modules)
    fastapi     FastAPI's own SSE (fastapi.sse) on uvicorn, a queue per listener
    starlette   sse-starlette on uvicorn, a queue per listener
    announcer   the Flask "MessageAnnouncer" pattern on gunicorn's gevent worker
The kit and the announcer run on this interpreter's install; the other Python peers
on bench/peers/.venv. Install the peers with `sh bench/peers/install.sh`; a peer
that is not installed is listed as skipped.

The client, bench/fanout_client.c, is compiled here with `cc` on first use (into
bench/.build/). It is C, one epoll loop, so it reads 10,000 events in a few ms and
reports its own CPU. Its connections spread over --sources loopback addresses
(127.0.0.1, .2, ...; one address has about 28,000 ephemeral ports), and N above
CLIENT_MAX is split over several client processes (a process may hold only as many
sockets as its file limit allows), whose windows open together.

Columns: held (streams open with a 200 at the end), events (in the window), p50/p99/
max lateness in ms (receipt time minus the payload's "ts"), KiB/stream ((server RSS
at the end of the window - RSS before the streams) / N), srv CPU % and cli CPU %
(100 = one core) over the window. Lateness includes the client's own reading, so a
busy client shows up there too: watch cli CPU.
"""
import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from relay import free_port  # noqa: E402  (bench/relay.py)
from streams import server_usage as usage  # noqa: E402  (bench/streams.py: RSS and CPU of the workers)

PEERS = ROOT / "bench" / "peers"
BUILD = ROOT / "bench" / ".build"
CLIENT_MAX = 18000  # streams per client process: below a common 20,000-file limit
SERVERS = ["direct", "plain", "express", "fastapi", "starlette", "announcer"]


def client_binary():
    source, binary = ROOT / "bench" / "fanout_client.c", BUILD / "fanout_client"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        BUILD.mkdir(exist_ok=True)
        compiler = shutil.which("cc") or shutil.which("gcc") or sys.exit("error: no C compiler (cc)")
        subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def server_command(name, port, streams):
    """(argv, env, path of the stream, cwd) for a server, or a reason it is skipped."""
    kit_env = {"COMPARE_RATE_HZ": "1", "WORKER_CONNECTIONS": str(streams + 1000),
               "WEB_CONCURRENCY": "1", "SEND_TIMEOUT": "30"}
    peer_python = PEERS / ".venv" / "bin" / "python"
    gunicorn = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    if name in ("direct", "plain"):
        path = "/compare/sse-direct" if name == "direct" else "/compare/sse"
        return gunicorn + ["-c", "gunicorn.conf.py"], kit_env, path, ROOT
    if name == "announcer":
        return (gunicorn + ["-k", "gevent", "--worker-connections", str(streams + 1000),
                            "--chdir", str(PEERS), "flask_announcer:app"], {}, "/events", ROOT)
    if name == "express":
        if not shutil.which("node"):
            return "node is not installed"
        if not (PEERS / "express" / "node_modules" / "express").exists():
            return "not installed (sh bench/peers/install.sh)"
        return ["node", "server.js", str(port)], {}, "/events", PEERS / "express"
    if not peer_python.exists():
        return "not installed (sh bench/peers/install.sh)"
    module = {"fastapi": "fastapi_sse:app", "starlette": "sse_starlette_app:app"}[name]
    return ([str(peer_python), "-m", "uvicorn", "--app-dir", str(PEERS), module, "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning", "--backlog", "4096"], {}, "/events", ROOT)


def wait_healthy(url, process, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.status == 200
        except OSError:
            time.sleep(0.2)
    return False


def stop(process):
    """Stop a server we started, by its pid."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(name, n, args, client):
    """Start one fresh server, hold n streams on it, measure, stop it: one row."""
    port = free_port()
    spec = server_command(name, port, n)
    if isinstance(spec, str):
        return {"server": name, "n": n, "skipped": spec}
    argv, env, path, cwd = spec
    log = open(BUILD / f"{name}-{n}.log", "wb")
    server = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    clients = []
    try:
        if not wait_healthy(f"http://127.0.0.1:{port}{'/compare/poll' if name in ('direct', 'plain') else '/healthz'}", server):
            return {"server": name, "n": n, "skipped": f"did not start (see {log.name})"}
        time.sleep(1)
        rss0 = usage(server.pid)[0]
        shares = [min(CLIENT_MAX, n - i) for i in range(0, n, CLIENT_MAX)]
        for share in shares:
            clients.append(subprocess.Popen(
                [str(client), "127.0.0.1", str(port), path, str(share), str(args.duration),
                 str(args.sources), str(max(1, args.ramp // len(shares)))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        connected = [c.stdout.readline().split() for c in clients]
        time.sleep(2)  # let the connection burst settle
        cpu0 = usage(server.pid)[1]
        started = time.monotonic()
        for c in clients:
            c.stdin.write("go\n")
            c.stdin.flush()
        results = [c.stdout.readline().split() for c in clients]
        hists = [c.stdout.readline().split()[1:] for c in clients]
        rss1, cpu1 = usage(server.pid)
        wall = time.monotonic() - started
    finally:
        for c in clients:
            try:
                c.stdin.close()
            except OSError:
                pass
            c.wait(timeout=60)
        stop(server)
        log.close()
    bins = {}
    for hist in hists:
        for pair in hist:
            b, count = map(int, pair.split(":"))
            bins[b] = bins.get(b, 0) + count
    total = sum(bins.values())

    def pct(p):
        rank, seen = max(1, -(-total * p // 100)), 0
        for b in sorted(bins):
            seen += bins[b]
            if seen >= rank:
                return b / 10
        return None

    return {"server": name, "n": n,
            "held": sum(int(r[1]) for r in results), "events": sum(int(r[2]) for r in results),
            "p50_ms": pct(50) if total else None, "p99_ms": pct(99) if total else None,
            "max_ms": max(bins) / 10 if total else None,
            "kib_per_stream": (rss1 - rss0) / n, "server_cpu_pct": (cpu1 - cpu0) / wall * 100,
            "client_cpu_pct": sum(float(r[6]) for r in results),
            "connect_seconds": max(float(c[4]) for c in connected),
            "failed": sum(int(c[2]) for c in connected), "non_200": sum(int(c[3]) for c in connected)}


def versions():
    def run(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            return None

    from importlib.metadata import version
    kit = {name: version(name) for name in ("flask", "werkzeug", "gunicorn", "gevent", "greenlet")}
    peer_python = PEERS / ".venv" / "bin" / "python"
    peers = {}
    if peer_python.exists():
        code = ("from importlib.metadata import version as v; import json; print(json.dumps("
                "{n: v(n) for n in ('fastapi', 'starlette', 'sse-starlette', 'uvicorn', 'uvloop', 'httptools')}))")
        peers = json.loads(run(str(peer_python), "-c", code) or "{}")
    express = PEERS / "express" / "node_modules" / "express" / "package.json"
    if express.exists():
        peers["express"] = json.loads(express.read_text())["version"]
    if shutil.which("node"):
        peers["node"] = run("node", "--version")
    return kit, peers


def machine():
    model = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    memory = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 2**20
    return (f"{os.cpu_count()} cores ({model.group(1) if model else platform.machine()}), {memory} GiB, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


COLUMNS = [("server", 10), ("N", 6), ("held", 6), ("events", 8), ("p50 ms", 7), ("p99 ms", 7),
           ("max ms", 7), ("KiB/stream", 10), ("srv CPU %", 9), ("cli CPU %", 9)]
KEYS = ["server", "n", "held", "events", "p50_ms", "p99_ms", "max_ms", "kib_per_stream",
        "server_cpu_pct", "client_cpu_pct"]


def row_text(row):
    if "skipped" in row:
        return f"{row['server']:>10}  {row['n']:>6}  skipped: {row['skipped']}"
    cells = ["-" if row[k] is None else f"{row[k]:.1f}" if isinstance(row[k], float) else str(row[k])
             for k in KEYS]
    text = "  ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS))
    if row["failed"] or row["non_200"]:
        text += f"   ({row['failed']} failed to connect, {row['non_200']} non-200)"
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, nargs="+", default=[1000, 10000], help="stream counts")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per row")
    parser.add_argument("--only", nargs="+", choices=SERVERS, default=SERVERS, help="servers to run")
    parser.add_argument("--sources", type=int, default=4, help="127.0.0.x source addresses")
    parser.add_argument("--ramp", type=int, default=1000, help="connections waiting for a head at once")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it
    if max(args.n) + 1000 > hard:
        print(f"# note: the file limit is {hard} (ulimit -Hn): one server cannot hold more streams than that")
    client = client_binary()
    kit, peers = versions()
    print(f"# fan-out, 1 Hz broadcast, one worker/process per server, {args.duration:g} s per row, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# machine: {machine()}")
    print("# kit: " + ", ".join(f"{k} {v}" for k, v in kit.items()))
    print("# peers: " + (", ".join(f"{k} {v}" for k, v in peers.items()) or "none installed"))
    print("  ".join(name.rjust(w) for name, w in COLUMNS), flush=True)
    rows = []
    for n in args.n:
        for name in args.only:
            rows.append(row := measure(name, n, args, client))
            print(row_text(row), flush=True)
        by = {r["server"]: r for r in rows if r["n"] == n and r.get("p99_ms")}
        if "direct" in by and "express" in by:
            print(f"# N={n}: direct p99 / Express p99 = {by['direct']['p99_ms'] / by['express']['p99_ms']:.2f}",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"kit": kit, "peers": peers, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
