#!/usr/bin/env python3
"""Resumable answers (demo 8): resume latency under load, memory per stored answer,
and the batching trade-off.

Usage:
    python bench/resume.py [--answers 1000] [--delay-ms 100] [--cuts 2] [--ramp 5] [--skip-load]
                           [--skip-batching] [--skip-memory]

Starts, on loopback, all stopped at the end:
  - an upstream: the kit's fake LLM in a gunicorn of its own (the LLM is elsewhere
    in real life), one token every --delay-ms ms (FAKE_LLM_DELAY_MS);
  - the kit: `gunicorn -c gunicorn.conf.py`, one gevent worker, UPSTREAM_BASE_URL
    pointing at that upstream.
Then prints three tables:
  load      ANSWERS answers started over RAMP seconds, each read as soon as it has
            started (the answers last ~9 s, so all are in flight); each reader hangs up
            CUTS times at random moments, stays away 0.2-1 s (a tunnel, a reload),
            and reconnects with Last-Event-ID. Measured: the time from a reconnect
            (connect + request) to its first resumed delta (p50/p99/max; then again
            for the resumes after the ramp, when all answers are in flight), answers
            whose text came whole with nothing lost or repeated, and the upstream
            calls the fake LLM counted (it should equal the answers). CPU % (100 =
            one core) of this client, the kit and the upstream over the run.
  memory    a stored answer's bytes in the store (tracemalloc, 1,000 of them in
            this process's MemoryAnswers, the server's class) against its text's
            UTF-8 bytes; "fixed" is what an answer costs beyond its text and one
            byte per delta (the object, its id, its closing frames).
  batching  one answer read live at batch_ms 0, 50, 200 and 1000 (the fake LLM at
            30 ms a token): events, bytes on the wire, time to first token from the
            POST, and the worst gap between two updates the reader saw.
The client is asyncio over raw HTTP/1.0 in one process.
"""
import argparse
import asyncio
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from relay import cpu_seconds, free_port, percentile, wait_for  # noqa: E402  (bench/relay.py)

from streamkit import answers, llm, sse  # noqa: E402

PROMPT = ("Explain, at some length, how a server can keep generating an answer while the "
          "connection that asked for it drops, and how the reader picks it up again later.")
TEXT = "".join(llm.reply([("user", PROMPT)])[0])


def serve(port, env, log):
    """gunicorn -c gunicorn.conf.py on `port`, one worker; returns the process."""
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind",
                                f"127.0.0.1:{port}", "--workers", "1"], cwd=ROOT, env={**os.environ, **env},
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(port)
    return process


