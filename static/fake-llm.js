// Demo 4: send one request to the fake LLM and print its raw answer with the
// shared wire panel (wire.js), next to the same request written as curl.
import { field, pollStats } from "./kit.js";
import { startWire, stopWire } from "./wire.js";

const main = document.querySelector("main");
const form = field("controls");
const status = field("status");

function request(fields) {
  const kind = fields.get("kind");
  if (kind === "models") return { url: main.dataset.modelsUrl, init: { method: "GET", headers: {} } };
  const messages = [{ role: "user", content: fields.get("prompt") }];
  const headers = { "Content-Type": "application/json" };
  if (fields.get("fault")) headers["X-Fake-Fault"] = fields.get("fault");
  let body = { model: "fake-llm", messages, stream: kind === "openai", stream_options: { include_usage: true } };
  if (kind === "openai-json") delete body.stream_options;
  if (kind === "dashscope") {
    headers["X-DashScope-SSE"] = "enable";
    body = { model: "qwen-turbo", input: { messages } };
  }
  return { url: main.dataset[kind === "dashscope" ? "dashscopeUrl" : "openaiUrl"],
           init: { method: "POST", headers, body: JSON.stringify(body) } };
}

function asCurl({ url, init }) {
  const quote = (text) => `'${text.replaceAll("'", "'\\''")}'`;
  const lines = [`curl -N ${quote(new URL(url, location.href).href)}`];
  for (const [name, value] of Object.entries(init.headers)) lines.push(`  -H ${quote(`${name}: ${value}`)}`);
  if (init.body) lines.push(`  -d ${quote(init.body)}`);
  return lines.join(" \\\n");
}

async function send(event) {
  event.preventDefault();
  const call = request(new FormData(form));
  field("request").textContent = asCurl(call);
  status.value = "streaming…";
  const outcome = await startWire(call.url, call.init);
  if (outcome) status.value = outcome; // null: Stop, or a newer Send, has the status now
}

function stop() {
  stopWire();
  status.value = "stopped";
}

function showStreams(stats, why) {
  field("open-streams").textContent = stats ? stats.open_streams : why;
}

form.addEventListener("submit", send);
field("stop").addEventListener("click", stop);
pollStats(() => main.dataset.statsUrl, showStreams);
