"""Demo 5: one ticker heard by short polling, long polling, SSE and WebSocket, and their
cost. The WebSocket lane's own tests are in test_compare_ws.py."""
import argparse
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from itertools import islice

import pytest
import requests

from bench import compare as bench
from demos import compare
from streamkit.ticker import Ticker
from tests.conftest import ROOT, LiveServer, live_events, read_events, wait_until

LANES = ["poll", "long-poll", "sse", "ws"]
QUIET = {"TESTING": True, "COMPARE_RATE_HZ": 0.01}  # the ticker stays silent: tests publish
FAST = {"COMPARE_RATE_HZ": "20"}  # the environment of a server the live tests start


@pytest.fixture
def app():
    app = compare.create_app(QUIET)
    yield app
    ticker_of(app).stop()


@pytest.fixture
def client(app):
    return app.test_client()


def ticker_of(app):
    return app.extensions["compare"][0]


def ids(messages):
    return [message["id"] for message in messages]


def nth(ticker, *ns):
    """The ids of a ticker's n-th messages: they number on from its clock-based base."""
    return [ticker.base + n for n in ns]


def test_page(client):
    response = client.get("/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    for lane, url in [("poll", "/poll"), ("long-poll", "/long-poll"), ("sse", "/sse"), ("ws", "ws")]:
        assert f'data-lane="{lane}" data-url="{url}"' in page
    assert 'data-time-url="/time"' in page and "Raw wire" in page and "6 connections" in page


def test_importing_the_demo_starts_no_ticker():
    # One ticker per worker, started by the first request: importing starts nothing.
    code = "import threading, demos.compare; print(threading.active_count())"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert result.stdout.strip() == "1", result.stderr


def test_first_request_starts_the_one_ticker(app, client):
    ticker = ticker_of(app)
    assert not ticker.running
    client.get("/poll")
    thread = ticker._thread
    assert ticker.running
    for _ in range(3):
        client.get("/poll")
        client.get("/long-poll?timeout=0")
    assert ticker._thread is thread
    assert [t.name for t in threading.enumerate()].count("ticker") >= 1


def test_poll_answers_at_once(app, client):
    ticker = ticker_of(app)
    started = time.monotonic()
    first = client.get("/poll").get_json()  # a new client: from now on
    assert first == {"messages": [], "last_id": ticker.base}
    assert abs(ticker.base - time.time() * 1000) < 5000  # ids number from the clock (ms)
    for n in range(3):
        ticker.publish(f"m{n}")
    response = client.get(f"/poll?since={ticker.base + 1}")
    assert time.monotonic() - started < 1
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    answer = response.get_json()
    assert ids(answer["messages"]) == nth(ticker, 2, 3) and answer["last_id"] == ticker.base + 3
    message = answer["messages"][0]
    assert set(message) == {"id", "ts", "text"} and message["text"] == "m1"
    assert abs(message["ts"] - time.time()) < 5  # unix seconds, not milliseconds
    assert client.get(f"/poll?since={ticker.base + 3}").get_json() == {
        "messages": [], "last_id": ticker.base + 3}


def test_poll_since_zero_or_from_an_earlier_server_run_gets_the_history(app, client):
    ticker = ticker_of(app)
    for n in range(3):
        ticker.publish(f"m{n}")
    assert ids(client.get("/poll?since=0").get_json()["messages"]) == nth(ticker, 1, 2, 3)
    # An id from an earlier run is below this run's first (ids number from the
    # clock); one beyond the newest cannot be ours: both get everything kept.
    for since in (ticker.base - 50, ticker.base + 50):
        assert ids(client.get(f"/poll?since={since}").get_json()["messages"]) == nth(ticker, 1, 2, 3)


def test_history_is_bounded():
    ticker = Ticker(rate_hz=1, history=3)
    for n in range(5):
        ticker.publish(f"m{n}")
    assert [m.id for m in ticker.after(0)[1]] == nth(ticker, 3, 4, 5)
    assert [m.id for m in ticker.after(ticker.base + 4)[1]] == nth(ticker, 5)
    assert ticker.after(ticker.base + 5) == (ticker.base + 5, [])


def test_long_poll_answers_as_soon_as_a_message_is_published(app):
    answers = []

    def long_poll():
        answers.append(app.test_client().get("/long-poll?since=0&timeout=10").get_json())

    waiter = threading.Thread(target=long_poll)
    waiter.start()
    time.sleep(0.2)  # the request is parked by now
    assert answers == []
    published = time.monotonic()
    ticker_of(app).publish("news")
    waiter.join(timeout=5)
    assert time.monotonic() - published < 1  # woken by the publish, far from the 10 s timeout
    assert ids(answers[0]["messages"]) == nth(ticker_of(app), 1)
    assert answers[0]["last_id"] == ticker_of(app).base + 1


def test_long_poll_times_out_with_an_empty_list(app, client):
    started = time.monotonic()
    answer = client.get("/long-poll?timeout=0.2").get_json()
    assert 0.2 <= time.monotonic() - started < 2
    assert answer == {"messages": [], "last_id": ticker_of(app).base}


def test_long_poll_with_news_waiting_answers_at_once(app, client):
    ticker_of(app).publish("already here")
    started = time.monotonic()
    assert ids(client.get("/long-poll?since=0&timeout=10").get_json()["messages"]) == nth(ticker_of(app), 1)
    assert time.monotonic() - started < 1


def test_sse_streams_every_message_with_its_id():
    app = compare.create_app({"TESTING": True, "COMPARE_RATE_HZ": 50})
    try:
        stream = read_events(app.test_client(), "/sse", limit=5)
    finally:
        ticker_of(app).stop()
    assert stream.status == 200
    assert stream.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["Cache-Control"] == "no-cache"
    assert stream.raw.startswith(": ping\n\n")  # the first bytes go out at once
    data = [json.loads(event.data) for event in stream.events]
    numbers = ids(data)
    assert numbers == list(range(numbers[0], numbers[0] + 5))  # no gaps
    assert [event.id for event in stream.events] == [str(n) for n in numbers]
    assert all(abs(message["ts"] - time.time()) < 5 for message in data)


@pytest.mark.parametrize("how", ["header", "query"])
def test_sse_resumes_after_last_event_id(app, client, how):
    ticker = ticker_of(app)
    for n in range(5):
        ticker.publish(f"m{n}")
    seen = ticker.base + 2
    if how == "header":
        stream = read_events(client, "/sse", limit=3, headers={"Last-Event-ID": str(seen)})
    else:
        stream = read_events(client, f"/sse?lastEventId={seen}", limit=3)
    assert [event.id for event in stream.events] == [str(n) for n in nth(ticker, 3, 4, 5)]


def test_quiet_sse_stream_sends_pings():
    app = compare.create_app({**QUIET, "COMPARE_HEARTBEAT": 0.05})
    response = app.test_client().get("/sse")
    try:
        chunks = list(islice(response.response, 4))
    finally:
        response.close()
        ticker_of(app).stop()
    assert chunks == [b": ping\n\n"] * 4


def test_one_publish_wakes_every_waiting_listener():
    # The fan-out: listeners parked on the one shared bell, here as real threads.
    ticker, woken = Ticker(rate_hz=1), []
    listeners = [threading.Thread(target=lambda: woken.append(ticker.wait(0, timeout=5)[1]))
                 for _ in range(20)]
    for listener in listeners:
        listener.start()
    time.sleep(0.1)
    ticker.publish("all of you")
    for listener in listeners:
        listener.join(timeout=5)
    assert [[m.id for m in news] for news in woken] == [nth(ticker, 1)] * 20
    assert len({id(news[0].frame) for news in woken}) == 1  # one frame, encoded once


def test_stats_count_requests_and_bytes_per_lane(app, client):
    ticker_of(app).publish("m")
    bodies = [client.get(url).data for url in ["/poll?since=0", "/poll", "/long-poll?since=0&timeout=0"]]
    read_events(client, "/sse?lastEventId=0", limit=1)
    read_events(client, "/sse?lastEventId=0", limit=1, headers={"X-Uncounted": "raw-wire panel"})
    client.get("/time")
    client.get("/")
    stats = client.get("/stats").get_json()
    lanes = stats["lanes"]
    assert {lane: counts["requests"] for lane, counts in lanes.items()} == {
        "poll": 2, "long-poll": 1, "sse": 1, "ws": 0}
    # Headers are counted too: each answer costs more than its body.
    poll_body = len(bodies[0]) + len(bodies[1])
    assert poll_body + 2 * 150 < lanes["poll"]["bytes"] < poll_body + 2 * 300
    assert len(bodies[2]) + 150 < lanes["long-poll"]["bytes"] < len(bodies[2]) + 300
    assert lanes["sse"]["bytes"] > 200 + len(ticker_of(app).after(0)[1][0].frame)
    assert stats["streams"] == 0 and stats["last_id"] == ticker_of(app).base + 1 and stats["rate_hz"] == 0.01


@pytest.mark.parametrize("url, headers, message", [
    ("/poll?since=-1", {}, "since must be an integer from 0 to 9007199254740991"),
    ("/poll?since=abc", {}, "since must be an integer from 0 to 9007199254740991"),
    ("/poll?since=1.5", {}, "since must be an integer from 0 to 9007199254740991"),
    ("/long-poll?since=x", {}, "since must be an integer from 0 to 9007199254740991"),
    ("/long-poll?timeout=31", {}, "timeout must be a number from 0 to 30"),
    ("/long-poll?timeout=-1", {}, "timeout must be a number from 0 to 30"),
    ("/long-poll?timeout=soon", {}, "timeout must be a number from 0 to 30"),
    ("/sse", {"Last-Event-ID": "abc"}, "lastEventId must be an integer from 0 to 9007199254740991"),
    ("/sse?lastEventId=-3", {}, "lastEventId must be an integer from 0 to 9007199254740991"),
])
def test_bad_input(client, url, headers, message):
    response = client.get(url, headers=headers)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(message)


@pytest.mark.parametrize("rate", [0, 101, "fast", None])
def test_bad_rate_is_refused_at_startup(rate):
    with pytest.raises(ValueError, match="COMPARE_RATE_HZ must be a number of messages per second from 0.01 to 100"):
        compare.create_app({"TESTING": True, "COMPARE_RATE_HZ": rate})


def test_rate_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("COMPARE_RATE_HZ", "2.5")
    assert ticker_of(compare.create_app()).rate_hz == 2.5


# --- live: a real gunicorn gevent worker --------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = LiveServer(tmp_path_factory.mktemp("compare"), env={"COMPARE_RATE_HZ": "20"}).start()
    yield server
    server.stop()


@pytest.mark.live
def test_live_four_lanes_hear_every_message_and_stats_agree(server):
    # The headless bench's own clients, briefly: every lane gets every message
    # without a gap, long polls are woken by publishes rather than their timeout,
    # and the server's byte estimate is close to the bytes the clients counted.
    args = argparse.Namespace(clients=2, interval=0.1, timeout=5.0, duration=1.5)
    result = bench.run(server.url + "/compare", args)
    assert result["errors"] == []
    rows = result["rows"]
    for lane, row in rows.items():
        assert row["delivered"] >= 2 * 10 and row["gaps"] == 0, lane
        exact = row["bytes_per_msg"] * row["delivered"]
        assert abs(result["server"][lane]["bytes"] - exact) < 0.1 * exact, lane
    assert rows["long-poll"]["p95_ms"] < 1000 and rows["sse"]["requests"] == rows["ws"]["requests"] == 2
    assert rows["poll"]["req_per_msg"] > rows["sse"]["req_per_msg"]


@pytest.mark.live
def test_live_sse_resumes_without_a_gap(server):
    url = server.url + "/compare/sse"
    first = live_events(url, limit=3)
    resumed = live_events(url, limit=3, headers={"Last-Event-ID": first.events[-1].id})
    numbers = [int(event.id) for event in first.events + resumed.events]
    assert numbers == list(range(numbers[0], numbers[0] + 6))


@pytest.mark.live
def test_live_fan_out_to_many_streams(server):
    streams = [None] * 50

    def listen(i):
        streams[i] = live_events(server.url + "/compare/sse", limit=5)

    listeners = [threading.Thread(target=listen, args=(i,)) for i in range(50)]
    for listener in listeners:
        listener.start()
    for listener in listeners:
        listener.join(timeout=20)
    for stream in streams:
        numbers = [int(event.id) for event in stream.events]
        assert numbers == list(range(numbers[0], numbers[0] + 5))


@pytest.mark.live
def test_live_departed_client_is_released_by_the_next_tick(server):
    stats = server.url + "/compare/stats"
    assert wait_until(lambda: requests.get(stats).json()["streams"] == 0, timeout=5)
    live_events(server.url + "/compare/sse", limit=2)  # reads two events and hangs up
    assert wait_until(lambda: requests.get(stats).json()["streams"] == 0, timeout=2)


@pytest.mark.live
def test_live_lanes_under_flask_run_with_threads(run_alone):
    # `flask --app demos.compare run`: real threads, HTTP/1.0, no gevent anywhere.
    url = run_alone("flask", "--app", "demos.compare", "run", ready="/time", env=FAST)
    result = bench.run(url, argparse.Namespace(clients=2, interval=0.1, timeout=5.0, duration=1.5))
    assert result["errors"] == []
    assert all(row["delivered"] >= 2 * 10 and row["gaps"] == 0 for row in result["rows"].values())


@pytest.mark.live
def test_serve_answers_without_the_nagle_delay(run_alone):
    """pywsgi writes a response's head and body separately. With Nagle's algorithm
    on, the body waited for the client's delayed ACK: every long poll took 40 ms
    longer under `python -m demos serve` than under gunicorn. A small answer on a
    kept-alive connection now takes a millisecond or two, not 40."""
    url = run_alone("demos", "serve", "compare", ready="/time", env=FAST)
    with requests.Session() as session:
        times = []
        for _ in range(20):
            started = time.perf_counter()
            assert session.get(url + "/poll").status_code == 200
            times.append(time.perf_counter() - started)
    assert statistics.median(times) < 0.02


@pytest.mark.live
def test_bench_command_prints_the_table(tmp_path):
    chart = tmp_path / "compare.png"
    result = subprocess.run(
        [sys.executable, "-m", "demos.compare", "bench", "--duration", "1.5", "--clients", "1",
         "--rate", "10", "--interval", "0.2", "--png", str(chart)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["lane", "delivered"])
    rows = [line.split() for line in lines[header + 1:header + 5]]
    assert [row[0] for row in rows] == ["poll", "long-poll", "sse", "ws"]
    assert all(int(row[1]) > 0 and row[2] == "0" for row in rows)
    if importlib.util.find_spec("matplotlib"):  # requirements-dev.txt installs it
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib is not installed" in result.stdout


def test_bench_refuses_rate_with_a_url():
    result = subprocess.run(
        [sys.executable, "-m", "demos.compare", "bench", "--url", "http://127.0.0.1:9/compare",
         "--rate", "5"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--rate sets the rate of the server started here" in result.stderr


# --- the page in a real browser -------------------------------------------------

@pytest.mark.browser
def test_page_runs_four_lanes_on_the_same_messages(server, page):
    page.goto(server.url + "/compare/")
    page.fill("input[name=interval]", "0.2")
    page.fill("input[name=timeout]", "5")
    page.click("button[type=submit]")
    for lane in LANES:
        page.wait_for_function(f"document.querySelectorAll('#lane-{lane} li').length >= 15")
    # Bytes come from the server's /stats, fetched once a second.
    page.wait_for_function("document.querySelector('#lane-sse [data-field=bytes]').textContent !== '–'")
    page.click("#stop")
    seen = {lane: {int(n) for n in page.locator(f"#lane-{lane} li").evaluate_all(
        "items => items.map(item => item.dataset.id)")} for lane in LANES}
    # Each lane started "from now on" at a slightly different moment and keeps the
    # last 30: compare the ids all four had the chance to receive.
    low, high = max(min(ids) for ids in seen.values()), min(max(ids) for ids in seen.values())
    assert high - low >= 5
    assert {frozenset(n for n in ids if low <= n <= high) for ids in seen.values()} == {
        frozenset(range(low, high + 1))}
    assert page.locator(".lane li.gap").count() == 0
    assert page.locator("#lane-sse [data-field=requests]").text_content() == "1"
    assert page.locator("#lane-ws [data-field=requests]").text_content() == "1"
    assert page.locator("#lane-ws [data-field=rtt]").text_content().endswith(" ms")  # ping → pong
    assert int(page.locator("#lane-poll [data-field=requests]").text_content()) >= 3
    assert page.locator("#lane-sse [data-field=mean]").text_content().endswith(" ms")
    assert "id: " in page.locator("#wire").text_content()


# --- live: ids across a worker restart ------------------------------------------------

def restart_the_worker(server):
    """kill -9 the one worker (by pid) and wait until gunicorn's new one answers."""
    old, = server.worker_pids()
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: server.worker_pids() not in ([], [old]), timeout=10)
    assert wait_until(lambda: requests.get(server.url + "/compare/time", timeout=2).ok, timeout=10)


@pytest.mark.live
def test_live_ids_go_on_after_the_worker_is_killed(start_server):
    # A tick is 25-75 ms at 20 Hz. After a restart a client resuming with an id
    # from before it gets new messages with higher ids at once (within about a
    # tick): no replay of ids it has seen, no stall until ids catch up.
    server = start_server(env=FAST)
    before = live_events(server.url + "/compare/sse", limit=3)
    last = int(before.events[-1].id)
    restart_the_worker(server)

    asked = time.monotonic()
    resumed = live_events(server.url + "/compare/sse", limit=3, headers={"Last-Event-ID": str(last)})
    numbers = [int(event.id) for event in resumed.events]
    assert numbers[0] > last and numbers == list(range(numbers[0], numbers[0] + 3)), (last, numbers)
    assert resumed.arrivals[0] - asked < 1.0  # a tick or two, not the seconds of a catch-up

    for lane in ("poll?since=", "long-poll?timeout=5&since="):
        asked, answer = time.monotonic(), {"messages": []}
        while not answer["messages"] and time.monotonic() - asked < 2:  # poll: may be early
            answer = requests.get(f"{server.url}/compare/{lane}{last}", timeout=10).json()
        assert time.monotonic() - asked < 1.0, lane
        assert ids(answer["messages"]) and min(ids(answer["messages"])) > last, (lane, last, answer)
        assert answer["last_id"] == max(ids(answer["messages"]))
    assert requests.get(server.url + "/compare/stats", timeout=5).json()["last_id"] > last
