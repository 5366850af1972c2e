// Demo 1: EventSource renders the events; the wire panel shows the same stream's bytes.
import { field, urlWith } from "./kit.js";
import { startWire, stopWire } from "./wire.js";

const main = document.querySelector("main");
const form = field("controls");
const list = field("events");
const status = field("status");
let source = null;

// A blank field stays out of the URL: the server's default applies.
function streamUrl() {
  const kind = new FormData(form).get("kind");
  const names = kind === "stream" ? ["count", "interval"] : ["interval", "heartbeat"];
  return urlWith(main.dataset[kind + "Url"], form, names);
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
field("stop").addEventListener("click", stop);
