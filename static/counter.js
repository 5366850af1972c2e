// Demo 2: the counter, its ids and its reconnects. EventSource does the
// resuming by itself: on reconnect it sends Last-Event-ID, the last id it saw.
// The raw-wire panel's fetch() does the same by hand (resume: true), so its
// request lines show the header.
import { field, pollStats, urlWith } from "./kit.js";
import { startWire, stopWire } from "./wire.js";

const main = document.querySelector("main");
const form = field("controls");
const list = field("events");
const status = field("status");
let source = null;
let opens = 0;
let lastN = 0;

function start(event) {
  event.preventDefault();
  stop();
  list.textContent = "";
  opens = lastN = 0;
  const url = urlWith(main.dataset.streamUrl, form, ["count", "interval"]);
  source = new EventSource(url);
  source.onopen = opened;
  source.onmessage = counted;
  source.addEventListener("end", finished);
  source.onerror = lost;
  startWire(url, {}, { resume: true });
}

function opened() {
  opens += 1;
  field("opens").textContent = opens;
  field("reconnects").textContent = opens - 1;
  status.value = opens > 1 ? `reconnected, resuming after id ${lastN}` : "open";
}

function counted(message) {
  const { n, ts } = JSON.parse(message.data);
  const item = document.createElement("li");
  // A gap or a repeat would show here; resuming with Last-Event-ID avoids both.
  item.className = n === lastN + 1 ? "" : "gap";
  item.textContent = `#${n} (id ${message.lastEventId}, ${Date.now() - ts} ms after it was sent)`;
  list.append(item);
  lastN = n;
  field("last-id").textContent = message.lastEventId;
}

// Without this close() EventSource would reconnect when the server ends the
// response; the server would answer 204 (nothing left), but why ask.
function finished() {
  status.value = `done: ${lastN} events, ${opens - 1} reconnects`;
  source.close();
}

function lost() {
  status.value = source.readyState === EventSource.CONNECTING
    ? "connection lost: EventSource retries after the server's retry delay…"
    : "closed";
}

function stop() {
  if (source) source.close();
  stopWire();
  status.value = "stopped";
}

// The producers the server is running right now: one per open stream.
function showProducers(stats, why) {
  field("producers").textContent = stats ? stats.producers : why;
}

form.addEventListener("submit", start);
field("stop").addEventListener("click", stop);
pollStats(() => main.dataset.statsUrl, showProducers);
