// The raw-wire panel: fetch() the same URL the page streams from and print the
// bytes as they arrive, one line of the panel per network read, stamped with
// the time since the request started. Shared by every demo page.
"use strict";

let wireController = null;

async function startWire(url, init = {}, panel = document.getElementById("wire")) {
  stopWire();
  const controller = new AbortController();
  wireController = controller;
  panel.textContent = "";
  const started = performance.now();
  const stamp = () => `+${((performance.now() - started) / 1000).toFixed(3)}s`;
  showWire(panel, `${init.method || "GET"} ${url}`, "note");
  try {
    const response = await fetch(url, { ...init, signal: controller.signal });
    showWire(panel, `${stamp()} HTTP ${response.status} ${response.headers.get("Content-Type")}`, "note");
    const reader = response.body.getReader();
    // stream: true keeps a UTF-8 character split across two reads for the next one.
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      showWire(panel, decoder.decode(value, { stream: true }), "chunk", stamp());
    }
    showWire(panel, `${stamp()} end of stream`, "note");
  } catch (error) {
    const why = error.name === "AbortError" ? "stopped by the page" : `connection lost: ${error.message}`;
    showWire(panel, `${stamp()} ${why}`, "note");
  }
}

function stopWire() {
  if (wireController) wireController.abort();
  wireController = null;
}

// One entry per read. textContent, never innerHTML: the bytes are the server's,
// but a payload may carry anything a user typed.
function showWire(panel, text, kind, time = "") {
  const entry = document.createElement("div");
  entry.className = `wire-${kind}`;
  if (time) entry.dataset.time = time;
  entry.textContent = text;
  panel.append(entry);
  while (panel.childElementCount > 500) panel.firstElementChild.remove();
  panel.scrollTop = panel.scrollHeight;
}
