// Demo 6: publish/subscribe. EventSource joins a channel, fetch() publishes to it,
// and every tab on the channel gets each message once, from whichever worker
// holds its stream: the pid in the data says which.
import { field, pollStats, urlWith } from "./kit.js";
import { startWire, stopWire } from "./wire.js";

const main = document.querySelector("main");
const joinForm = field("controls");
const publishForm = field("publish");
const list = field("messages");
let source = null;
let channel = ""; // blank: the server's default channel
let opens = 0;

function join(event) {
  if (event) event.preventDefault();
  leave();
  channel = joinForm.elements.channel.value;
  list.textContent = "";
  opens = 0;
  const url = urlWith(main.dataset.streamUrl, joinForm, ["channel"]);
  source = new EventSource(url);
  source.onopen = opened;
  source.onmessage = received;
  source.addEventListener("notice", noticed);
  source.onerror = lost;
  startWire(url);
}

function opened() {
  opens += 1;
  field("status").value = `joined ${channel || "the default channel"}`;
  // Pub/sub has no replay: whatever was published while we were away is gone.
  if (opens > 1) show("reconnected: messages published meanwhile were not replayed", "gap");
}

function received(event) {
  const { message, ts, pid } = JSON.parse(event.data);
  const late = Math.max(0, Date.now() - ts * 1000).toFixed(0);
  show(`#${event.lastEventId} ${message}  (worker ${pid}, ${late} ms after publish)`);
  field("pid").textContent = `worker ${pid}`;
}

function noticed(event) {
  const { state, detail, pid } = JSON.parse(event.data);
  show(`${state}: ${detail} (worker ${pid})`, "gap");
}

function lost() {
  field("status").value = source.readyState === EventSource.CONNECTING
    ? "connection lost: EventSource is reconnecting…" : "closed";
}

function leave() {
  if (source) source.close();
  source = null;
  stopWire();
  field("status").value = "left";
}

// One list item per event; textContent, so a message can never become markup.
function show(text, className = "") {
  const item = document.createElement("li");
  item.className = className;
  item.textContent = text;
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

async function publish(event) {
  event.preventDefault();
  const headers = { "Content-Type": "application/json" };
  const token = publishForm.elements.token?.value;
  if (token) headers.Authorization = `Bearer ${token}`;
  const message = publishForm.elements.message.value;
  const body = channel ? { channel, message } : { message };
  const response = await fetch(main.dataset.publishUrl, {
    method: "POST", headers, body: JSON.stringify(body),
  });
  const answer = await response.json();
  field("published").value = response.ok ? `published #${answer.id}` : `${response.status}: ${answer.error}`;
  if (response.ok) publishForm.elements.message.value = "";
}

// Subscribers of the channel on every worker, as the server counts them.
function showSubscribers(stats, why) {
  field("subscribers").textContent = stats ? stats.subscribers : `unknown (${why})`;
  if (stats) field("workers").textContent = stats.workers.map((w) => `${w.pid}: ${w.subscribers}`).join(", ") || "none";
}

joinForm.addEventListener("submit", join);
publishForm.addEventListener("submit", publish);
field("leave").addEventListener("click", leave);
join(); // join the default channel at once: open a second tab and publish
pollStats(() => (channel ? `${main.dataset.statsUrl}?${new URLSearchParams({ channel })}` : main.dataset.statsUrl),
          showSubscribers);
