// Lane 4, WebSocket. Read sse.js first: this file has the same functions, and
// does by hand what EventSource did for free: reconnect, and resume after the
// last id seen (?since=). WebSocket: one HTTP request, upgraded to a connection
// that carries frames both ways. The server sends a frame per message; the page
// sends a ping every second on the same connection and shows the round trip.
import { Lane } from "./lane.js";

let lane = null;
let socket = null;
let timer = null; // the next reconnect
let pinger = null;

export function startLane(el) {
  stopLane();
  lane = new Lane(el);
  connect(new URL(el.dataset.url, location.href), "");
}

function connect(url, since) {
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = since === "" ? "" : `?since=${since}`; // none: from now on
  socket = new WebSocket(url);
  socket.onopen = () => { count(); ping(); pinger = setInterval(ping, 1000); }; // one HTTP request each
  socket.onmessage = (event) => receive(JSON.parse(event.data));
  // A WebSocket never reconnects by itself: try again in a second, after the last id.
  socket.onclose = (event) => {
    clearInterval(pinger);
    if (socket === event.target) timer = setTimeout(connect, 1000, url, lane.lastId ?? since);
  };
}

function ping() {
  socket.send(JSON.stringify({ ping: performance.now() })); // answered {"pong": the same number}
}

function receive(message) {
  if ("pong" in message) lane.field("rtt", `${(performance.now() - message.pong).toFixed(1)} ms`);
  else show(message);
}

function show(message) {
  lane.receive(message);
}

function count() {
  lane.request();
}

export function stopLane() {
  clearTimeout(timer);
  clearInterval(pinger);
  if (socket) {
    const closing = socket;
    socket = null; // so its onclose knows it was stopped, not dropped
    closing.close();
  }
}
