// The raw-wire panel: fetch() the same URL the page streams from and print the
// bytes as they arrive, one entry per network read, stamped with the time since
// the panel started. Shared by every demo page. It reads with fetchEvents, the
// reader the relay page uses too, so it knows the ids and the retry delay.
import { fetchEvents } from "./sse-fetch.js";

let current = null; // the panel's read in progress; a newer one replaces it

// Prints `init.method url`, the status, every read, then how it ended; resolves
// with that last line, or null when the page stopped it. With resume: true it
// reconnects as EventSource does: after the server's `retry` delay, sending
// Last-Event-ID, until an `end` event (where the page calls close()) or a
// status other than 200 (204 No Content: nothing left).
export async function startWire(url, init = {}, { panel = document.getElementById("wire"), resume = false } = {}) {
  stopWire();
  panel.textContent = "";
  const started = performance.now();
  const run = { panel, controller: new AbortController(), done: false,
                stamp: () => `+${((performance.now() - started) / 1000).toFixed(3)}s` };
  current = run;
  // Once the page has stopped this read or started another, it writes nothing more.
  const say = (text, kind = "note", time = "") => { if (current === run && !run.done) showWire(panel, text, kind, time); };
  const { signal } = run.controller;
  let lastId = "", retry = 3000, ended = false, outcome = null;
  const onEvent = (event) => {
    if (event.id) lastId = event.id;
    if (event.type === "end") ended = true;
  };
  const hooks = {
    response: (response) => say(`${run.stamp()} HTTP ${response.status} ${response.headers.get("Content-Type") ?? ""}`),
    text: (text) => say(text, "chunk", run.stamp()),
    retry: (ms) => { retry = ms; },
  };
  for (;;) {
    const headers = lastId ? { ...init.headers, "Last-Event-ID": lastId } : init.headers;
    say(`${init.method || "GET"} ${url}${lastId ? ` · Last-Event-ID: ${lastId}` : ""}`);
    try {
      const response = await fetchEvents(url, { ...init, headers, signal }, onEvent, hooks);
      if (!response.ok || !response.body) say(await response.text(), "chunk", run.stamp());
      outcome = `HTTP ${response.status}, end of stream`;
      say(`${run.stamp()} end of stream`);
      if (!resume || ended || response.status !== 200) break;
    } catch (error) {
      if (signal.aborted) return null;
      outcome = `connection lost: ${error.message}`;
      say(`${run.stamp()} ${outcome}`);
      if (!resume) break;
    }
    say(`${run.stamp()} reconnecting in ${retry} ms, as EventSource would`);
    await new Promise((resolve) => {
      setTimeout(resolve, retry);
      signal.addEventListener("abort", resolve);
    });
    if (signal.aborted) return null;
  }
  run.done = true;
  return outcome;
}

// Stop the panel's read; the note goes in now, before any newer read starts.
export function stopWire() {
  if (!current) return;
  if (!current.done) showWire(current.panel, `${current.stamp()} stopped by the page`, "note");
  current.controller.abort();
  current = null;
}

// One entry per read. textContent, never innerHTML: the bytes are the server's,
// but a payload may carry anything a user typed.
export function showWire(panel, text, kind, time = "") {
  if (!text) return;
  const entry = document.createElement("div");
  entry.className = `wire-${kind}`;
  if (time) entry.dataset.time = time;
  entry.textContent = text;
  panel.append(entry);
  while (panel.childElementCount > 500) panel.firstElementChild.remove();
  panel.scrollTop = panel.scrollHeight;
}
