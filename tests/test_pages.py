"""The pages as a newcomer meets them: on a phone, alone and under the hub, the
fetch reader's parsing rules, and the fixes to what confused the first readers."""
import re
import time

import pytest

from demos import hub


# --- markup, through the test client ----------------------------------------------

@pytest.mark.parametrize("prefix", list(hub.DEMOS))
def test_the_link_to_all_demos_shows_only_under_the_hub(prefix):
    # `flask --app demos.basic run` serves the page at /, where "../" is the page itself.
    alone = hub.DEMOS[prefix].app.test_client().get("/")
    mounted = hub.app.test_client().get(f"/{prefix}/")
    assert alone.status_code == mounted.status_code == 200
    assert "all demos" not in alone.text
    assert '<a href="../" class="home">← all demos</a>' in mounted.text


@pytest.mark.parametrize("prefix", ["counter", "pitfalls", "broadcast", "fake-llm"])
def test_every_count_that_includes_the_wire_panel_says_so(prefix):
    # "producers running: 2" for one tab: the raw-wire panel reads its own copy.
    html = hub.app.test_client().get(f"/{prefix}/").text
    terms = re.findall(r"<dt>((?:(?!</dt>).)*)</dt><dd id=\"(producers|subscribers|open-streams)\"", html, re.S)
    assert terms and all("raw-wire panel" in term for term, _ in terms), terms


def test_compare_lists_are_not_numbered_backwards():
    # Newest first in an <ol> read 1, 2, 3 from the newest: each item names its id instead.
    html = hub.app.test_client().get("/compare/").text
    assert html.count('<ul class="events">') == 4 and "<ol" not in html


def test_every_page_script_is_a_module():
    for prefix in hub.DEMOS:
        html = hub.app.test_client().get(f"/{prefix}/").text
        scripts = re.findall(r"<script[^>]*>", html)
        assert scripts and all('type="module"' in script for script in scripts), (prefix, scripts)


# --- in a real browser ----------------------------------------------------------------

@pytest.mark.browser
def test_no_page_scrolls_sideways_on_a_phone(live_server, page):
    # The fault <select>s made the relay page 588 px wide on a 390 px phone.
    page.set_viewport_size({"width": 390, "height": 844})
    for prefix in ["", *hub.DEMOS]:
        response = page.goto(f"{live_server.url}/{prefix}/" if prefix else live_server.url + "/")
        assert response.status == 200
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"/{prefix}/ is {width} px wide"


CASES = {  # chunks as read from the network -> events, per the WHATWG rules
    "LF": (["data: a\n\n"], [["message", "a", ""]]),
    "CRLF": (["data: a\r\n\r\n"], [["message", "a", ""]]),
    "CR, dispatched without waiting for the next read": (["data: a\r\r"], [["message", "a", ""]]),
    "CRLF split across two reads is one line end": (["data: a\r", "\ndata: b\r\n\r\n"], [["message", "a\nb", ""]]),
    "data: without the space": (["data:a\n\n"], [["message", "a", ""]]),
    "only one space is dropped": (["data:  a\n\n"], [["message", " a", ""]]),
    "multi-line data": (["data: a\ndata: b\n\n"], [["message", "a\nb", ""]]),
    "a comment is no event": ([": ping\n\n"], []),
    "no blank line, no dispatch": (["data: a\n"], []),
    "named event": (["event: usage\ndata: {}\n\n"], [["usage", "{}", ""]]),
    "the id stays for later events": (["id: 7\ndata: x\n\n", "data: y\n\n"], [["message", "x", "7"], ["message", "y", "7"]]),
    "a field split across reads": (["da", "ta: a\n", "\n"], [["message", "a", ""]]),
    "an empty read after a CR": (["data: a\r", "", "\n\r\n"], [["message", "a", ""]]),
}


@pytest.mark.browser
def test_the_fetch_readers_parser_follows_the_rules(live_server, page):
    page.goto(live_server.url + "/basic/")
    got = page.evaluate("""async (cases) => {
        const { eventParser } = await import("./static/sse-fetch.js");
        const out = {};
        for (const [name, [chunks]] of Object.entries(cases)) {
          const events = [], retries = [];
          const parse = eventParser((e) => events.push([e.type, e.data, e.id]), (ms) => retries.push(ms));
          chunks.forEach(parse);
          out[name] = events;
        }
        const retries = [];
        eventParser(() => {}, (ms) => retries.push(ms))("retry: 2000\\nretry: x\\n\\n");
        out.retry = retries;
        return out;
    }""", CASES)
    assert got.pop("retry") == [2000]
    assert got == {name: events for name, (_, events) in CASES.items()}


@pytest.mark.browser
def test_the_fetch_reader_reads_a_stream_and_takes_a_204_for_the_end(live_server, page):
    # A 204 has no body at all (response.body is null): the end, not an error.
    page.goto(live_server.url + "/counter/")
    got = page.evaluate("""async () => {
        const { fetchEvents } = await import("./static/sse-fetch.js");
        const events = [], retries = [];
        const ok = await fetchEvents("stream?count=2&interval=0.01", {}, (e) => events.push([e.type, e.id]),
                                     { retry: (ms) => retries.push(ms) });
        const gone = await fetchEvents("stream?count=2&interval=0.01", { headers: { "Last-Event-ID": "2" } },
                                       (e) => events.push(["after 204?", e.id]));
        return [ok.status, gone.status, events, retries];
    }""")
    assert got == [200, 204, [["message", "1"], ["message", "2"], ["end", "2"]], [2000]]


