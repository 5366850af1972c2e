#!/usr/bin/env python3
"""The wrong worker, in numbers: gunicorn's sync worker next to its gevent worker.

Usage:
    python bench/workers.py [RUN ...] [--timeout 3] [--stream 1] [--long 6] [--json FILE]

Each RUN is a worker class, optionally with its own timeout: `sync`, `sync:60`,
`gevent`, `gthread`. The default, `sync sync:60 gevent`, shows the trap, the
"fix" people reach for first (a bigger --timeout), and the real fix.

For each run: start `gunicorn -c gunicorn.conf.py -k CLASS --workers 1
--timeout T` on a free loopback port (the kit's own config, only the worker
changed), then
  1. open two streams of --stream seconds each, the second a moment after the
     first, and note when each one's first event arrives: a sync worker serves
     one request at a time, so the second waits for the first to finish;
  2. open one stream of --long seconds (longer than the timeout) and count its
     events: the sync worker's master kills a worker that has been busy with one
     request for T seconds ("WORKER TIMEOUT"), cutting the stream; under gevent
     the worker keeps reporting in while its greenlets stream, so nothing is cut.
Then stop that server and print one row per run.

Columns:
    worker         class and --timeout
    1st stream     seconds from its request to its first event / to its end
    2nd stream     the same for the stream that asked second
    long stream    events received of those sent, and how it ended: "end" (its
                   end event arrived) or "cut after S s"
    log            "WORKER TIMEOUT" if gunicorn logged one

Bounded: three short-lived servers on 127.0.0.1, one worker each, a handful of
requests; about 25 s with the defaults.
"""
import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/workers.py` from anywhere
from streamkit import sse  # noqa: E402  (the kit's own SSE parser)

INTERVAL = 0.25  # seconds between events of every stream here


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", default=["sync", "sync:60", "gevent"],
                        help="worker classes, each optionally :TIMEOUT (default: sync sync:60 gevent)")
    parser.add_argument("--timeout", type=int, default=3, help="gunicorn --timeout, seconds (default 3)")
    parser.add_argument("--stream", type=float, default=1.0, help="length of the two streams, s (default 1)")
    parser.add_argument("--long", type=float, default=6.0, help="length of the long stream, s (default 6)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)

    rows = []
    print(f"{'worker':19} {'1st stream':>14} {'2nd stream':>14}  {'long stream':28} log")
    for run in args.runs:
        worker, _, timeout = run.partition(":")
        row = measure(worker, int(timeout or args.timeout), args.stream, args.long)
        rows.append(row)
        print(f"{row['worker'] + ' --timeout ' + str(row['timeout']):19} "
              f"{span(row['first']):>14} {span(row['second']):>14}  "
              f"{row['long']['events']:>3}/{row['long']['sent']:<3} {ending(row['long']):22} "
              f"{'WORKER TIMEOUT' if row['worker_timeout'] else '-'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def measure(worker, timeout, stream_seconds, long_seconds):
    """One server, the two experiments, one row."""
    with tempfile.TemporaryFile() as log:
        port = free_port()
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-k", worker,
                   "--workers", "1", "--timeout", str(timeout), "--bind", f"127.0.0.1:{port}"]
        server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/pitfalls/stream?interval={INTERVAL}&end=1&count="
            wait_for(f"http://127.0.0.1:{port}/healthz", server)
            short = url + str(max(1, round(stream_seconds / INTERVAL) + 1))
            first, second = {}, {}
            threads = [threading.Thread(target=read, args=(short, result))
                       for result in (first, second)]
            for thread in threads:
                thread.start()
                time.sleep(0.05)  # the first asks first
            for thread in threads:
                thread.join(stream_seconds * 4 + timeout + 10)
            sent = round(long_seconds / INTERVAL) + 1
            long = read(url + str(sent), {"sent": sent})
        finally:
            server.terminate()  # our own server, by its pid
            server.wait(timeout=15)
        log.seek(0)
        worker_timeout = b"WORKER TIMEOUT" in log.read()
    return {"worker": worker, "timeout": timeout, "first": first, "second": second,
            "long": long, "worker_timeout": worker_timeout}


def read(url, result):
    """Read one stream; note when its first event came, how many came, how it ended."""
    started = time.monotonic()
    result.update(events=0, end=False, first_event=None)
    try:
        with requests.get(url, stream=True, timeout=(3, 60)) as response:
            for event in sse.iter_events(response.iter_content(chunk_size=None)):
                if event.event == "end":
                    result["end"] = True
                else:
                    result["events"] += 1
                    if result["first_event"] is None:
                        result["first_event"] = time.monotonic() - started
    except requests.RequestException:
        pass  # the connection was cut: result["end"] stays False
    result["done"] = time.monotonic() - started
    return result


def span(result):
    first = "-" if result.get("first_event") is None else f"{result['first_event']:.2f}"
    return f"{first} / {result['done']:.2f} s" if "done" in result else "no answer"


def ending(result):
    return "end" if result["end"] else f"cut after {result['done']:.1f} s"


def wait_for(url, server, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"gunicorn exited with status {server.returncode}")
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit(f"gunicorn did not answer {url} within {timeout} s")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    main()
