"""The hub: every demo under its own prefix, an index page, and /healthz."""
from flask import render_template
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from demos import basic, broadcast, compare, counter, fake_llm, pitfalls, relay, resume
from streamkit import web

# prefix → demo module, in reading order (the index and tutorial.md follow it)
DEMOS = {
    "basic": basic,
    "counter": counter,
    "relay": relay,
    "fake-llm": fake_llm,
    "compare": compare,
    "broadcast": broadcast,
    "pitfalls": pitfalls,
    "resume": resume,
}


def title(module):
    """A demo's title is the first line of its docstring (without its full stop)."""
    return module.__doc__.strip().splitlines()[0].rstrip(".")


def create_app(test_config=None):
    app = web.new_app(__name__, test_config)

    @app.get("/")
    def index():
        """Links to every demo, with the line that says what it teaches."""
        demos = [(prefix, title(module)) for prefix, module in DEMOS.items()]
        return render_template("hub/index.html", demos=demos)

    @app.get("/healthz")
    def healthz():
        """For scripts and tests waiting for the server to come up."""
        return "ok", 200, {"Content-Type": "text/plain; charset=utf-8"}

    # Every demo mounted under its prefix, all behind the same deadlines (basic.py,
    # Flask alone, has none of its own).
    app.wsgi_app = web.guarded(DispatcherMiddleware(
        app.wsgi_app, {f"/{prefix}": module.app for prefix, module in DEMOS.items()}), app.config)
    return app


app = create_app()
