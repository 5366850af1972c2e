// The Node/Express peer of bench/fanout.py: the idiomatic broadcast of its ecosystem,
// a Set of open responses and one timer that writes each message to every one.
// node server.js PORT   (GET /events, GET /healthz)
const express = require("express");

const app = express();
const clients = new Set();
let id = 0;

app.get("/events", (req, res) => {
  res.set({ "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no" });
  res.flushHeaders();
  res.write(": ping\n\n");
  clients.add(res);
  req.on("close", () => clients.delete(res));
});

app.get("/healthz", (req, res) => res.send("ok"));

setInterval(() => {
  id += 1;
  const frame = `id: ${id}\ndata: ${JSON.stringify({ id, ts: Date.now() / 1000, text: `tick ${id}` })}\n\n`;
  for (const res of clients) res.write(frame);
}, 1000);

app.listen(Number(process.argv[2] || 3000), "127.0.0.1");
