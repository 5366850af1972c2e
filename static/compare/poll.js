// Lane 1, short polling. Read this file first, then long-poll.js, sse.js and
// ws.js: the four have the same functions, so `diff poll.js long-poll.js` shows
// only what changes from one technique to the next.
// Short polling: ask "anything newer than the last id I saw?" every `interval`
// seconds. The server answers at once, most of the time with an empty list.
import { Lane } from "./lane.js";

let lane = null;
let controller = null;
let timer = null;

export function startLane(el, { interval }) {
  stopLane();
  lane = new Lane(el);
  controller = new AbortController();
  ask(el.dataset.url, "", interval, controller.signal);
}

async function ask(url, since, interval, signal) {
  try {
    count();
    const response = await fetch(`${url}?since=${since}`, { signal });
    const { messages, last_id: lastId } = await response.json();
    messages.forEach(show);
    since = lastId;
  } catch (error) {
    if (signal.aborted) return;
  }
  // Chained, not setInterval: the next request leaves only after this answer,
  // so requests never pile up behind a slow one.
  timer = setTimeout(ask, interval * 1000, url, since, interval, signal);
}

function show(message) {
  lane.receive(message);
}

function count() {
  lane.request();
}

export function stopLane() {
  clearTimeout(timer);
  if (controller) controller.abort();
}
