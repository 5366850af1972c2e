// Demo 8: an answer that outlives its connection. Ask starts it on the server;
// the page reads its stream with fetch() and keeps the last id it saw. On a
// dropped connection it asks again with Last-Event-ID (EventSource does that by
// itself); on a reload, or in a second tab, it finds the answer's id in the URL
// (#answer=<id>) and reads it from the start. Stop is a request of its own.
import { field, pollStats } from "./kit.js";
import { fetchEvents } from "./sse-fetch.js";
import { showWire } from "./wire.js";

const main = document.querySelector("main");
const form = field("controls");
const status = field("status");
const wire = field("wire");
const ENDS = new Set(["done", "stopped", "relay-error", "store-error"]);
let answer = null; // { id, stream }: the answer this page follows
let reader = null; // the fetch in flight: { controller, paused }
let lastId = 0, connections = 0, events = 0, bytes = 0, firstAt = 0, updatedAt = 0, longest = 0;
let pending = "", drawing = false, ended = false, pausedAt = 0;

const stamp = () => `+${((performance.now() - firstAt) / 1000).toFixed(3)}s`;
const batchMs = () => Number(new FormData(form).get("batch_ms"));

async function ask(event) {
  event.preventDefault();
  const fields = new FormData(form);
  const url = fields.get("fault") ? `${main.dataset.answersUrl}?fault=${fields.get("fault")}` : main.dataset.answersUrl;
  const body = JSON.stringify({ messages: [{ role: "user", content: fields.get("prompt") }] });
  const response = await fetch(url, { method: "POST", body, headers: { "Content-Type": "application/json" } });
  const started = await response.json();
  if (response.status !== 201) return failed(`HTTP ${response.status}: ${started.error}`);
  sessionStorage.setItem(`prompt:${started.id}`, fields.get("prompt")); // for a reload, or the second tab
  follow(started, `You: ${fields.get("prompt")}`);
}

// Follow an answer from its first delta: after Ask, a reload or in a second tab.
function follow(started, shown) {
  stopReading();
  answer = started;
  history.replaceState(null, "", `#answer=${answer.id}`); // what Reload and the second tab find
  lastId = connections = events = bytes = longest = 0;
  firstAt = updatedAt = performance.now();
  pending = "";
  ended = false;
  wire.textContent = "";
  field("answer").textContent = "";
  field("error").hidden = true;
  field("answer-shown").textContent = shown;
  for (const id of ["drop", "reload", "second-tab", "pause", "stop"]) field(id).disabled = false;
  read();
}

// One connection: the stream after lastId. A network error or a drop leads to
// the next one, with Last-Event-ID; an end event (done, stopped, …) to none.
async function read() {
  const controller = new AbortController();
  reader = { controller };
  connections += 1;
  const headers = lastId ? { "Last-Event-ID": String(lastId) } : {};
  const url = batchMs() ? `${answer.stream}?batch_ms=${batchMs()}` : answer.stream;
  showWire(wire, `GET ${url}${lastId ? ` · Last-Event-ID: ${lastId}` : ""}`, "note");
  status.value = lastId ? `resuming after delta ${lastId}…` : "reading…";
  try {
    const response = await fetchEvents(url, { headers, signal: controller.signal }, handle, {
      response: (r) => showWire(wire, `${stamp()} HTTP ${r.status}`, "note"),
      text: (text) => { bytes += new TextEncoder().encode(text).length; showWire(wire, text, "chunk", stamp()); },
    });
    if (!response.ok) return failed(`HTTP ${response.status}: ${(await response.json()).error}`);
    if (!ended) reconnect("the stream ended before the answer did");
  } catch (error) {
    if (!controller.signal.aborted) reconnect(`connection lost: ${error.message}`);
  }
}

function reconnect(why) {
  showWire(wire, `${stamp()} ${why}: reconnecting in 1 s`, "note");
  setTimeout(() => { if (answer && !ended && !pausedAt && !reader?.controller.signal.aborted) read(); }, 1000);
}

