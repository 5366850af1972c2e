"""Demo 5's fourth lane: GET /compare/ws, a WebSocket on the same ticker.

A real client (tests/wsclient.py) on a raw socket, so a test sees every frame, the
close code and reason, and the moment the server closes the TCP connection. Under
gunicorn's gevent worker and under `python -m demos serve`; `flask run` is covered by
test_compare.py's bench run, nginx in front by test_pitfalls.py.
"""
import json
import selectors
import socket
import subprocess
import sys
import time

import pytest
import requests
from wsproto.events import AcceptConnection, CloseConnection, RejectConnection, TextMessage

from demos import compare
from streamkit import websocket
from tests.conftest import ROOT, LiveServer, wait_until
from tests.test_compare import restart_the_worker
from tests.wsclient import Client

ENV = {"COMPARE_RATE_HZ": "20", "SEND_TIMEOUT": "1"}  # a tick every 25-75 ms


@pytest.fixture(scope="module", params=["gunicorn", "serve"])
def server(request, tmp_path_factory):
    """The hub under gunicorn's gevent worker, then under `python -m demos serve`."""
    tmp = tmp_path_factory.mktemp("ws")
    if request.param == "gunicorn":
        live = LiveServer(tmp, env=ENV).start()
    else:
        live = ServeServer(tmp, env=ENV).start()
    yield live
    live.stop()


class ServeServer(LiveServer):
    """`python -m demos serve` on a free port, stopped like the gunicorn one."""

    def start(self):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "demos", "serve", "--port", str(self.port)],
                                            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        if not wait_until(self._healthy, timeout=20, step=0.1):
            self.stop()
            raise RuntimeError(f"python -m demos serve did not come up:\n{self.log_path.read_text()}")
        return self


def stats(server):
    return requests.get(server.url + "/compare/stats", timeout=5).json()


# --- the wire --------------------------------------------------------------------------

@pytest.mark.live
def test_messages_are_json_frames_live_only_without_since(server):
    before = stats(server)["last_id"]
    client = Client(server.url, "/compare/ws")
    try:
        # Offered, permessage-deflate is declined: a compressor per connection, each frame compressed again.
        assert isinstance(client.accepted, AcceptConnection) and client.accepted.extensions == []
        messages = client.messages(4)
    finally:
        client.close()
    ids = [message["id"] for message in messages]
    assert ids == list(range(ids[0], ids[0] + 4)) and ids[0] > before  # from now on, no gaps
    # The same JSON the other lanes carry, message for message.
    kept = requests.get(f"{server.url}/compare/poll?since={ids[0] - 1}", timeout=5).json()["messages"]
    assert kept[:4] == messages


@pytest.mark.live
def test_since_resumes_after_the_last_id_and_an_old_one_gets_all_kept(server):
    first = Client(server.url, "/compare/ws")
    seen = first.messages(3)
    first.close()
    resumed = Client(server.url, f"/compare/ws?since={seen[-1]['id']}")
    oldest = Client(server.url, "/compare/ws?since=1")  # older than anything kept
    try:
        following = resumed.messages(3)
        everything = oldest.messages(2)
    finally:
        resumed.close()
        oldest.close()
    ids = [message["id"] for message in seen + following]
    assert ids == list(range(ids[0], ids[0] + 6))  # nothing lost, nothing repeated
    kept = requests.get(f"{server.url}/compare/poll?since=0", timeout=5).json()["messages"]
    assert everything == kept[:2]


@pytest.mark.live
def test_a_ping_is_answered_on_the_same_connection(server):
    client = Client(server.url, "/compare/ws")
    try:
        client.send(json.dumps({"ping": 1234.5678}))
        while not isinstance(event := client.next(), TextMessage) or "pong" not in event.data:
            assert event is not None
        assert json.loads(event.data) == {"pong": 1234.5678}
        assert client.messages(1)[0]["id"]  # and the messages go on
    finally:
        client.close()


@pytest.mark.live
@pytest.mark.parametrize("sent, code, error", [
    (b"\x00binary", 1003, "send text frames"),
    ("not json", 1007, "send JSON"),
    ('{"ping": "soon"}', 1008, 'the only message understood is {"ping": <number>}'),
])
def test_a_bad_message_closes_with_a_code_and_a_json_reason(server, sent, code, error):
    client = Client(server.url, "/compare/ws")
    try:
        client.send(sent)
        closing, seconds = client.until_closed()
    finally:
        client.close()
    assert closing.code == code and json.loads(closing.reason)["error"].startswith(error)
    assert seconds < 1 and client.eof  # the server closed the TCP connection, at once
    assert Client(server.url, "/compare/ws").messages(1)  # and serves on


@pytest.mark.live
def test_a_message_over_64_kib_is_refused_unread(server):
    # simple-websocket closes with 1009 while the rest of the message still arrives,
    # so the client may see a reset instead: either way the connection ends at once.
    client = Client(server.url, "/compare/ws")
    started = time.monotonic()
    try:
        client.send(json.dumps({"ping": 1, "pad": "x" * websocket.MAX_MESSAGE}))
        closing, _ = client.until_closed()
        assert closing.code == 1009
    except ConnectionResetError:
        pass
    finally:
        client.close()
    assert time.monotonic() - started < 1
    assert Client(server.url, "/compare/ws").messages(1)  # and serves on


@pytest.mark.live
def test_the_client_closing_closes_the_connection_at_once(server):
    client = Client(server.url, "/compare/ws")
    try:
        client.messages(1)
        client.sock.sendall(client.ws.send(CloseConnection(code=1000, reason="bye")))
        closing, seconds = client.until_closed()
    finally:
        client.close()
    assert closing.code == 1000 and seconds < 0.5 and client.eof


