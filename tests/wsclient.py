"""A WebSocket client for the tests: wsproto (the protocol library under the server's
simple-websocket) on a raw socket, so a test sees every frame, the close code and
reason, and the moment the server closes the TCP connection."""
import json
import socket
import time
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Request, TextMessage
from wsproto.extensions import PerMessageDeflate


class Client:
    """One WebSocket client on a raw socket: every event, and when the server hung up."""

    def __init__(self, base_url, path, receive_buffer=None, timeout=5):
        parts = urlsplit(base_url)
        self.sock = socket.socket()
        if receive_buffer:  # before connecting: it sets the window the client offers
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect((parts.hostname, parts.port))
        self.ws, self.events, self.eof = WSConnection(ConnectionType.CLIENT), [], False
        self.sock.sendall(self.ws.send(Request(host=parts.netloc, target=parts.path + path,
                                               extensions=[PerMessageDeflate()])))  # as browsers offer
        self.accepted = self.next()

    def read(self):
        """One read from the socket; False at its end."""
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            return False
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, Ping) or self.ws.state == ConnectionState.REMOTE_CLOSING:
                self.sock.sendall(self.ws.send(event.response()))  # answered, as a browser does
            self.events.append(event)
        return True

    def next(self):
        while not self.events and self.read():
            pass
        return self.events.pop(0) if self.events else None

    def messages(self, count):
        """The next `count` text frames, parsed (heartbeat pings skipped)."""
        found = []
        while len(found) < count:
            event = self.next()
            assert event is not None, f"the server hung up after {found}"
            if isinstance(event, TextMessage):
                found.append(json.loads(event.data))
        return found

    def send(self, data):
        message = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        self.sock.sendall(self.ws.send(message))

    def until_closed(self):
        """The server's close frame (or None) and seconds until its end of TCP closed."""
        started, closing = time.monotonic(), None
        while not self.eof:
            event = self.next()
            if isinstance(event, CloseConnection):
                closing = event
            elif event is None:
                break
        return closing, time.monotonic() - started

    def close(self):
        self.sock.close()
