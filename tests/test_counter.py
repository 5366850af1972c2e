"""Demo 2: the push-style counter, its ids, retry, end event and resume."""
import json
import re
import signal

import pytest
import requests

from demos import counter
from tests.conftest import live_events, read_events, wait_until


@pytest.fixture
def client():
    return counter.create_app({"TESTING": True}).test_client()


def numbers(stream):
    return [json.loads(event.data)["n"] for event in stream.of_type("message")]


def test_page(client):
    response = client.get("/")
    assert response.status_code == 200
    assert b'data-stream-url="/stream"' in response.data and b"retry: 2000" in response.data


def test_stream_counts_with_ids_then_ends(client):
    stream = read_events(client, "/stream?count=3&interval=0.01")
    assert stream.status == 200
    assert stream.raw.startswith("retry: 2000\n\n")
    assert numbers(stream) == [1, 2, 3]
    assert [event.id for event in stream.of_type("message")] == ["1", "2", "3"]
    assert stream.events[-1].event == "end" and json.loads(stream.events[-1].data) == {"last": 3}
    assert all(json.loads(e.data)["ts"] > 1e12 for e in stream.of_type("message"))  # ms


@pytest.mark.parametrize("how", [{"headers": {"Last-Event-ID": "2"}}, {"query": "&lastEventId=2"}],
                         ids=["header", "query"])
def test_resume_after_last_event_id(client, how):
    url = "/stream?count=5&interval=0.01" + how.get("query", "")
    stream = read_events(client, url, headers=how.get("headers"))
    assert numbers(stream) == [3, 4, 5]


def test_reconnect_after_the_last_id_gets_204(client):
    # 204 No Content is the one answer that makes EventSource stop for good.
    response = client.get("/stream?count=3", headers={"Last-Event-ID": "3"})
    assert response.status_code == 204 and response.data == b""


def test_quiet_stream_sends_pings(client):
    stream = read_events(client, "/stream?count=2&interval=0.3&heartbeat=0.05")
    assert stream.raw.count(": ping\n\n") >= 3 and numbers(stream) == [1, 2]


@pytest.mark.parametrize("query, headers, message", [
    ("/stream?count=3&lastEventId=4", {}, "lastEventId must be an integer from 0 to 3"),
    ("/stream?count=3", {"Last-Event-ID": "-1"}, "lastEventId must be an integer from 0 to 3"),
    ("/stream", {"Last-Event-ID": "abc"}, "lastEventId must be an integer from 0 to 10"),
    ("/stream?count=x", {}, "count must be an integer from 1 to 1000"),
    ("/stream?interval=100", {}, "interval must be a number from 0.01 to 60"),
    ("/stream?heartbeat=0", {}, "heartbeat must be a number from 0.05 to 60"),
])
def test_bad_input(client, query, headers, message):
    response = client.get(query, headers=headers)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(message)


def test_writer_refuses_sends_after_the_client_left():
    writer = counter.EventWriter(heartbeat=1)
    frames = writer.stream(lambda writer: writer.send("x", id=1))
    assert next(frames) == "id: 1\ndata: x\n\n"
    frames.close()  # what the WSGI server does when a write fails
    with pytest.raises(counter.ClientGone):
        writer.send("y")


def test_head_request_starts_no_producer(client):
    # A HEAD gets the headers only: the body, and so the producer, never starts.
    response = client.head("/stream?count=1000&interval=60")
    assert response.status_code == 200 and response.data == b""
    assert client.get("/stats").get_json() == {"producers": 0}


@pytest.mark.live
def test_live_disconnect_stops_the_producer(live_server):
    stats = live_server.url + "/counter/stats"
    assert wait_until(lambda: requests.get(stats).json()["producers"] == 0, timeout=5)
    stream = live_events(live_server.url + "/counter/stream?count=1000&interval=0.05", limit=3)
    assert numbers(stream) == [1, 2, 3]  # and the response is closed now
    assert wait_until(lambda: requests.get(stats).json()["producers"] == 0, timeout=2)


@pytest.mark.live
def test_live_resume_after_a_forced_disconnect(live_server):
    url = live_server.url + "/counter/stream?count=8&interval=0.02"
    first = live_events(url, limit=4)  # drop the connection mid-stream
    resumed = live_events(url, headers={"Last-Event-ID": first.events[-1].id})
    assert numbers(first) + numbers(resumed) == list(range(1, 9))
    assert resumed.events[-1].event == "end"


@pytest.mark.browser
def test_page_resumes_after_the_server_restarts(start_server, page):
    server = start_server()
    page.goto(server.url + "/counter/")
    page.fill("input[name=count]", "30")
    page.fill("input[name=interval]", "0.2")
    page.click("button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#events li').length >= 5")
    server.stop(signal.SIGQUIT)  # the instructor presses Ctrl-C mid-count...
    server.start()  # ...and starts it again on the same port
    page.wait_for_function("document.getElementById('status').value.startsWith('done')",
                           timeout=30_000)
    items = page.locator("#events li").all_text_contents()
    assert [int(item.split()[0][1:]) for item in items] == list(range(1, 31))
    assert int(page.locator("#reconnects").text_content()) >= 1
    assert page.locator("#events li.gap").count() == 0
    # The raw-wire panel's own fetch reconnects as EventSource does, and its request
    # line shows the Last-Event-ID it sends (the point of this demo).
    page.wait_for_function("document.getElementById('wire').textContent.includes('event: end')", timeout=30_000)
    wire = "\n".join(page.locator("#wire > div").all_text_contents())
    resumed = re.findall(r"GET /counter/stream\?count=30&interval=0\.2 · Last-Event-ID: (\d+)", wire)
    assert resumed, wire
    ids = [int(n) for n in re.findall(r"^id: (\d+)$", wire, re.M)]
    assert ids == list(range(1, 31))  # nothing lost, nothing repeated
