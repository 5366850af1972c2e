// Lane 3, Server-Sent Events. Read poll.js and long-poll.js first: this file
// has the same functions, and no loop at all.
// SSE: one request, and the server writes each message into the open response.
// EventSource keeps the last `id:` it saw and, if the connection drops, sends it
// back as Last-Event-ID when it reconnects, so nothing is lost.
import { Lane } from "./lane.js";

let lane = null;
let source = null;

export function startLane(el) {
  stopLane();
  lane = new Lane(el);
  source = new EventSource(el.dataset.url);
  source.onopen = count; // every (re)connection is one HTTP request
  source.onmessage = (event) => show(JSON.parse(event.data));
}

function show(message) {
  lane.receive(message);
}

function count() {
  lane.request();
}

export function stopLane() {
  if (source) source.close();
}
