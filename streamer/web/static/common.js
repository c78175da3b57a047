// Shared by the four pages: the header, JSON helpers, time formatting, the live stream (SSE).
const PAGES = ["streams", "events", "prompts", "search"];
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
                "#4b5563", "#65a30d", "#7c3aed", "#0d9488"];

function header(here) {
  const h = document.createElement("header");
  h.innerHTML = `<b>slap-streamer</b><nav>${PAGES.map(p =>
    `<a href="/${p}" class="${p === here ? "here" : ""}">${p}</a>`).join("")}</nav><span id="conn"></span>`;
  document.body.prepend(h);
}

async function getJSON(url, options) {
  const r = await fetch(url, options);
  let body = null;
  try { body = await r.json(); } catch (e) { body = {error: `${r.status} ${r.statusText}`}; }
  if (!r.ok) throw new Error(body && body.error ? body.error : `${r.status} ${r.statusText}`);
  return body;
}

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function when(unix) {
  if (unix == null) return "";
  const d = new Date(unix * 1000);
  return d.toLocaleString(undefined, {month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit"});
}

function secs(x) { return x == null ? "?" : `${Number(x).toFixed(2)} s`; }

// One EventSource for the page; it reconnects by itself (the server says retry: 1000), and the
// engine's own restarts never close it: the page just sees the streams go stale and come back.
function live(handlers) {
  const conn = document.getElementById("conn");
  const es = new EventSource("/api/live");
  es.onopen = () => { conn.textContent = "connected"; };
  es.onerror = () => { conn.textContent = "reconnecting..."; };
  for (const [kind, fn] of Object.entries(handlers)) {
    es.addEventListener(kind, e => fn(JSON.parse(e.data)));
  }
  return es;
}
