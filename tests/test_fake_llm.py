"""Demo 4: the fake LLM speaks OpenAI's and DashScope's wire formats, and fails on request."""
import json
import threading
import time

import openai
import pytest
import requests
from werkzeug.serving import make_server

from demos import fake_llm
from streamkit import llm, sse
from tests.conftest import wait_until

SUM = [{"role": "user", "content": "3+5=?"}]
OPENAI, DASHSCOPE = "/v1/chat/completions", "/api/v1/services/aigc/text-generation/generation"


@pytest.fixture
def client():
    return fake_llm.create_app({"TESTING": True, "FAKE_LLM_DELAY_MS": 0}).test_client()


@pytest.fixture(scope="module")
def served():
    """The fake on a real threaded server (what `flask run` uses), for faults that cut sockets."""
    server = make_server("127.0.0.1", 0, fake_llm.create_app({"FAKE_LLM_DELAY_MS": 0}), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()


def post(client, path, body, **headers):
    response = client.post(path, json=body, headers=headers)
    return response, list(sse.iter_events(response.response))


def chunks(events):
    return [json.loads(event.data) for event in events if event.data != "[DONE]"]


def test_page(client):
    response = client.get("/")
    assert response.status_code == 200
    assert b'data-openai-url="/v1/chat/completions"' in response.data and b"split" in response.data


def test_models(client):
    response = client.get("/v1/models")
    assert response.status_code == 200
    assert response.get_json()["data"][0]["id"] == "fake-llm"


def test_openai_stream_has_the_shape_of_the_real_thing(client):
    response, events = post(client, OPENAI, {"model": "m", "messages": SUM, "stream": True})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert events[-1].data == "[DONE]"
    parts = chunks(events)
    assert parts[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    # The token cuts of the OpenAI sample in the source articles, exactly:
    assert [p["choices"][0]["delta"].get("content") for p in parts[1:-1]] == ["3", " +", " ", "5", " =", " ", "8"]
    assert parts[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert {p["id"] for p in parts} == {parts[0]["id"]} and parts[0]["id"].startswith("chatcmpl-")
    assert all(p["object"] == "chat.completion.chunk" and p["model"] == "m" for p in parts)
    assert all("usage" not in p for p in parts)  # only asked for with include_usage


def test_openai_usage_chunk_when_asked(client):
    body = {"messages": SUM, "stream": True, "stream_options": {"include_usage": True}}
    parts = chunks(post(client, OPENAI, body)[1])
    assert parts[-1]["choices"] == [] and parts[-1]["usage"] == {
        "prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}
    assert all(p["usage"] is None for p in parts[:-1])


def test_openai_without_stream_is_one_json_answer(client):
    response = client.post(OPENAI, json={"messages": SUM})
    answer = response.get_json()
    assert response.status_code == 200 and answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "3 + 5 = 8"}
    assert answer["usage"]["completion_tokens"] == 7


def test_max_tokens_cuts_the_answer(client):
    answer = client.post(OPENAI, json={"messages": SUM, "max_tokens": 3}).get_json()
    assert answer["choices"][0] == {"index": 0, "finish_reason": "length", "logprobs": None,
                                    "message": {"role": "assistant", "content": "3 + "}}


@pytest.mark.parametrize("prompt, expected", [
    ("12 * 3", "12 * 3 = 36"),
    ("最近的公园在哪里？", llm.CHINESE),
    ("<b>hi</b>", f"You asked: “<b>hi</b>”. {llm.ENGLISH}"),
])
def test_answers_are_deterministic(client, prompt, expected):
    for _ in range(2):
        body = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}]}
        assert client.post(OPENAI, json=body).get_json()["choices"][0]["message"]["content"] == expected


def test_openai_content_parts_are_read_as_text(client):
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "3+5=?"}]}]}
    assert client.post(OPENAI, json=body).get_json()["choices"][0]["message"]["content"] == "3 + 5 = 8"


