// What the four lanes share: their counters, latency figures and chart.
// Latency = arrival time on the server's clock - the message's publish time `ts`;
// page.js measures the offset between the page's clock and the server's.

export const lanes = new Map(); // lane name -> Lane, for page.js to fill in bytes
let offset = 0; // seconds to add to the page's clock to read the server's
let top = 1000; // ms at the top of every chart: one scale, so the charts compare

export function setClockOffset(seconds) {
  offset = seconds;
}

export class Lane {
  constructor(el) {
    this.el = el;
    this.messages = this.requests = 0;
    this.bytes = null;
    this.latencies = [];
    this.lastId = null;
    el.querySelector(".events").textContent = "";
    lanes.set(el.dataset.lane, this);
    this.render();
  }

  request() {
    this.requests += 1;
    this.render();
  }

  receive(message) {
    const latency = Date.now() + offset * 1000 - message.ts * 1000;
    this.messages += 1;
    this.latencies.push(latency);
    top = Math.max(top, Math.ceil(latency / 500) * 500);
    const item = document.createElement("li");
    item.dataset.id = message.id;
    // A gap or a repeat shows in red: no lane should ever have one.
    if (this.lastId !== null && message.id !== this.lastId + 1) item.className = "gap";
    item.textContent = `#${message.id} ${message.text} · ${Math.round(latency)} ms`;
    const list = this.el.querySelector(".events");
    list.prepend(item);
    if (list.childElementCount > 30) list.lastElementChild.remove();
    this.lastId = message.id;
    this.render();
  }

  setBytes(bytes) {
    this.bytes = bytes;
    this.render();
  }

  render() {
    const sorted = [...this.latencies].sort((a, b) => a - b);
    const mean = sorted.reduce((sum, value) => sum + value, 0) / sorted.length;
    const p95 = sorted[Math.max(0, Math.ceil(sorted.length * 0.95) - 1)];
    const perMessage = (total, digits) => (this.messages && total !== null ? (total / this.messages).toFixed(digits) : "–");
    this.field("messages", this.messages);
    this.field("requests", this.requests);
    this.field("requests-per-message", perMessage(this.requests, 2));
    this.field("bytes", this.bytes === null ? "–" : this.bytes.toLocaleString("en"));
    this.field("bytes-per-message", perMessage(this.bytes, 0));
    this.field("mean", sorted.length ? `${Math.round(mean)} ms` : "–");
    this.field("p95", sorted.length ? `${Math.round(p95)} ms` : "–");
    this.draw();
  }

  field(name, value) {
    this.el.querySelector(`[data-field="${name}"]`).textContent = value;
  }

  // One bar per message, newest on the right; the label is the shared scale.
  draw() {
    const canvas = this.el.querySelector("canvas");
    const context = canvas.getContext("2d");
    const { width, height } = canvas;
    const bars = this.latencies.slice(-Math.floor(width / 6));
    context.clearRect(0, 0, width, height);
    context.fillStyle = "#0b6bcb";
    bars.forEach((latency, i) => {
      const h = Math.max(1, (Math.min(latency, top) / top) * (height - 12));
      context.fillRect(width - (bars.length - i) * 6, height - h, 5, h);
    });
    context.fillStyle = "#5b6673";
    context.fillText(`${top} ms`, 2, 10);
  }
}
