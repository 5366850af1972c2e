// Lane 2, long polling. Read poll.js first: this file differs only where the
// technique does.
// Long polling: ask "anything newer than the last id I saw?" and let the server
// hold the request until there is, or until `timeout` seconds pass; ask again
// as soon as it answers.
import { Lane } from "./lane.js";

let lane = null;
let controller = null;
let timer = null;

export function startLane(el, { timeout }) {
  stopLane();
  lane = new Lane(el);
  controller = new AbortController();
  ask(el.dataset.url, "", timeout, controller.signal);
}

async function ask(url, since, timeout, signal) {
  let pause = 0;
  try {
    count();
    const query = timeout ? `since=${since}&timeout=${timeout}` : `since=${since}`; // no timeout: the server's default
    const response = await fetch(`${url}?${query}`, { signal });
    const { messages, last_id: lastId } = await response.json();
    messages.forEach(show);
    since = lastId;
  } catch (error) {
    if (signal.aborted) return;
    pause = 1000; // server down: don't spin, try again in a second
  }
  // The next request leaves at once: the server does the waiting.
  timer = setTimeout(ask, pause, url, since, timeout, signal);
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
