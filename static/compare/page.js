// Demo 5's page: starts the four lanes at once, measures the clock offset and
// shows the server's byte counts. The lanes themselves are poll.js,
// long-poll.js, sse.js and ws.js (read them in that order); lane.js draws them.
import * as poll from "./poll.js";
import * as longPoll from "./long-poll.js";
import * as sse from "./sse.js";
import * as ws from "./ws.js";
import { lanes, setClockOffset } from "./lane.js";
import { startWire, stopWire } from "../wire.js";

const main = document.querySelector("main");
const form = document.getElementById("controls");
const status = document.getElementById("status");
const scripts = { poll, "long-poll": longPoll, sse, ws };
let baseline = null; // /stats when Start was pressed: the page shows what came after
let statsTimer = null;

async function start(event) {
  event.preventDefault();
  stop();
  const fields = new FormData(form);
  const settings = { interval: Number(fields.get("interval")), timeout: fields.get("timeout") }; // "": the server's default
  status.value = "measuring the clock offset…";
  try {
    setClockOffset(await clockOffset());
    baseline = await stats();
  } catch (error) {
    status.value = `server unreachable: ${error.message}`;
    return;
  }
  for (const [name, script] of Object.entries(scripts)) {
    script.startLane(document.getElementById(`lane-${name}`), settings);
  }
  // The raw-wire panel reads a second copy of the SSE stream; the header keeps
  // it out of the server's counts, which should show the SSE lane alone.
  startWire(main.dataset.sseUrl, { headers: { "X-Uncounted": "raw-wire panel" } });
  statsTimer = setTimeout(showBytes, 1000);
}

// Server clock minus page clock, from the quickest of five round trips: the
// server read its clock somewhere in the middle of that trip.
async function clockOffset() {
  let best = { rtt: Infinity, offset: 0 };
  for (let i = 0; i < 5; i += 1) {
    const sent = Date.now();
    const { time } = await (await fetch(main.dataset.timeUrl, { cache: "no-store" })).json();
    const received = Date.now();
    if (received - sent < best.rtt) best = { rtt: received - sent, offset: time - (sent + received) / 2000 };
  }
  status.value = `running; clock offset ${Math.round(best.offset * 1000)} ms ± ${Math.ceil(best.rtt / 2)} ms`;
  return best.offset;
}

async function stats() {
  return (await fetch(main.dataset.statsUrl, { cache: "no-store" })).json();
}

async function showBytes() {
  try {
    const now = await stats();
    for (const [name, lane] of lanes) lane.setBytes(now.lanes[name].bytes - baseline.lanes[name].bytes);
  } catch {
    status.value = "server unreachable; the lanes keep trying";
  }
  statsTimer = setTimeout(showBytes, 1000);
}

function stop() {
  Object.values(scripts).forEach((script) => script.stopLane());
  clearTimeout(statsTimer);
  stopWire();
  status.value = "stopped";
}

form.addEventListener("submit", start);
document.getElementById("stop").addEventListener("click", stop);
