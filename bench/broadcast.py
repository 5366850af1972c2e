#!/usr/bin/env python3
"""Publish to the broadcast demo at a fixed rate, while bench/streams.py listens.

Usage:
    python bench/broadcast.py http://127.0.0.1:8000/broadcast [--rate 1] [--duration 60]
                              [--channel main] [--token T] [--wait-subscribers N]

POSTs {"channel", "message"} to URL/publish every 1/rate seconds for --duration
seconds (on a fixed schedule: a slow answer does not shift the next send), then
prints one row. Run it next to bench/streams.py, which holds the subscribers and
measures lateness (receipt - the payload's `ts`, the publish time):

    redis-server --port 6379 --save '' --appendonly no
    REDIS_URL=redis://127.0.0.1:6379/0 WEB_CONCURRENCY=2 gunicorn -c gunicorn.conf.py
    python bench/broadcast.py http://127.0.0.1:8000/broadcast --duration 120 \\
        --wait-subscribers 10000
    python bench/streams.py http://127.0.0.1:8000/broadcast/stream -n 10000 \\
        --duration 20 --server-pid <gunicorn master pid>

--wait-subscribers holds the first message until /stats counts that many
subscribers (all workers together), so every message of the run goes to all of
them: streams.py's `events` should then be about held x rate x its duration.

Columns:
    sent         messages POSTed
    accepted     202 answers; their ids must run first..last with no gap
    failed       other answers or connection errors (listed under the row)
    ids          first-last id the server gave
    p50/p99/max  POST round trip in ms (the publish path alone)
    rate/s       messages sent per second, as achieved
    subscribers  per worker (pid:count) at the start and at the end, from /stats
"""
import argparse
import collections
import sys
import time

import requests

COLUMNS = [("sent", 6), ("accepted", 8), ("failed", 6), ("ids", 33), ("p50 ms", 8),
           ("p99 ms", 8), ("max ms", 8), ("rate/s", 7)]


def percentile(sorted_values, p):
    """Nearest-rank percentile of a sorted list; None if it is empty."""
    if not sorted_values:
        return None
    rank = -(-len(sorted_values) * p // 100)
    return sorted_values[max(1, int(rank)) - 1]


def subscribers(session, base, channel):
    """(total, "pid:count pid:count") from the demo's /stats."""
    stats = session.get(f"{base}/stats", params={"channel": channel}, timeout=5).json()
    per_worker = " ".join(f"{w['pid']}:{w['subscribers']}" for w in stats.get("workers", []))
    return stats.get("subscribers", 0), per_worker or "-"


def wait_for(session, base, channel, wanted, timeout):
    deadline, total = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        total, per_worker = subscribers(session, base, channel)
        if total >= wanted:
            return per_worker
        time.sleep(0.5)
    sys.exit(f"error: only {total} of {wanted} subscribers after {timeout:g} s")


def run(args):
    base = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    session = requests.Session()
    try:
        at_start = (wait_for(session, base, args.channel, args.wait_subscribers, args.wait_timeout)
                    if args.wait_subscribers else subscribers(session, base, args.channel)[1])
    except requests.RequestException as error:
        sys.exit(f"error: cannot reach {base}/stats: {error}")
    latencies, ids, failures = [], [], collections.Counter()
    start, n = time.monotonic(), 0
    while (due := start + n / args.rate) < start + args.duration:
        time.sleep(max(0.0, due - time.monotonic()))
        body = {"channel": args.channel, "message": f"bench {n} at {time.time():.3f}"}
        sent = time.perf_counter()
        try:
            answer = session.post(f"{base}/publish", json=body, headers=headers, timeout=10)
            latencies.append((time.perf_counter() - sent) * 1000)
            if answer.status_code == 202:
                ids.append(answer.json()["id"])
            else:
                failures[f"HTTP {answer.status_code}: {answer.json().get('error', '')[:60]}"] += 1
        except requests.RequestException as error:
            failures[type(error).__name__] += 1
        n += 1
    elapsed = time.monotonic() - start
    at_end = subscribers(session, base, args.channel)[1]
    return n, ids, sorted(latencies), failures, elapsed, at_start, at_end


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="http://host:port/broadcast (the demo's root)")
    parser.add_argument("--rate", type=float, default=1.0, help="messages per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of publishing")
    parser.add_argument("--channel", default="main")
    parser.add_argument("--token", help="BROADCAST_TOKEN, if the server sets one")
    parser.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                        help="start once /stats counts N subscribers")
    parser.add_argument("--wait-timeout", type=float, default=300.0)
    args = parser.parse_args()
    if not 0 < args.rate <= 1000:
        parser.error("--rate must be more than 0 and at most 1000")

    sent, ids, lat, failures, elapsed, at_start, at_end = run(args)
    print(f"# broadcast publisher: {args.url} channel {args.channel}  rate {args.rate:g}/s  "
          f"duration {args.duration:g} s")
    print("  ".join(name.rjust(width) for name, width in COLUMNS))
    cells = [sent, len(ids), sum(failures.values()), f"{ids[0]}-{ids[-1]}" if ids else "-",
             percentile(lat, 50), percentile(lat, 99), lat[-1] if lat else None, sent / elapsed]
    print("  ".join(("-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)).rjust(w)
                    for v, (_, w) in zip(cells, COLUMNS)))
    print(f"subscribers (pid:count)  start: {at_start}   end: {at_end}")
    gaps = ids and ids != list(range(ids[0], ids[0] + len(ids)))
    for reason, count in failures.items():
        print(f"  failed x{count}: {reason}")
    if gaps:
        print("  ids are not consecutive: another publisher shares the channel?")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