@pytest.mark.browser
def test_a_restart_never_shows_the_old_streams_note(live_server, page):
    # The old read's "stopped by the page" used to land after the new request line.
    page.goto(live_server.url + "/basic/")
    page.fill("input[name=count]", "50")
    page.fill("input[name=interval]", "0.1")
    page.click("button[type=submit]")
    page.wait_for_function("document.getElementById('wire').textContent.includes('data: ')")
    page.click("button[type=submit]")
    page.wait_for_function("(document.getElementById('wire').textContent.match(/data: /g) || []).length >= 3")
    entries = page.locator("#wire > div").all_text_contents()
    assert entries[0].startswith("GET ") and not any("stopped by the page" in e for e in entries), entries
    page.click("#stop")
    entries = page.locator("#wire > div").all_text_contents()
    assert entries[-1].endswith("stopped by the page")
    page.wait_for_timeout(300)
    assert page.locator("#wire > div").all_text_contents() == entries  # nothing after it


@pytest.mark.browser
def test_a_blank_field_leaves_the_servers_default(live_server, page):
    # A prefilled "1" hid a live-coded change of the default: blank, it is left out.
    page.goto(live_server.url + "/basic/")
    interval = page.locator("input[name=interval]")
    assert interval.input_value() == "" and interval.get_attribute("placeholder") == "1"
    page.fill("input[name=count]", "1")
    page.click("button[type=submit]")
    page.wait_for_function("document.getElementById('wire').textContent.includes('end of stream')")
    assert page.locator("#wire > div").first.text_content() == "GET /basic/stream?count=1"


@pytest.mark.browser
def test_the_relay_status_moves_on_from_waiting(live_server, page):
    page.goto(live_server.url + "/relay/")
    page.fill("textarea[name=prompt]", "tell me a story")
    page.click("button[type=submit]")
    # It said "waiting for the first token…" until the end; now it moves on.
    page.wait_for_function("document.getElementById('status').value === 'streaming…'")
    page.wait_for_function("document.getElementById('status').value.startsWith('done: ')")
    assert re.fullmatch(r"done: \d+ tokens, [\d.]+ tokens/s", page.evaluate("document.getElementById('status').value"))


@pytest.mark.browser
@pytest.mark.parametrize("relay, path", [(None, "/relay/simple"), ("simple", "/relay/simple"), ("chat", "/relay/chat")])
def test_the_relay_page_reads_the_relay_chosen(live_server, page, relay, path):
    # Simple first: the page opens on /relay/simple; production is one click away.
    page.goto(live_server.url + "/relay/")
    if relay:
        page.check(f"input[name=relay][value={relay}]")
    page.fill("textarea[name=prompt]", "3+5=?")
    page.click("button[type=submit]")
    page.wait_for_function("document.getElementById('status').value.startsWith('done: ')")
    assert page.locator("#wire > div").first.text_content().split("?")[0] == f"POST {path}"
    assert page.locator("#answer").text_content() == "3 + 5 = 8"


@pytest.mark.browser
def test_the_relay_page_shows_who_lets_a_stalled_llm_go(start_server, page):
    # The lesson of the relay choice, as the page shows it: Stop during a `stall`; the
    # production relay's ping finds the departed client, the simple relay cannot.
    server = start_server(env={"UPSTREAM_TIMEOUT": "6"})
    page.goto(server.url + "/relay/")
    page.select_option("select[name=fault]", "stall")
    held = "document.getElementById('held').textContent"
    for relay in ("chat", "simple"):
        page.check(f"input[name=relay][value={relay}]")
        page.click("button[type=submit]")
        page.wait_for_function("document.getElementById('answer').textContent.length > 0")
        page.wait_for_function(f"{held}.includes('{'production' if relay == 'chat' else 'simple'} 1')")
        page.click("#stop")
        if relay == "chat":  # let go within a ping or two
            page.wait_for_function(f"{held} === 'simple 0, production 0'", timeout=3000)
    time.sleep(2.5)  # well past the production relay's reaction time
    assert page.evaluate(held) == "simple 1, production 0"  # still held: nobody wrote to the client
    page.wait_for_function(f"{held} === 'simple 0, production 0'", timeout=8000)  # UPSTREAM_TIMEOUT


@pytest.mark.browser
def test_pitfalls_come_in_pairs_with_what_to_watch(live_server, page):
    page.goto(live_server.url + "/pitfalls/")
    rows = page.locator(".pitfall")
    assert rows.count() == 5
    labels = page.locator("[data-preset]").all_text_contents()
    assert len(labels) == len(set(labels))
    for i in range(rows.count()):
        row = rows.nth(i)
        names = row.locator("button").all_text_contents()
        assert names[0].startswith("Show"), names
        if row.locator("[data-preset]").count():  # the laptop lid's fix is the server's SEND_TIMEOUT
            assert any(n.startswith("Fix") for n in names[1:]), names
        assert row.locator(".watch").text_content().strip()
