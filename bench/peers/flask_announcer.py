"""The Flask announcer peer of bench/fanout.py: the common "MessageAnnouncer" pattern,
a queue.Queue per listener and one ticker thread, on gunicorn's gevent worker.
    gunicorn -k gevent --chdir bench/peers flask_announcer:app
It runs on the kit's own install (Flask, gunicorn, gevent); nothing to add.
"""
import json
import queue
import threading
import time

from flask import Flask, Response

app = Flask(__name__)


class MessageAnnouncer:
    def __init__(self):
        self.listeners = []

    def listen(self):
        q = queue.Queue(maxsize=5)
        self.listeners.append(q)
        return q

    def announce(self, msg):
        for i in reversed(range(len(self.listeners))):
            try:
                self.listeners[i].put_nowait(msg)
            except queue.Full:  # a listener that stopped taking messages: forgotten
                del self.listeners[i]


announcer = MessageAnnouncer()
started = threading.Lock()


def tick():
    n = 0
    while True:
        time.sleep(1)
        n += 1
        announcer.announce(f"id: {n}\ndata: {json.dumps({'id': n, 'ts': time.time(), 'text': f'tick {n}'})}\n\n")


@app.before_request
def start_ticker():  # in the worker, after gevent's patching: the thread is a greenlet
    if started.acquire(blocking=False):
        threading.Thread(target=tick, daemon=True).start()


@app.get("/events")
def listen():
    def stream():
        messages = announcer.listen()
        yield ": ping\n\n"
        while True:
            yield messages.get()
    return Response(stream(), mimetype="text/event-stream")


@app.get("/healthz")
def healthz():
    return "ok"
