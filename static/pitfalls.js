// Demo 7: one stream, a switch per pitfall. Each event is listed with the time it
// arrived: a steady rhythm is streaming, a burst of events at one instant is a
// buffer on the way. The counters show reconnects and the server's producers.
import { field, pollStats, urlWith } from "./kit.js";
import { startWire, stopWire } from "./wire.js";

const main = document.querySelector("main");
const form = field("controls");
const list = field("events");
const status = field("status");
let source = null;
let started = 0;
let last = 0;
let opens = 0;

// A blank field or an unticked box stays out of the URL: the server's default applies.
function streamUrl() {
  const base = main.dataset[new FormData(form).get("via") + "Url"];
  return urlWith(base, form, ["count", "interval", "delay", "heartbeat", "end", "ids", "retry", "jitter", "bare"]);
}

function start(event) {
  event.preventDefault();
  stop();
  list.textContent = "";
  opens = 0;
  started = last = performance.now();
  show();
  const url = streamUrl();
  source = new EventSource(url);
  source.onopen = opened;
  source.onmessage = received;
  source.addEventListener("end", finished);
  source.onerror = failed;
  startWire(url);
  status.value = "connecting…";
}

function opened() {
  opens += 1;
  show();
  status.value = opens > 1 ? "reconnected: the stream starts over" : "open";
}

// When did it arrive, and how long after the one before? A replayed number
// (a reconnect that started over) is marked.
function received(message) {
  const { n } = JSON.parse(message.data);
  const now = performance.now();
  const item = document.createElement("li");
  item.className = opens > 1 && !message.lastEventId ? "gap" : "";
  item.textContent = `#${n} at +${((now - started) / 1000).toFixed(3)} s ` +
    `(${((now - last) / 1000).toFixed(3)} s after the previous)` +
    (message.lastEventId ? `, id ${message.lastEventId}` : "") + (opens > 1 ? `, connection ${opens}` : "");
  list.append(item);
  last = now;
  show();
}

function finished() {
  source.close(); // without this EventSource would reconnect and replay the stream
  status.value = `done: end event received, closed after ${opens} connection(s)`;
}

function failed() {
  status.value = source.readyState === EventSource.CLOSED
    ? "closed for good: the server answered 204 or an error status"
    : "connection ended: EventSource reconnects after its retry delay…";
}

export function stop() {
  if (source) source.close();
  source = null;
  stopWire();
  status.value = "stopped: the page left, as a closed tab does";
}

function show() {
  field("opens").textContent = opens;
  field("reconnects").textContent = Math.max(0, opens - 1);
  field("received").textContent = list.childElementCount;
}

function preset(event) {
  form.reset();
  for (const [name, value] of new URLSearchParams(event.target.dataset.preset)) {
    const input = form.elements[name];
    if (input.type === "checkbox") input.checked = value === "1";
    else input.value = value;
  }
  form.requestSubmit();
}

// Producers still running on the server. While six streams hold every
// connection to this host, this request waits in the browser's queue too.
function showProducers(stats, why) {
  field("producers").textContent = stats ? stats.producers : `(${why})`;
}

// The server opens clients of a busy stream that never read (closed laptop lids).
async function closeLids(event) {
  const response = await fetch(`${event.target.dataset.lidsUrl}?count=5`, { method: "POST" });
  const answer = await response.json();
  field("lids-status").textContent = response.ok
    ? `${answer.opened} lids closed at ${new Date().toLocaleTimeString()}; let go after ~${answer.send_timeout} s`
    : answer.error;
}

form.addEventListener("submit", start);
field("lids").addEventListener("click", closeLids);
field("stop").addEventListener("click", stop);
for (const button of document.querySelectorAll("[data-preset]")) button.addEventListener("click", preset);
pollStats(() => main.dataset.statsUrl, showProducers, 500);
