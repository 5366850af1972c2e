// Demo 3: a chat page reading the relay. Send POSTs with fetch() and reads the
// body as it arrives (EventSource can only GET); the GET button shows the
// EventSource way, and why it must close() on `done`.
"use strict";

const main = document.querySelector("main");
const form = document.getElementById("controls");
const field = (id) => document.getElementById(id);
const status = field("status");
let controller = null; // the fetch() in flight: Stop aborts it
let source = null; // the EventSource, in GET mode
let started = 0, firstAt = 0, pieces = 0, pending = "", drawing = false, done = false;
const UPSTREAM_FRAME = /event: upstream\ndata: .*\n\n/g; // debug copies, shown on the left

// --- rendering: the text waits for the next animation frame, then goes in as text
function append(text) {
  if (!firstAt) {
    firstAt = performance.now();
    field("ttft").textContent = `${Math.round(firstAt - started)} ms`;
  }
  pieces += 1;
  pending += text;
  if (!drawing) {
    drawing = true;
    requestAnimationFrame(draw);
  }
}

// One DOM update per frame however many tokens arrived; textContent, never
// innerHTML: the answer may quote the prompt, and the prompt may hold HTML.
function draw() {
  drawing = false;
  field("answer").textContent += pending;
  pending = "";
  const seconds = (performance.now() - firstAt) / 1000;
  if (seconds > 0.05) field("rate").textContent = (pieces / seconds).toFixed(1);
}

function handle(type, data) {
  if (type === "message") append(JSON.parse(data).content);
  else if (type === "usage") field("usage").textContent = describeUsage(JSON.parse(data));
  else if (type === "upstream") showWire(field("upstream-wire"), JSON.parse(data), "chunk", stamp());
  else if (type === "relay-error") failed(`${JSON.parse(data).message} (status ${JSON.parse(data).status})`);
  else if (type === "done") {
    done = true;
    status.value = "done";
  }
}

const describeUsage = (u) => `${u.prompt_tokens} in, ${u.completion_tokens} out, ${u.total_tokens} total`;
const stamp = () => `+${((performance.now() - started) / 1000).toFixed(3)}s`;

function failed(message) {
  field("error").hidden = false;
  field("error").textContent = message;
  status.value = "failed";
}

function reset(prompt) {
  stop();
  started = performance.now();
  firstAt = pieces = 0;
  pending = "";
  done = false;
  field("prompt-shown").textContent = `You: ${prompt}`;
  for (const id of ["answer", "error", "wire", "upstream-wire"]) field(id).textContent = "";
  for (const id of ["ttft", "rate", "usage", "opens"]) field(id).textContent = "–";
  field("error").hidden = true;
  status.value = "waiting for the first token…";
}

// --- POST with fetch(): the way a chat app sends a conversation
async function send(event) {
  event.preventDefault();
  const fields = new FormData(form);
  reset(fields.get("prompt"));
  const params = new URLSearchParams();
  if (fields.get("fault")) params.set("fault", fields.get("fault"));
  if (fields.get("debug")) params.set("debug", "1");
  const url = `${main.dataset.chatUrl}?${params}`;
  const body = JSON.stringify({ messages: [{ role: "user", content: fields.get("prompt") }] });
  controller = new AbortController();
  const wire = field("wire");
  showWire(wire, `POST ${url}${params.has("debug") ? " (its event: upstream frames go to the left panel)" : ""}`, "note");
  try {
    const response = await fetch(url, { method: "POST", body, signal: controller.signal,
                                        headers: { "Content-Type": "application/json" } });
    showWire(wire, `${stamp()} HTTP ${response.status} ${response.headers.get("Content-Type")}`, "note");
    if (!response.ok) return failed(`HTTP ${response.status}: ${(await response.json()).error}`);
    const reader = response.body.getReader();
    const decoder = new TextDecoder(); // stream: true keeps a split character for the next read
    const feed = eventParser(handle);
    for (;;) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      const text = decoder.decode(value, { stream: true });
      const own = text.replace(UPSTREAM_FRAME, ""); // what the relay itself says
      if (own) showWire(wire, own, "chunk", stamp());
      feed(text);
    }
    showWire(wire, `${stamp()} end of stream`, "note");
    if (!done && field("error").hidden) failed("the stream ended before done");
  } catch (error) {
    if (error.name !== "AbortError") failed(`connection lost: ${error.message}`);
  }
}

// The rules of streamkit/sse.py's EventParser, enough for the relay's own output:
// lines end at LF, CRLF or CR; `:` starts a comment; a blank line dispatches.
function eventParser(onEvent) {
  let buffer = "", data = [], type = "";
  return function feed(text) {
    const lines = (buffer + text).split(/\r\n|\n|\r(?!$)/); // a CR at the end may be half a CRLF
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (data.length) onEvent(type || "message", data.join("\n"));
        data = [];
        type = "";
        continue;
      }
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (name === "data") data.push(value);
      else if (name === "event") type = value;
    }
  };
}

// --- GET with EventSource: simpler, but it reconnects whenever the response
// ends, so a finished answer would be asked for (and paid for) again.
function sendWithEventSource() {
  const fields = new FormData(form);
  reset(fields.get("prompt"));
  const params = new URLSearchParams({ q: fields.get("prompt") });
  if (fields.get("fault")) params.set("fault", fields.get("fault"));
  const url = `${main.dataset.chatUrl}?${params}`;
  let opens = 0;
  source = new EventSource(url);
  showWire(field("wire"), `EventSource GET ${url} (it hides the bytes: the events are listed instead)`, "note");
  source.onopen = () => {
    opens += 1;
    field("opens").textContent = opens;
    if (opens > 1) {
      showWire(field("wire"), `${stamp()} reconnected: the relay asked the LLM again`, "note");
      field("answer").textContent += "\n\n[the same answer, again:] ";
    }
  };
  source.onmessage = (event) => { logEvent(event); handle("message", event.data); };
  for (const type of ["usage", "relay-error", "done"]) {
    source.addEventListener(type, (event) => { logEvent(event); handle(type, event.data); });
  }
  source.addEventListener("done", () => {
    if (fields.get("close-on-done")) return source.close();
    if (opens < 2) return showWire(field("wire"), `${stamp()} done, but not closed…`, "note");
    source.close(); // one repeat makes the point; a real LLM bills every one
    status.value = "done twice: without close(), EventSource asks again after every answer";
  });
  source.addEventListener("relay-error", () => source.close());
  source.onerror = sourceError;
}

function logEvent(event) {
  showWire(field("wire"), `${stamp()} ${event.type}: ${event.data}`, "chunk");
}

function sourceError() {
  if (source.readyState === EventSource.CLOSED) {
    // An HTTP error status: EventSource gives up, and cannot tell us which one.
    failed("EventSource failed: the relay answered an HTTP error (fetch() could read it; EventSource cannot)");
  } else {
    showWire(field("wire"), `${stamp()} the response ended: EventSource will reconnect in a few seconds`, "note");
  }
}

function stop() {
  if (controller) controller.abort();
  if (source) source.close();
  controller = source = null;
  if (status.value !== "done" && status.value !== "failed") status.value = "stopped";
}

form.addEventListener("submit", send);
field("stop").addEventListener("click", stop);
field("send-get").addEventListener("click", sendWithEventSource);
