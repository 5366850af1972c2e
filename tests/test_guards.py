"""The laptop lid and the slow body: clients that would hold the server for ever.

Live, against the serve commands: a client that stops reading is cut after
SEND_TIMEOUT and everything it held is released, while a client that reads misses
nothing; a body that trickles in is a 408 after BODY_TIMEOUT; JSON nested deeper
than the parser goes is a 400 on every endpoint that reads JSON.
"""
import json
import socket
import threading
import time

import pytest
import requests

from demos import hub
from streamkit import guards, sse
from tests.conftest import wait_until


def subscribers(url, channel):
    return requests.get(f"{url}/broadcast/stats", params={"channel": channel}, timeout=5).json()["subscribers"]


def silent_client(port, path):
    """Opens a stream and never reads it: a tiny receive window, so the server's
    writes back up after a few kilobytes, as they do to a closed laptop."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return client


@pytest.mark.live
@pytest.mark.parametrize("server_kind", ["gunicorn", "serve"])
def test_a_client_that_stops_reading_is_cut_and_released(start_server, run_alone, server_kind):
    """Before SEND_TIMEOUT, 1,000 clients that never read held their streams for as
    long as the test ran (90 s), with 326 MiB in the server's send queues."""
    env = {"SEND_TIMEOUT": "1"}
    url = start_server(env=env).url if server_kind == "gunicorn" else run_alone(
        "demos", "serve", ready="/healthz", env=env)
    port = int(url.rsplit(":", 1)[1])
    silent = silent_client(port, "/broadcast/stream?channel=lid")
    got = []
    reader = threading.Thread(target=read_until_stop, args=(f"{url}/broadcast/stream?channel=lid", got))
    reader.start()
    try:
        assert wait_until(lambda: subscribers(url, "lid") == 2, timeout=10)
        published, began = 0, time.monotonic()
        while subscribers(url, "lid") == 2 and time.monotonic() - began < 20:  # ~100 messages/s
            for _ in range(10):
                publish(url, "x" * 4000)
                published += 1
            time.sleep(0.1)
        held_for = time.monotonic() - began
        assert subscribers(url, "lid") == 1, "the silent client is still held"  # the reader is still there
        publish(url, "stop")
        reader.join(timeout=30)
        assert [int(event.id) for event in got] == list(range(1, published + 2))  # the reader missed nothing
        assert held_for < 20
    finally:
        silent.close()


def publish(url, message):
    answer = requests.post(f"{url}/broadcast/publish", json={"channel": "lid", "message": message}, timeout=5)
    assert answer.status_code == 202


def read_until_stop(url, got):
    """A client that reads every event, until the message "stop"."""
    with requests.get(url, stream=True, timeout=30) as response:
        for event in sse.iter_events(response.iter_content(chunk_size=None)):
            if event.event == "message":
                got.append(event)
                if json.loads(event.data)["message"] == "stop":
                    return


def test_where_the_kernel_does_not_say_a_blocked_write_shows_as_no_progress():
    # macOS and Windows: the bytes the server wrote are counted, chunk by chunk.
    response = guards.Counted([b"x" * 5, b"y" * 5], None, seconds=1)
    try:
        chunks = iter(response)
        next(chunks)  # handed to the server, being written
        assert not response.check(0.0)  # first look
        assert not response.check(0.5)  # no progress yet, but not for a second
        assert response.check(1.6)  # the write has been blocked for over a second
        next(chunks)  # the first chunk was written after all: progress
        assert not response.check(1.7)
    finally:
        response.close()
    assert response not in guards.WATCHED


def trickle(port, path, body, every):
    """POST `body` a byte every `every` s; return what the server answered, and when."""
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    client.sendall(head)
    began, answer = time.monotonic(), b""
    client.settimeout(every)
    for byte in body:
        try:
            client.sendall(bytes([byte]))
        except OSError:
            break  # the server closed the connection
        try:
            answer += client.recv(65536)
        except socket.timeout:
            continue
        if b"\r\n\r\n" in answer:
            break
    took = time.monotonic() - began
    client.settimeout(5)
    try:
        while chunk := client.recv(65536):  # and then the server closes the connection
            answer += chunk
    except OSError:
        pass
    client.close()
    return answer, took


@pytest.mark.live
@pytest.mark.parametrize("path", ["/relay/chat", "/broadcast/publish", "/fake-llm/v1/chat/completions"])
def test_a_body_that_trickles_in_is_cut_with_a_408(start_server, path):
    """100 POSTs trickling 10 bytes a second were all still held after 90 s."""
    server = start_server(env={"BODY_TIMEOUT": "1"})
    port = int(server.url.rsplit(":", 1)[1])
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "channel": "x", "message": "y"}).encode()
    answer, took = trickle(port, path, body, every=0.2)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert "BODY_TIMEOUT" in json.loads(rest)["error"]
    assert took < 3
    # A body that arrives at once is still read as before.
    assert requests.post(server.url + path, data=body, headers={"Content-Type": "application/json"},
                         stream=True, timeout=10).status_code < 400


@pytest.mark.live
@pytest.mark.parametrize("server_kind", ["gunicorn", "serve"])
def test_a_body_too_large_is_refused_and_the_connection_closed(start_server, run_alone, server_kind):
    # Refused unread, its rest must not keep the connection (and a greenlet) waiting:
    # under python -m demos serve it was held for as long as the client liked.
    env = {"BODY_TIMEOUT": "1"}
    url = start_server(env=env).url if server_kind == "gunicorn" else run_alone(
        "demos", "serve", ready="/healthz", env=env)
    client = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5)
    client.sendall(b"POST /relay/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 100000\r\n\r\n{")
    answer, began = b"", time.monotonic()
    while chunk := client.recv(65536):  # until the server closes
        answer += chunk
    client.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"at most 64 KiB" in answer
    assert time.monotonic() - began < 3


def json_endpoints():
    """Every POST endpoint but /pitfalls/lids, which reads no body (it opens sockets)."""
    for prefix, module in hub.DEMOS.items():
        for rule in module.app.url_map.iter_rules():
            if "POST" in rule.methods and not rule.arguments and rule.rule != "/lids":
                yield f"/{prefix}{rule.rule}"


@pytest.mark.parametrize("body", [b"[" * 1000, b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000],
                         ids=["1000-open", "5000-deep", "objects-3000-deep"])
def test_json_nested_deeper_than_the_parser_goes_is_a_400(body):
    # Python's parser raises RecursionError, which is not a ValueError: it was a 500.
    client = hub.create_app({"TESTING": True}).test_client()
    endpoints = list(json_endpoints())
    assert {"/relay/chat", "/relay/simple", "/broadcast/publish", "/fake-llm/v1/chat/completions"} <= set(endpoints)
    for path in endpoints:
        response = client.post(path, data=body, content_type="application/json")
        assert response.status_code == 400 and "error" in response.get_json(), path


@pytest.mark.live
def test_nested_json_is_a_400_under_gunicorn(live_server):
    for path in json_endpoints():
        response = requests.post(live_server.url + path, data=b"[" * 5000 + b"]" * 5000, timeout=10,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and "error" in response.json(), path
