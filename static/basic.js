// Demo 1: EventSource renders the events; the wire panel shows the same stream's bytes.
"use strict";

const main = document.querySelector("main");
const form = document.getElementById("controls");
const list = document.getElementById("events");
const status = document.getElementById("status");
let source = null;

function streamUrl() {
  const fields = new FormData(form);
  const kind = fields.get("kind");
  const params = new URLSearchParams({ interval: fields.get("interval") });
  if (kind === "stream") params.set("count", fields.get("count"));
  else params.set("heartbeat", fields.get("heartbeat"));
  return `${main.dataset[kind + "Url"]}?${params}`;
}

function start(event) {
  event.preventDefault();
  stop();
  list.textContent = "";
  const url = streamUrl();
  source = new EventSource(url);
  source.onopen = () => { status.value = "open"; };
  source.onmessage = (message) => show("message", message.data);
  source.addEventListener("tick", (message) => show("tick", message.data));
  source.addEventListener("heartbeat", (message) => show("heartbeat", message.data));
  source.onerror = ended;
  startWire(url);
}

// The data is the server's clock: show it, and how long the event took to arrive.
function show(type, data) {
  const sent = Number(data);
  const item = document.createElement("li");
  item.className = type;
  const delay = Math.round(Date.now() - sent * 1000);
  item.textContent = `${type}: ${new Date(sent * 1000).toLocaleTimeString()} (+${delay} ms)`;
  list.append(item);
  status.value = `${list.childElementCount} events`;
}

// The classic generator just stops; to EventSource that looks like a dropped
// connection, and it would reconnect and start counting again (demo 2 sends an
// end event instead). Here the page closes it.
function ended() {
  status.value = `${list.childElementCount} events; stream closed by the server ` +
    "(EventSource would reconnect and start over, so the page closed it)";
  source.close();
}

function stop() {
  if (source) source.close();
  stopWire();
  status.value = "stopped";
}

form.addEventListener("submit", start);
document.getElementById("stop").addEventListener("click", stop);