def test_dashscope_stream_sends_the_whole_text_each_time(client):
    body = {"model": "qwen-turbo", "input": {"messages": [{"role": "user", "content": "你好"}]}}
    response = client.post(DASHSCOPE, json=body, headers={"X-DashScope-SSE": "enable"})
    raw = response.get_data(as_text=True)
    # As in the DashScope sample: no space after the colons, a status comment line.
    assert raw.startswith('id:1\nevent:result\n:HTTP_STATUS/200\ndata:{"output":{"finish_reason":"null","text":"你"}')
    events = list(sse.iter_events([raw.encode()]))
    results = [json.loads(event.data) for event in events]
    texts = [r["output"]["text"] for r in results]
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(texts, texts[1:]))
    assert texts[-1] == llm.CHINESE
    assert [e.id for e in events] == [str(n) for n in range(1, len(events) + 1)]
    assert {e.event for e in events} == {"result"}
    assert [r["output"]["finish_reason"] for r in results] == ["null"] * (len(results) - 1) + ["stop"]
    assert [r["usage"]["output_tokens"] for r in results] == list(range(1, len(results) + 1))
    assert len({r["request_id"] for r in results}) == 1


def test_dashscope_without_the_sse_header_is_json(client):
    answer = client.post(DASHSCOPE, json={"input": {"prompt": "3+5=?"}}).get_json()
    assert answer["output"] == {"finish_reason": "stop", "text": "3 + 5 = 8"}
    assert answer["usage"] == {"input_tokens": 4, "output_tokens": 7, "total_tokens": 11}


def test_delay_paces_the_tokens():
    app = fake_llm.create_app({"TESTING": True, "FAKE_LLM_DELAY_MS": 40})
    started = time.monotonic()
    response = app.test_client().post(OPENAI, json={"messages": SUM, "stream": True})
    arrivals = [time.monotonic() for _ in response.response]
    assert arrivals[0] - started < 0.03  # the role chunk goes out at once
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:8])]
    assert len(gaps) == 7 and min(gaps) > 0.03


@pytest.mark.parametrize("value", ["x", "-1", 10001])
def test_delay_is_checked_at_startup(value):
    with pytest.raises(ValueError, match="FAKE_LLM_DELAY_MS must be a number of milliseconds from 0 to 10000"):
        fake_llm.create_app({"FAKE_LLM_DELAY_MS": value})


# --- faults -----------------------------------------------------------------------------

@pytest.mark.parametrize("path", [OPENAI, DASHSCOPE])
@pytest.mark.parametrize("fault", ["401", "429", "500"])
def test_http_faults_in_each_providers_format(client, path, fault):
    response = client.post(path, json={"messages": SUM, "input": {"prompt": "x"}, "stream": True},
                           headers={"X-Fake-Fault": fault, "X-DashScope-SSE": "enable"})
    assert response.status_code == int(fault)
    body = response.get_json()
    assert "simulated" in (body["error"]["message"] if path == OPENAI else body["message"])
    assert (response.headers.get("Retry-After") == "1") == (fault == "429")


def text_of(events):
    return "".join(p["choices"][0]["delta"].get("content") or "" for p in chunks(events) if p["choices"])


@pytest.mark.parametrize("fault", ["nospace", "crlf", "split"])
def test_valid_faults_keep_the_text(client, fault):
    # The wire looks different; a parser that follows the rules reads the same text.
    body = {"messages": [{"role": "user", "content": "你好"}], "stream": True}
    response = client.post(OPENAI, json=body, headers={"X-Fake-Fault": fault})
    pieces = list(response.response)
    raw = b"".join(pieces)
    assert text_of(sse.iter_events([raw])) == llm.CHINESE
    if fault == "nospace":
        assert b"\ndata: " not in raw and raw.count(b"\ndata:{") > 10
    if fault == "crlf":
        assert raw.count(b"\r\n") == 2 * raw.count(b"\r\n\r\n") and b"\n" not in raw.replace(b"\r\n", b"")
        assert sum(piece.endswith(b"\r") for piece in pieces) > 10  # a CR at the end of a read
    if fault == "split":
        cut = [piece for piece in pieces if not utf8(piece)]
        assert len(cut) > 10  # pieces that end inside a character


def utf8(data):
    try:
        data.decode()
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("path", [OPENAI, DASHSCOPE])
def test_malformed_and_error_event(client, path):
    body = {"messages": SUM, "input": {"prompt": "3+5=?"}, "stream": True}
    headers = {"X-DashScope-SSE": "enable"}
    _, events = post(client, path, body, **headers, **{"X-Fake-Fault": "malformed"})
    with pytest.raises(ValueError):
        [json.loads(event.data) for event in events if event.data != "[DONE]"]
    _, events = post(client, path, body, **headers, **{"X-Fake-Fault": "error-event"})
    last = events[-1]
    assert "crashed" in last.data and (last.event == "error" or "error" in json.loads(last.data))


