// Demo 2: the counter, its ids and its reconnects. EventSource does the
// resuming by itself: on reconnect it sends Last-Event-ID, the last id it saw.
"use strict";

const main = document.querySelector("main");
const form = document.getElementById("controls");
const list = document.getElementById("events");
const status = document.getElementById("status");
const field = (id) => document.getElementById(id);
let source = null;
let opens = 0;
let lastN = 0;

function start(event) {
  event.preventDefault();
  stop();
  list.textContent = "";
  opens = lastN = 0;
  const fields = new FormData(form);
  const params = new URLSearchParams({ count: fields.get("count"), interval: fields.get("interval") });
  const url = `${main.dataset.streamUrl}?${params}`;
  source = new EventSource(url);
  source.onopen = opened;
  source.onmessage = counted;
  source.addEventListener("end", finished);
  source.onerror = lost;
  startWire(url);
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
async function pollStats() {
  try {
    const response = await fetch(main.dataset.statsUrl);
    field("producers").textContent = (await response.json()).producers;
  } catch {
    field("producers").textContent = "server unreachable";
  }
  setTimeout(pollStats, 1000);
}

form.addEventListener("submit", start);
field("stop").addEventListener("click", stop);
pollStats();
