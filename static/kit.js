// What the demo pages share: finding an element, building a stream URL from
// the form, and polling a /stats URL for the counters the server keeps.

export const field = (id) => document.getElementById(id);

// `url` with the named form fields as its query. A blank field is left out,
// so the server's own default applies: change it in the demo and the page follows.
export function urlWith(url, form, names) {
  const fields = new FormData(form);
  const params = new URLSearchParams();
  for (const name of names) {
    if (fields.get(name)) params.set(name, fields.get(name));
  }
  return String(params) ? `${url}?${params}` : url;
}

// Ask `url()` (a function: the query may change) for JSON once a second, and
// hand it to show(stats), or show(null, why) when there is no answer yet.
// Chained with setTimeout, so a slow answer never has a second request queued
// behind it. While six streams hold every connection to the host (HTTP/1.1),
// the request waits in the browser's queue too: the page says so.
export function pollStats(url, show, every = 1000) {
  async function poll() {
    const waiting = setTimeout(show, 1500, null, "request waiting for a free connection");
    try {
      const response = await fetch(url(), { cache: "no-store" });
      const stats = await response.json();
      if (!response.ok) throw new Error(stats.error);
      show(stats);
    } catch (error) {
      show(null, error instanceof TypeError ? "server unreachable" : error.message);
    }
    clearTimeout(waiting);
    setTimeout(poll, every);
  }
  poll();
}