@pytest.mark.live
def test_a_departed_client_is_released_by_the_next_tick(server):
    assert wait_until(lambda: stats(server)["streams"] == 0, timeout=5)
    client = Client(server.url, "/compare/ws")
    client.messages(2)
    assert stats(server)["streams"] == 1
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()  # gone without a close frame (a reset, as a crashed tab)
    assert wait_until(lambda: stats(server)["streams"] == 0, timeout=2)


@pytest.mark.live
def test_a_client_that_never_reads_is_cut_at_send_timeout(server):
    # The laptop lid: a tiny window, and pings whose answers it never reads. The
    # send deadline (SEND_TIMEOUT=1 here) shuts the socket; both loops end.
    assert wait_until(lambda: stats(server)["streams"] == 0, timeout=5)
    lid = Client(server.url, "/compare/ws", receive_buffer=4096)
    try:
        for n in range(300):
            lid.send(json.dumps({"ping": 1e12 + n}))
        assert stats(server)["streams"] == 1
        assert wait_until(lambda: stats(server)["streams"] == 0, timeout=6)
    finally:
        lid.close()


@pytest.mark.live
def test_a_plain_get_and_a_bad_since_are_refused_before_any_upgrade(server):
    plain = requests.get(server.url + "/compare/ws", timeout=5)
    assert plain.status_code == 426 and plain.headers["Upgrade"] == "websocket"
    assert "/compare/ws is a WebSocket" in plain.json()["error"]
    client = Client(server.url, "/compare/ws?since=soon")
    try:
        assert isinstance(client.accepted, RejectConnection) and client.accepted.status_code == 400
    finally:
        client.close()


@pytest.mark.live
def test_stats_count_one_request_and_every_frame(server):
    before = stats(server)["lanes"]["ws"]
    client = Client(server.url, "/compare/ws")
    try:
        texts = [json.dumps(message) for message in client.messages(5)]
    finally:
        client.close()
    after = stats(server)["lanes"]["ws"]
    assert after["requests"] - before["requests"] == 1
    least = websocket.HANDSHAKE + sum(len(text) + 2 for text in texts)  # a 2-byte head each
    assert least <= after["bytes"] - before["bytes"] < least + 1000


@pytest.mark.live
def test_500_websockets_on_one_worker_all_receive(server):
    clients = [Client(server.url, "/compare/ws") for _ in range(500)]
    try:
        assert all(isinstance(client.accepted, AcceptConnection) for client in clients)
        selector, waiting = selectors.DefaultSelector(), {}
        for client in clients:
            client.sock.setblocking(False)
            selector.register(client.sock, selectors.EVENT_READ, client)
            waiting[client] = 0
        deadline = time.monotonic() + 20
        while waiting and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                client = key.data
                if client in waiting and client.read():
                    waiting[client] = sum(isinstance(event, TextMessage) for event in client.events)
                    if waiting[client] >= 3:
                        del waiting[client]
        assert not waiting, f"{len(waiting)} of 500 clients got fewer than 3 messages"
        assert stats(server)["streams"] >= 500
    finally:
        for client in clients:
            client.close()


# --- the page's lane ----------------------------------------------------------------

@pytest.mark.browser
def test_the_page_reconnects_and_resumes_after_a_worker_restart(start_server, page):
    # A WebSocket does not reconnect by itself: ws.js does, with ?since= the last id it saw.
    sockets = []  # (url, the message ids it received), per WebSocket the page opens

    def opened(socket):
        ids = []
        socket.on("framereceived", lambda payload: ids.append(json.loads(payload).get("id")))
        sockets.append((socket.url, ids))

    page.on("websocket", opened)
    server = start_server(env={"COMPARE_RATE_HZ": "20"})
    page.goto(server.url + "/compare/")
    page.click("button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#lane-ws li').length >= 5")
    restart_the_worker(server)
    page.wait_for_function("document.querySelector('#lane-ws [data-field=requests]').textContent === '2'")
    newer = stats(server)["last_id"]  # an id of the new worker's: above every old one
    page.wait_for_function(f"Number(document.querySelector('#lane-ws li').dataset.id) >= {newer}")
    page.click("#stop")
    (first_url, first_ids), (second_url, second_ids) = sockets
    seen = [n for n in first_ids if n is not None]  # (pongs carry no id)
    assert first_url.endswith("/compare/ws") and second_url.endswith(f"/compare/ws?since={seen[-1]}")
    ids = [int(n) for n in page.locator("#lane-ws li").evaluate_all("items => items.map(item => item.dataset.id)")]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)  # newest first: nothing twice


# --- the rules, without a server ----------------------------------------------------

@pytest.mark.parametrize("message, code", [
    (b"{}", 1003), ("", 1007), ("[", 1007), ('{"ping": NaN}', 1007), ("[" * 100_000, 1007),
    ("{}", 1008), ('{"ping": true}', 1008), ('{"ping": 1, "x": 2}', 1008), ('["ping"]', 1008),
])
def test_what_the_client_may_send(message, code):
    with pytest.raises(websocket.Refused) as refused:
        websocket.pong(message)
    assert refused.value.code == code
    assert websocket.pong('{"ping": -0.5}') == {"pong": -0.5}


def test_the_ws_view_refuses_a_plain_get_through_the_test_client():
    app = compare.create_app({"TESTING": True, "COMPARE_RATE_HZ": 0.01})
    try:
        response = app.test_client().get("/ws?since=3")
    finally:
        app.extensions["compare"][0].stop()
    assert response.status_code == 426 and response.get_json()["error"].startswith("/ws is a WebSocket")
