"""Demo 1: generator SSE and the heartbeat merge."""
import asyncio
import concurrent.futures
import time

import pytest

from demos import basic
from tests.conftest import live_events, read_events


@pytest.fixture
def client():
    return basic.create_app({"TESTING": True}).test_client()


def test_page(client):
    response = client.get("/")
    assert response.status_code == 200
    assert b'data-stream-url="/stream"' in response.data


def test_stream_headers_and_events(client):
    stream = read_events(client, "/stream?count=3&interval=0.01")
    assert stream.status == 200
    assert stream.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["Cache-Control"] == "no-cache"
    assert stream.headers["X-Accel-Buffering"] == "no"
    stamps = [float(event.data) for event in stream.events]
    assert len(stamps) == 3 and stamps == sorted(stamps)
    assert abs(stamps[0] - time.time()) < 5


def test_ticks_is_a_plain_generator():
    # Written by hand: one data line and a blank line per event.
    frames = list(basic.ticks(2, 0))
    assert len(frames) == 2
    assert all(frame.startswith("data: ") and frame.endswith("\n\n") for frame in frames)


def test_heartbeat_merges_two_schedules(client):
    stream = read_events(client, "/heartbeat?interval=0.05&heartbeat=0.12", limit=12)
    assert stream.status == 200
    ticks, beats = stream.of_type("tick"), stream.of_type("heartbeat")
    assert stream.events[0].event == "tick"  # the first bytes go out at once
    assert len(beats) >= 2 and len(ticks) >= 2 * len(beats)
    gaps = [float(b.data) - float(a.data) for a, b in zip(ticks, ticks[1:])]
    assert min(gaps) >= 0.04


def test_heartbeat_stops_at_its_lifetime():
    # The 10-minute cap, shrunk: a stream whose lifetime is over ends by itself.
    frames = list(basic.ticks_and_heartbeats(0.01, 0.05, lifetime=0.1))
    assert 5 <= sum("event: tick" in frame for frame in frames) <= 11


@pytest.mark.parametrize("query, message", [
    ("/stream?count=0", "count must be an integer from 1 to 1000"),
    ("/stream?count=1001", "count must be an integer from 1 to 1000"),
    ("/stream?count=2.5", "count must be an integer from 1 to 1000"),
    ("/stream?interval=0", "interval must be a number from 0.01 to 60"),
    ("/stream?interval=nan", "interval must be a number from 0.01 to 60"),
    ("/stream?interval=abc", "interval must be a number from 0.01 to 60"),
    ("/heartbeat?heartbeat=0.01", "heartbeat must be a number from 0.05 to 60"),
    ("/heartbeat?interval=61", "interval must be a number from 0.01 to 60"),
])
def test_bad_input(client, query, message):
    response = client.get(query)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(message)


def test_unknown_url_is_json(client):
    response = client.get("/nope")
    assert response.status_code == 404 and "error" in response.get_json()


@pytest.mark.live
def test_live_events_arrive_one_by_one(live_server):
    # Nothing on the path buffers: each event arrives when it is produced.
    stream = live_events(live_server.url + "/basic/stream?count=4&interval=0.3")
    assert len(stream.events) == 4
    gaps = [b - a for a, b in zip(stream.arrivals, stream.arrivals[1:])]
    assert min(gaps) > 0.2, gaps


@pytest.mark.live
def test_live_500_streams_on_one_worker_all_progress(live_server):
    # One gevent worker serves 500 streams at once: every stream has its first
    # event before any stream has finished (a worker serving them in turn could not).
    async def one_stream(started, finished):
        reader, writer = await asyncio.open_connection("127.0.0.1", live_server.port)
        writer.write(b"GET /basic/stream?count=3&interval=1 HTTP/1.1\r\n"
                     b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        body = b""
        while b"data:" not in body:
            body += await reader.read(4096)
        started.append(time.monotonic())
        body += await reader.read()  # until the server closes the connection
        finished.append(time.monotonic())
        writer.close()
        return body.count(b"data:")

    async def main():
        started, finished = [], []
        counts = await asyncio.wait_for(
            asyncio.gather(*(one_stream(started, finished) for _ in range(500))), 30)
        return counts, started, finished

    # In a thread of its own: Playwright's sync API may already run a loop in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        counts, started, finished = pool.submit(asyncio.run, main()).result()
    assert counts == [3] * 500
    assert max(started) < min(finished)


@pytest.mark.browser
def test_page_shows_events_in_both_panels(live_server, page):
    page.goto(live_server.url + "/basic/")
    page.fill("input[name=count]", "3")
    page.fill("input[name=interval]", "0.2")
    page.click("button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#events li').length === 3")
    page.wait_for_function("document.getElementById('wire').textContent.includes('end of stream')")
    assert page.locator("#wire").text_content().count("data: ") == 3
    assert "message:" in page.locator("#events li").first.text_content()
    assert "closed by the server" in page.locator("#status").text_content()


def test_chapter_one_is_flask_alone():
    # Live-coded in the first hour: nothing the tutorial has not shown yet.
    import ast
    from tests.conftest import ROOT
    tree = ast.parse((ROOT / "demos" / "basic.py").read_text())
    modules = {node.module if isinstance(node, ast.ImportFrom) else alias.name
               for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
               for alias in node.names}
    assert modules == {"time", "flask", "werkzeug.exceptions"}