def test_drop_cuts_the_connection(served):
    response = requests.post(served + OPENAI, json={"messages": SUM, "stream": True},
                             headers={"X-Fake-Fault": "drop"}, stream=True, timeout=5)
    events = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for event in sse.iter_events(response.iter_content(chunk_size=None)):
            events.append(event)
    assert len(events) == llm.FAULT_AT


def test_stall_goes_silent(served):
    response = requests.post(served + OPENAI, json={"messages": SUM, "stream": True},
                             headers={"X-Fake-Fault": "stall"}, stream=True, timeout=(3, 0.3))
    events = []
    with pytest.raises(requests.exceptions.ConnectionError, match="timed out"):
        for event in sse.iter_events(response.iter_content(chunk_size=None)):
            events.append(event)
    assert len(events) == llm.FAULT_AT
    response.close()


def test_open_streams_are_counted(client):
    def count():
        return client.get("/stats").get_json()["open_streams"]
    before = count()  # process-wide: another test's stalled stream may still be open
    response = client.post(OPENAI, json={"messages": SUM, "stream": True})
    next(response.response)
    assert count() == before + 1
    response.close()  # what the server does when the client leaves
    assert count() == before


@pytest.mark.parametrize("kwargs, message", [
    ({"data": "not json"}, "the body must be a JSON object"),
    ({"json": []}, "the body must be a JSON object"),
    ({"json": {"messages": []}}, "messages must be a non-empty list"),
    ({"json": {"messages": "hi"}}, "messages must be a non-empty list"),
    ({"json": {"messages": [{"role": "user"}]}}, "each message must have a string role"),
    ({"json": {"messages": [{"role": "user", "content": 5}]}}, "each message must have a string role"),
    ({"json": {"messages": SUM, "max_tokens": 0}}, "max_tokens must be a positive integer"),
    ({"json": {"messages": SUM, "max_tokens": "9"}}, "max_tokens must be a positive integer"),
    ({"json": {"messages": SUM}, "headers": {"X-Fake-Fault": "boom"}}, "X-Fake-Fault must be one of"),
])
def test_bad_input(client, kwargs, message):
    response = client.post(OPENAI, **kwargs)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(message)


def test_oversized_body(client):
    response = client.post(OPENAI, json={"messages": [{"role": "user", "content": "x" * 70000}]})
    assert response.status_code == 413 and "error" in response.get_json()


# --- the official openai SDK, against a real gunicorn ------------------------------------

@pytest.mark.live
def test_the_openai_sdk_streams_from_it_unchanged(live_server):
    sdk = openai.OpenAI(base_url=live_server.url + "/fake-llm/v1", api_key="sk-workshop", max_retries=0)
    assert [model.id for model in sdk.models.list()] == ["fake-llm"]
    stream = sdk.chat.completions.create(model="fake-llm", messages=SUM, stream=True,
                                         stream_options={"include_usage": True})
    chunks_seen = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks_seen if c.choices) == "3 + 5 = 8"
    assert chunks_seen[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks_seen if c.choices][-1] == "stop"
    assert chunks_seen[-1].usage.total_tokens == 11
    answer = sdk.chat.completions.create(model="fake-llm", messages=SUM)
    assert answer.choices[0].message.content == "3 + 5 = 8"
    with pytest.raises(openai.RateLimitError, match="simulated"):
        sdk.chat.completions.create(model="fake-llm", messages=SUM, extra_headers={"X-Fake-Fault": "429"})


@pytest.mark.live
def test_live_stats_see_a_departed_client(live_server):
    stats = live_server.url + "/fake-llm/stats"
    before = requests.get(stats).json()["open_streams"]  # another test's stall may be open
    response = requests.post(live_server.url + "/fake-llm" + OPENAI, stream=True, timeout=5,
                             json={"messages": [{"role": "user", "content": "hello"}], "stream": True})
    next(response.iter_content(chunk_size=None))
    assert requests.get(stats).json()["open_streams"] == before + 1
    response.close()
    assert wait_until(lambda: requests.get(stats).json()["open_streams"] == before, timeout=2)
