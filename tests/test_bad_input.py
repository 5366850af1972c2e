"""Every endpoint of every demo, fed hostile input: a 4xx with JSON, never a 500, never HTML.

Each demo file has its own table of bad values; this sweep is the safety net for an
endpoint or a parameter those tables forgot.
"""
import pytest

from demos import hub

PARAMS = ["count", "interval", "heartbeat", "lastEventId", "since", "timeout", "channel",
          "q", "fault", "debug", "delay", "end", "ids", "bare", "retry", "jitter"]
HOSTILE = ["abc", "-1", "1e999", "nan", "0x10", "<script>alert(1)</script>", "\u2028", "9" * 400]
BODIES = [b"{", b"[]", b"null", b'{"messages": 5}', b'{"message": {"a": 1}}',
          b'{"channel": 7, "message": "x"}', b'"' + b"x" * 70_000 + b'"']


def endpoints():
    """(demo prefix, rule, methods) for every route but static files."""
    for prefix, module in hub.DEMOS.items():
        for rule in module.app.url_map.iter_rules():
            if rule.endpoint != "static" and not rule.arguments:
                yield prefix, rule.rule, rule.methods - {"HEAD", "OPTIONS"}


@pytest.fixture(scope="module")
def client():
    return hub.create_app({"TESTING": True}).test_client()


def check(response, hostile=None):
    assert response.status_code < 500, response.get_data(as_text=True)[:300]
    if response.status_code >= 400:
        assert response.is_json and "error" in response.get_json()
    if hostile and response.mimetype == "text/html":
        assert hostile not in response.get_data(as_text=True)  # escaped, never markup
    response.close()  # a stream that did start is closed, not read


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_query_values(client, value):
    query = {name: value for name in PARAMS}
    for prefix, rule, methods in endpoints():
        if "GET" in methods:
            check(client.get(f"/{prefix}{rule}", query_string=query), value)


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b[:20].decode())
def test_hostile_bodies(client, body):
    for prefix, rule, methods in endpoints():
        if "POST" in methods:
            check(client.post(f"/{prefix}{rule}", data=body, content_type="application/json"))
            check(client.post(f"/{prefix}{rule}", data=body, content_type="text/plain"))


def test_wrong_methods_are_json(client):
    for prefix, rule, methods in endpoints():
        for method in {"PUT", "DELETE", "PATCH"} - methods:
            check(client.open(f"/{prefix}{rule}", method=method))
