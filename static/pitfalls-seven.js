// Seven EventSources to one host over HTTP/1.1. The browser keeps at most six
// connections per host, so the seventh stays "connecting" until one closes.
import { field } from "./kit.js";
import { stop } from "./pitfalls.js"; // the stream above, and its raw-wire copy

const main = document.querySelector("main");
const sevenList = field("seven");
let seven = [];

function openSeven() {
  closeSeven();
  stop(); // the stream above and its raw-wire fetch would take two of the six
  const url = `${main.dataset.streamUrl}?count=1000&interval=1&heartbeat=1`;
  for (let i = 1; i <= 7; i += 1) {
    const item = document.createElement("li");
    item.textContent = `stream ${i}: connecting…`;
    const source = new EventSource(url);
    let events = 0;
    source.onopen = () => { item.className = "open"; item.textContent = `stream ${i}: open`; };
    source.onmessage = () => { events += 1; item.textContent = `stream ${i}: open, ${events} events`; };
    seven.push({ source, item });
    sevenList.append(item);
  }
}

// Close the first stream still open: its connection goes to the one waiting.
function closeOne() {
  const entry = seven.find(({ item }) => item.className === "open");
  if (!entry) return;
  entry.source.close();
  entry.item.className = "closed";
  entry.item.textContent += " (closed)";
}

function closeSeven() {
  for (const { source } of seven) source.close();
  seven = [];
  sevenList.textContent = "";
}

field("open-seven").addEventListener("click", openSeven);
field("close-one").addEventListener("click", closeOne);
field("close-seven").addEventListener("click", closeSeven);
