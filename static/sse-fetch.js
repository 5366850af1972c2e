// Read an event stream with fetch(), as EventSource does, but with any method,
// headers and body (a chat POSTs its messages), and with the HTTP status in hand.
// The parser follows the WHATWG rules for text/event-stream:
// https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

// Calls onEvent({ type, data, id }) once per event, and resolves with the
// response when the body ends. Stop it with init.signal (an AbortController's):
// the read in progress then rejects with an AbortError. A response that is not
// 2xx comes back unread, for the caller to show its error, and so does a 204
// (no body: the server's "nothing more, stop for good"). Optional hooks:
// response(res) before the body is read, text(str) after every network read,
// retry(ms) when the server sets its reconnection delay.
export async function fetchEvents(url, init, onEvent, hooks = {}) {
  const response = await fetch(url, init);
  hooks.response?.(response);
  if (!response.ok || !response.body) return response;
  const reader = response.body.getReader();
  const decoder = new TextDecoder(); // UTF-8; it drops a leading BOM, as the spec asks
  const parse = eventParser(onEvent, hooks.retry);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return response;
    // stream: true keeps a character split across two reads for the next one.
    const text = decoder.decode(value, { stream: true });
    hooks.text?.(text);
    parse(text);
  }
}

// Text in, events out. Holds what the last read left unfinished.
export function eventParser(onEvent, onRetry = () => {}) {
  let rest = "", data = [], type = "", id = "", afterCR = false;
  return function parse(text) {
    // A line ends at CRLF, LF or CR. A read may end between the CR and the LF
    // of a CRLF: the line ended at the CR, so skip the LF the next read brings.
    if (!text) return; // half a character so far: nothing to parse, and nothing changes
    if (afterCR && text.startsWith("\n")) text = text.slice(1);
    afterCR = text.endsWith("\r");
    const lines = (rest + text).split(/\r\n|\r|\n/);
    rest = lines.pop(); // the unfinished last line waits for the next read
    for (const line of lines) {
      if (line === "") { // only a blank line dispatches: an unfinished event is never shown
        if (data.length) onEvent({ type: type || "message", data: data.join("\n"), id });
        data = [];
        type = ""; // the id stays: it is the last id seen, sent back on reconnect
        continue;
      }
      if (line.startsWith(":")) continue; // a comment, such as a ": ping" heartbeat
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, ""); // one space is optional
      if (name === "data") data.push(value); // several data lines join with "\n"
      else if (name === "event") type = value;
      else if (name === "id" && !value.includes("\0")) id = value;
      else if (name === "retry" && /^\d+$/.test(value)) onRetry(Number(value));
    }
  };
}
