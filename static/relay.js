// Demo 3: a chat page reading the relay, simple (/relay/simple) or production
// (/relay/chat): the same wire. Send POSTs with fetch() and reads the body as it
// arrives with fetchEvents (sse-fetch.js: EventSource can only GET); the GET
// button shows the EventSource way, and why it must close() on `done`.
import { field, pollStats } from "./kit.js";
import { fetchEvents } from "./sse-fetch.js";
import { showWire } from "./wire.js";

const main = document.querySelector("main");
const form = field("controls");
const status = field("status");
let controller = null; // the fetch() in flight: Stop aborts it
let source = null; // the EventSource, in GET mode
let started = 0, firstAt = 0, pieces = 0, pending = "", drawing = false, finished = false;
const UPSTREAM_FRAME = /event: upstream\ndata: .*\n\n/g; // debug copies, shown on the left

// --- rendering: the text waits for the next animation frame, then goes in as text
function append(text) {
  if (!firstAt) {
    firstAt = performance.now();
    field("ttft").textContent = `${Math.round(firstAt - started)} ms`;
    status.value = "streaming…";
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

function handle({ type, data }) {
  if (type === "message") append(JSON.parse(data).content);
  else if (type === "usage") field("usage").textContent = describeUsage(JSON.parse(data));
  else if (type === "upstream") showWire(field("upstream-wire"), JSON.parse(data), "chunk", stamp());
  else if (type === "relay-error") failed(`${JSON.parse(data).message} (status ${JSON.parse(data).status})`);
  else if (type === "done") done();
}

function done() {
  finished = true;
  const seconds = firstAt ? (performance.now() - firstAt) / 1000 : 0;
  const rate = seconds > 0.05 ? `, ${(pieces / seconds).toFixed(1)} tokens/s` : "";
  status.value = `done: ${pieces} tokens${rate}`;
}

// The relay the page reads: main's data-simple-url or data-chat-url.
const relayUrl = (fields) => main.dataset[fields.get("relay") === "chat" ? "chatUrl" : "simpleUrl"];
const describeUsage = (u) => `${u.prompt_tokens} in, ${u.completion_tokens} out, ${u.total_tokens} total`;
const stamp = () => `+${((performance.now() - started) / 1000).toFixed(3)}s`;

function failed(message) {
  finished = true;
  field("error").hidden = false;
  field("error").textContent = message;
  status.value = "failed";
}

function reset(prompt) {
  stop();
  started = performance.now();
  firstAt = pieces = 0;
  pending = "";
  finished = false;
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
  // debug=1 (the upstream's raw reads) is the production relay's: the simple one has no reader to copy them.
  if (fields.get("debug") && fields.get("relay") === "chat") params.set("debug", "1");
  const url = String(params) ? `${relayUrl(fields)}?${params}` : relayUrl(fields);
  const body = JSON.stringify({ messages: [{ role: "user", content: fields.get("prompt") }] });
  controller = new AbortController();
  const { signal } = controller;
  // Once Stop or a newer Send has aborted this one, it writes nothing more.
  const say = (text, kind = "note", time = "") => { if (!signal.aborted) showWire(field("wire"), text, kind, time); };
  say(`POST ${url}${params.has("debug") ? " (its event: upstream frames go to the left panel)" : ""}`);
  try {
    const response = await fetchEvents(url, {
      method: "POST", body, signal, headers: { "Content-Type": "application/json" },
    }, handle, {
      response: (r) => say(`${stamp()} HTTP ${r.status} ${r.headers.get("Content-Type")}`),
      text: (text) => say(text.replace(UPSTREAM_FRAME, ""), "chunk", stamp()), // what the relay itself says
    });
    if (!response.ok) return failed(`HTTP ${response.status}: ${(await response.json()).error}`);
    say(`${stamp()} end of stream`);
    if (!finished) failed("the stream ended before done");
  } catch (error) {
    if (!signal.aborted) failed(`connection lost: ${error.message}`);
  }
}

// --- GET with EventSource: simpler, but it reconnects whenever the response
// ends, so a finished answer would be asked for (and paid for) again.
function sendWithEventSource() {
  const fields = new FormData(form);
  reset(fields.get("prompt"));
  const params = new URLSearchParams({ q: fields.get("prompt") });
  if (fields.get("fault")) params.set("fault", fields.get("fault"));
  const url = `${relayUrl(fields)}?${params}`;
  const wire = field("wire");
  let opens = 0;
  source = new EventSource(url);
  showWire(wire, `EventSource GET ${url} (it hides the bytes: the events are listed instead)`, "note");
  source.onopen = () => {
    opens += 1;
    field("opens").textContent = opens;
    if (opens > 1) {
      showWire(wire, `${stamp()} reconnected: the relay asked the LLM again`, "note");
      field("answer").textContent += "\n\n[the same answer, again:] ";
    }
  };
  source.onmessage = (event) => { logEvent(event); handle(event); };
  for (const type of ["usage", "relay-error", "done"]) {
    source.addEventListener(type, (event) => { logEvent(event); handle(event); });
  }
  source.addEventListener("done", () => {
    if (fields.get("close-on-done")) {
      source.close();
      return showWire(wire, `${stamp()} source.close(): EventSource will not reconnect`, "note");
    }
    if (opens < 2) return showWire(wire, `${stamp()} done, but not closed…`, "note");
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
  if (controller && !controller.signal.aborted && !finished) {
    showWire(field("wire"), `${stamp()} stopped by the page: the fetch is aborted`, "note");
  }
  if (controller) controller.abort();
  if (source) source.close();
  controller = source = null;
  if (!finished) status.value = "stopped";
}

form.addEventListener("submit", send);
field("stop").addEventListener("click", stop);
field("send-get").addEventListener("click", sendWithEventSource);

// How many LLM streams each relay holds open right now. After Stop during a `stall`,
// the simple relay keeps one until UPSTREAM_TIMEOUT; the production one lets go at once.
function showHeld(stats, why) {
  field("held").textContent = stats ? `simple ${stats.simple}, production ${stats.production}` : why;
}
pollStats(() => main.dataset.statsUrl, showHeld);
