"""Resumable answers (断点续传): a reload continues the answer, only Stop stops it.

Shows: the answer is generated on the server apart from any one connection. POST a
chat to /answers: the server calls the LLM at once, in the background, and stores
every delta it sends (streamkit/answers.py). Any number of readers follow the
answer's stream from any delta on (`Last-Event-ID`): the stored deltas at once, then
the live ones; a dropped connection, a reload or a second tab loses nothing and
repeats nothing, and the LLM is called once. A reader leaving is not a Stop: the
server cannot tell a lost connection from a closed tab, so Stop is a request of its
own, and an answer nobody reads for RESUME_ABANDON_S is stopped too.
?batch_ms=M sends at most one event per M ms, holding every delta since.
Run: flask --app demos.resume run --debug   (alone, it serves the fake LLM too),
or the hub at /resume/
Try: curl -d '{"messages": [{"role": "user", "content": "hi"}]}' http://127.0.0.1:8000/resume/answers
then curl -N -H "Last-Event-ID: 5" http://127.0.0.1:8000/resume/answers/<id>/stream
Leaves out on purpose: who may read an answer (its id is the only key), chat history.
"""
import os
import re

from flask import jsonify, render_template, request, url_for
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from demos import fake_llm
from streamkit import answers, relaying, sse, web

ANSWER_ID = re.compile(r"[A-Za-z0-9_-]{22}")  # what answers.new_id() makes
SETTINGS = ["UPSTREAM_BASE_URL", "UPSTREAM_API_KEY", "UPSTREAM_MODEL", "UPSTREAM_DIALECT", "UPSTREAM_TIMEOUT",
            "RESUME_ABANDON_S", "RESUME_TTL_S", "REDIS_URL"]


def create_app(test_config=None):
    app = web.new_app(__name__, test_config, SETTINGS)
    relaying.check_config(app.config)
    config, builtin = app.config, not app.config["UPSTREAM_BASE_URL"]
    if builtin:  # alone, serve the fake LLM at the path the hub gives it
        app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/fake-llm": fake_llm.create_app(test_config)})
    store = answers.from_url(config["REDIS_URL"], config["RESUME_ABANDON_S"], config["RESUME_TTL_S"])
    session = relaying.upstream_session()

    @app.get("/")
    def index():
        """The page: ask, drop, reload, open a second tab, Stop, and the batching slider."""
        return render_template("resume/index.html", store=store.name, abandon=config["RESUME_ABANDON_S"],
                               faults=fake_llm.FAULTS if builtin else {})

    @app.post("/answers")
    def start():
        """Start an answer: the LLM is called now, once, whoever reads it later."""
        messages, fault = relaying.read_messages(), relaying.read_fault(builtin, fake_llm.FAULTS)
        id = answers.new_id()
        try:
            store.create(id)  # the store first: no LLM call (and bill) for an answer it cannot keep
        except answers.StoreDown as error:
            web.fail(str(error), 503)
        try:  # an LLM that fails before its first byte is this request's HTTP error
            upstream = relaying.open_upstream(session, config, messages, fault, request.environ)
        except Exception:
            store.forget(id)
            raise
        store.start(answers.Runner(store, id, upstream, config))  # reads the LLM into the store
        return jsonify(id=id, stream=url_for("stream", id=id)), 201

    @app.get("/answers/<id>/stream")
    def stream(id):
        """Follow an answer: after Last-Event-ID, the stored deltas at once, then live."""
        batch = web.number_arg("batch_ms", 0, 0, 1000, int) / 1000
        heartbeat = web.number_arg("heartbeat", 15.0, 0.05, 60)
        count, _ = known(id)
        last_id = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
        after = web.number_arg("lastEventId", 0, 0, count, int, value=last_id)
        return sse.event_stream(answers.follow(store, id, after, batch, heartbeat), encoded=True)

    @app.post("/answers/<id>/stop")
    def stop(id):
        """Stop means stop: the LLM's connection is closed, every reader gets `stopped`."""
        known(id)
        try:
            store.stop(id, answers.STOPPED)
        except answers.StoreDown as error:
            web.fail(str(error), 503)
        return jsonify(id=id, stopping=True), 202

    @app.get("/stats")
    def stats():
        """Answers this worker is generating now, for the page and the tests."""
        return jsonify(store=store.name, running=store.running(), worker=os.getpid())

    def known(id):
        """(deltas so far, ended?) of the answer `id`, or a 404 (503 if the store is down)."""
        try:
            if ANSWER_ID.fullmatch(id):
                return store.status(id)
        except answers.StoreDown as error:
            web.fail(str(error), 503)
        except answers.NotFound:
            pass
        web.fail(f"no answer {id[:40]!r}: unknown, or forgotten {config['RESUME_TTL_S']:g} s after it ended", 404)

    return app


app = create_app()
