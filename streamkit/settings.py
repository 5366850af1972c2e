"""Every setting the kit reads from the environment: its default, what it accepts, one check.

A bad value stops the server at start, in one line that names the variable and what
is accepted, never mid-stream and never as a traceback. This module imports nothing
but the standard library's `os` and `urllib.parse`, so gunicorn.conf.py can run the
check in the master before any worker (and gevent's patching) starts.
"""
import os
from urllib.parse import urlsplit


class SettingError(ValueError):
    """A setting the kit cannot run with; the message says which and what is accepted."""


def number(low, high, unit, kind=float):
    def parse(name, raw):
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            value = None
        if value is None or not low <= value <= high:
            kind_name = "an integer" if kind is int else "a number"
            raise SettingError(f"{name} must be {kind_name} of {unit} from {low} to {high}, got {raw!r}")
        return value
    return parse


def one_of(*choices):
    def parse(name, raw):
        if raw not in choices:
            raise SettingError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return raw
    return parse


def text(name, raw):
    return "" if raw is None else str(raw)


def base_url(name, raw):
    url = str(raw or "").rstrip("/")
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise SettingError(f"{name} must not hold credentials: put the key in UPSTREAM_API_KEY")
    if url and (parts.scheme not in ("http", "https") or not parts.hostname or parts.query):
        raise SettingError(f"{name} must be an http(s) URL such as https://api.openai.com/v1, got {url!r}")
    return url


def redis_url(name, raw):
    if raw and urlsplit(raw).scheme not in ("redis", "rediss", "unix"):
        raise SettingError(f"{name} must be a redis://, rediss:// or unix:// URL, got {raw!r}")
    return raw or None


def address(name, raw):
    host, colon, port = str(raw).rpartition(":")
    if raw.startswith("unix:") or (colon and host and port.isdigit() and 0 <= int(port) <= 65535):
        return raw
    raise SettingError(f"{name} must be HOST:PORT (such as 127.0.0.1:8000) or unix:PATH, got {raw!r}")


# name → (default, parse): the README's settings table lists the same names.
SETTINGS = {
    # the server (gunicorn.conf.py; `python -m demos serve` takes --host and --port)
    "BIND": ("127.0.0.1:8000", address),
    "WEB_CONCURRENCY": (1, number(1, 64, "worker processes", int)),
    "WORKER_CONNECTIONS": (12000, number(1, 100_000, "connections per worker", int)),
    # every stream and every request body (streamkit/guards.py)
    "SEND_TIMEOUT": (30.0, number(1, 600, "seconds")),
    "BODY_TIMEOUT": (10.0, number(1, 600, "seconds")),
    # the relay (demo 3) and its upstream
    "UPSTREAM_BASE_URL": ("", base_url),
    "UPSTREAM_API_KEY": ("", text),
    "UPSTREAM_MODEL": ("", text),
    "UPSTREAM_DIALECT": ("openai", one_of("openai", "dashscope")),
    "UPSTREAM_TIMEOUT": (30.0, number(0.1, 600, "seconds")),
    # the fake LLM (demo 4)
    "FAKE_LLM_DELAY_MS": (30.0, number(0, 10_000, "milliseconds")),
    # compare (demo 5) and broadcast (demo 6)
    "COMPARE_RATE_HZ": (1.0, number(0.01, 100, "messages per second")),
    "REDIS_URL": (None, redis_url),
    "BROADCAST_TOKEN": (None, lambda name, raw: raw or None),
    # resumable answers (demo 8); fractions of a second too, so tests run fast
    "RESUME_ABANDON_S": (30.0, number(0.2, 3600, "seconds")),
    "RESUME_TTL_S": (600.0, number(0.1, 86400, "seconds")),
}


def parse(name, raw):
    """`raw` (a string from the environment, or a test's value) as the setting `name` takes it."""
    return SETTINGS[name][1](name, raw)


def read(names, environ=None):
    """The named settings, parsed: from `environ` (os.environ by default) or their defaults."""
    environ = os.environ if environ is None else environ
    return {name: parse(name, environ.get(name, SETTINGS[name][0])) for name in names}


def check(environ=None):
    """All settings at once, and the rules between them; raises SettingError."""
    values = read(SETTINGS, environ)
    if values["UPSTREAM_BASE_URL"] and not values["UPSTREAM_MODEL"]:
        raise SettingError("UPSTREAM_MODEL is required with UPSTREAM_BASE_URL (gpt-4o-mini, qwen-turbo, …)")
    if not values["UPSTREAM_BASE_URL"] and values["UPSTREAM_API_KEY"]:
        raise SettingError("UPSTREAM_API_KEY is set without UPSTREAM_BASE_URL: it would go to the fake LLM")
    return values