function handle({ type, data, id }) {
  events += 1;
  if (type === "message") {
    lastId = Number(id); // the last id seen: sent back as Last-Event-ID on a resume
    append(JSON.parse(data).content);
  } else if (ENDS.has(type)) {
    ended = true;
    for (const button of ["drop", "pause", "stop"]) field(button).disabled = true;
    if (type === "done") status.value = `done: ${lastId} deltas in ${events} events, ${connections} connection(s)`;
    else if (type === "stopped") status.value = `stopped at delta ${JSON.parse(data).at}: ${JSON.parse(data).reason}`;
    else failed(JSON.parse(data).message);
  }
  counters();
}

// The text waits for the next animation frame, then goes in as text (never HTML).
function append(text) {
  pending += text;
  const now = performance.now();
  longest = Math.max(longest, now - updatedAt);
  updatedAt = now;
  if (!drawing) {
    drawing = true;
    requestAnimationFrame(() => {
      drawing = false;
      field("answer").textContent += pending;
      pending = "";
    });
  }
}

function counters() {
  const seconds = (performance.now() - firstAt) / 1000;
  field("last-id").textContent = lastId || "–";
  field("connections").textContent = connections;
  field("events").textContent = events;
  field("rate").textContent = seconds > 0.05 ? (events / seconds).toFixed(1) : "–";
  field("bytes").textContent = bytes;
  field("gap").textContent = `${Math.round(longest)} ms`;
}

function failed(message) {
  field("error").hidden = false;
  field("error").textContent = message;
  status.value = "failed";
}

function stopReading() {
  if (reader) reader.controller.abort();
  reader = null;
}

// Drop: what a train going into a tunnel does. The answer goes on without us.
function drop() {
  showWire(wire, `${stamp()} the page dropped the connection`, "note");
  stopReading();
  reconnect("dropped");
}

// Pause: nobody reads the answer; the server stops it after RESUME_ABANDON_S.
function pause() {
  if (pausedAt) {
    pausedAt = 0;
    field("pause").textContent = "Pause reading";
    field("abandon").textContent = "–";
    return read();
  }
  stopReading();
  pausedAt = performance.now();
  status.value = "paused: nobody reads the answer";
  field("pause").textContent = "Resume reading";
  showWire(wire, `${stamp()} paused: nobody reads the answer now`, "note");
  countdown();
}

function countdown() {
  if (!pausedAt) return;
  const left = Number(main.dataset.abandon) - (performance.now() - pausedAt) / 1000;
  field("abandon").textContent = left > 0 ? `${left.toFixed(1)} s` : "now: the server has stopped the LLM";
  if (left > 0) setTimeout(countdown, 100);
}

async function stop() {
  const response = await fetch(`${answer.stream.replace(/\/stream$/, "")}/stop`, { method: "POST" });
  showWire(wire, `${stamp()} POST …/stop → HTTP ${response.status}`, "note");
}

function batchChanged() {
  const ms = batchMs();
  field("batch-shown").textContent = ms ? `${ms} ms: one event per ${ms} ms at most` : "0 ms: one event per delta";
  if (reader && !ended) { // read on from where we are, batched the new way
    stopReading();
    read();
  }
}

form.addEventListener("submit", ask);
form.elements.batch_ms.addEventListener("change", batchChanged);
field("drop").addEventListener("click", drop);
field("reload").addEventListener("click", () => location.reload());
field("second-tab").addEventListener("click", () => window.open(location.href, "_blank"));
field("pause").addEventListener("click", pause);
field("stop").addEventListener("click", stop);
pollStats(() => main.dataset.statsUrl, (stats, why) => {
  field("running").textContent = stats ? stats.running : why;
});

// A reload, or a second tab: the answer's id is in the URL.
const found = /^#answer=([\w-]+)$/.exec(location.hash);
if (found) {
  const stream = `${main.dataset.answersUrl}/${found[1]}/stream`;
  const prompt = sessionStorage.getItem(`prompt:${found[1]}`);
  follow({ id: found[1], stream }, prompt ? `You: ${prompt}` : "(an answer found in the page's URL)");
}