async def http(port, request, on_body=None):
    """Send `request` (HTTP/1.0: the body ends when the server closes); feed the body
    to on_body(bytes) as it arrives, or return it whole. on_body returning True hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    body = b""
    try:
        while chunk := await reader.read(65536):
            if on_body is None:
                body += chunk
            elif on_body(chunk):
                break
    finally:
        writer.close()
    return head, body


def post(path, body):
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.0\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def get(path, last_id=0):
    header = f"Last-Event-ID: {last_id}\r\n" if last_id else ""
    return f"GET {path} HTTP/1.0\r\nHost: bench\r\n{header}\r\n".encode()


async def start_answer(port):
    head, body = await http(port, post("/resume/answers", {"messages": [{"role": "user", "content": PROMPT}]}))
    if b" 201 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(head.decode() + body.decode())
    return json.loads(body)


async def read_answer(port, answer, cuts, latencies, stay_away):
    """Read one answer to its end, hanging up `cuts` times; returns its text."""
    text, last_id, left = [], 0, cuts
    while True:
        parser, state = sse.EventParser(), {"first": None, "end": False}
        cut_at = time.monotonic() + random.uniform(0.3, 3.0) if left else float("inf")
        asked = time.monotonic()

        def on_body(chunk):
            nonlocal last_id
            for event in parser.feed(chunk):
                if event.event == "message":
                    if state["first"] is None:
                        state["first"] = time.monotonic()
                    last_id = int(event.id)
                    text.append(json.loads(event.data)["content"])
                elif event.event in ("done", "stopped", "relay-error", "store-error"):
                    state["end"] = event.event
            return time.monotonic() > cut_at and not state["end"]
        await http(port, get(answer["stream"], last_id), on_body)
        if last_id and state["first"] is not None and left < cuts:
            latencies.append((asked, state["first"] - asked))  # a resume: (re)connecting → first delta
        if state["end"]:
            return "".join(text), state["end"]
        left -= 1
        await asyncio.sleep(random.uniform(*stay_away))


async def load(port, count, cuts, pids, upstream_port, ramp):
    calls_before = json.loads((await http(upstream_port, get("/fake-llm/stats")))[1])["calls"]
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    client = resource.getrusage(resource.RUSAGE_SELF)
    started, latencies = time.monotonic(), []

    async def one(i):  # answers start spread over the ramp, as users ask at different moments
        await asyncio.sleep(i * ramp / count)
        return await read_answer(port, await start_answer(port), cuts, latencies, (0.2, 1.0))
    results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    wall = time.monotonic() - started
    used = resource.getrusage(resource.RUSAGE_SELF)
    calls = json.loads((await http(upstream_port, get("/fake-llm/stats")))[1])["calls"] - calls_before
    whole = sum(isinstance(r, tuple) and r == (TEXT, "done") for r in results)
    every = [latency for _, latency in latencies]
    # All answers in flight: resumes asked for after the last answer started.
    steady = [latency for asked, latency in latencies if asked >= started + ramp]
    row = {"answers": count, "ramp s": ramp, "resumes": len(every),
           "p50 ms": round(percentile(every, 50), 1), "p99 ms": round(percentile(every, 99), 1),
           "max ms": round(max(every, default=0) * 1000, 1), "after the ramp": len(steady),
           "p50 ms ": round(percentile(steady, 50), 1), "p99 ms ": round(percentile(steady, 99), 1),
           "whole": whole, "upstream calls": calls,
           "client CPU": round((used.ru_utime + used.ru_stime - client.ru_utime - client.ru_stime) / wall * 100)}
    for name, pid in pids.items():
        row[f"{name} CPU"] = round((cpu_seconds(pid) - cpu[name]) / wall * 100)
    errors = [repr(r)[:200] for r in results if not isinstance(r, tuple) or r != (TEXT, "done")]
    return row, errors[:3]


def memory(count=1000):
    """Bytes a stored answer costs in MemoryAnswers, against its text's UTF-8 bytes:
    the fake LLM's own answers, and answers the length of a real model's (1,000 tokens)."""
    def long(prompt):
        pieces = llm.reply([("user", prompt)])[0]
        return (pieces * (1000 // len(pieces) + 1))[:1000]
    rows = []
    for kind, pieces in (("fake, English", llm.reply([("user", PROMPT)])[0]),
                         ("fake, Chinese", llm.reply([("user", "用中文介绍流式输出")])[0]),
                         ("fake, 3+5=?", llm.reply([("user", "3+5=?")])[0]),
                         ("1,000 tokens, English", long(PROMPT)), ("1,000 tokens, Chinese", long("中文"))):
        store = answers.MemoryAnswers(abandon=30, ttl=600)
        ids = [answers.new_id() for _ in range(count)]
        usage = {"prompt_tokens": 30, "completion_tokens": len(pieces), "total_tokens": 30 + len(pieces)}
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for id in ids:
            store.create(id)
            for n, piece in enumerate(pieces, 1):
                store.add(id, n, piece)
            store.finish(id, b"".join(llm.ending(usage["prompt_tokens"], usage["completion_tokens"])), len(pieces))
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        text = len("".join(pieces).encode())
        per = (after - before) / count
        rows.append({"answer": kind, "deltas": len(pieces), "text bytes": text, "stored bytes": round(per),
                     "of which fixed": round(per - text - len(pieces)), "× text": round(per / text, 2)})
    return rows


async def batching(port, settings=(0, 50, 200, 1000)):
    async def one(batch):
        asked = time.monotonic()
        answer = await start_answer(port)
        path = answer["stream"] + (f"?batch_ms={batch}" if batch else "")
        parser, seen, size, end = sse.EventParser(), [], 0, None

        def on_body(chunk):
            nonlocal size, end
            size += len(chunk)
            for event in parser.feed(chunk):
                if event.event == "message":
                    seen.append(time.monotonic())
                elif event.event == "done":
                    end = time.monotonic()
        await http(port, get(path), on_body)
        gaps = [b - a for a, b in zip(seen, seen[1:])]
        return {"batch_ms": batch, "events": len(seen), "bytes": size,
                "first token ms": round((seen[0] - asked) * 1000), "worst gap ms": round(max(gaps) * 1000),
                "whole answer s": round(end - asked, 2)}
    await one(0)  # a warm-up: the kit's first call to the LLM opens its connection pool
    return [await one(batch) for batch in settings]


def table(rows, title):
    print(f"\n{title}")
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in columns) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=1000)
    parser.add_argument("--delay-ms", type=float, default=100, help="the upstream's pause per token (load)")
    parser.add_argument("--cuts", type=int, default=2, help="hang-ups per reader")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds over which the answers start")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-batching", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; {len(TEXT)} characters, "
          f"{len(llm.reply([('user', PROMPT)])[0])} deltas per answer")
    if not args.skip_memory:
        table(memory(), "memory: a stored answer (MemoryAnswers, tracemalloc, 1,000 answers)")
    processes = []
    with tempfile.TemporaryDirectory() as folder:
        log = open(Path(folder) / "servers.log", "ab")
        try:
            for scenario, delay in (("batching", 30), ("load", args.delay_ms)):
                if getattr(args, f"skip_{scenario}"):
                    continue
                upstream_port, port = free_port(), free_port()
                upstream = serve(upstream_port, {"FAKE_LLM_DELAY_MS": str(delay)}, log)
                kit = serve(port, {"UPSTREAM_BASE_URL": f"http://127.0.0.1:{upstream_port}/fake-llm/v1",
                                   "UPSTREAM_MODEL": "fake-llm", "WORKER_CONNECTIONS": "20000"}, log)
                processes += [upstream, kit]
                if scenario == "batching":
                    table(asyncio.run(batching(port)), "batching: one answer per setting, the fake LLM at 30 ms a token")
                else:
                    row, errors = asyncio.run(load(port, args.answers, args.cuts,
                                                   {"kit": kit.pid, "upstream": upstream.pid}, upstream_port,
                                                   args.ramp))
                    table([row], f"load: {args.answers} answers in flight on one worker, "
                                 f"{args.cuts} cuts per reader, the fake LLM at {delay:g} ms a token")
                    if errors:
                        print("errors:", *errors, sep="\n  ")
                for process in (upstream, kit):
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(10)
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
