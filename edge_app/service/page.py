"""The page `rlivs serve` shows at `/`: plain HTML, CSS and vanilla JS in one string (no build step, no CDN: the
device is offline).

Layout for 1 to 8 cameras in one window (1280x800 without horizontal scroll): a grid of stream cards on the left, each
with its latest frame, state and a scrolling caption list that fills the card; ask, watches and stream health in a
fixed-width column on the right. Clicking a frame or a thumbnail opens the clip enlarged in an overlay (Escape
closes it). Clip times are local wall-clock times when the API gives `wall_start`/`wall_end` (ISO 8601 with the
device's UTC offset), stream-relative times otherwise. While a question is answered the page shows the seconds
waited, then the answer as it is generated (POST /v1/ask/stream); the answer is compact, with the captions it used
collapsed under it and linked to the timeline.

It talks only to the API: `fetch` for streams, captions, questions (their answer streamed), watches and thumbnails,
`EventSource` on `/v1/events` for new captions and watch matches. Every piece of server data is inserted with
`textContent` (never as HTML). When the service has a token the page asks for it once (or takes it from the URL
fragment, `/#token=...`, which it then removes from the address bar), keeps it in sessionStorage (this origin only:
scheme, host and port) and sends it as a bearer header. Nothing is ever sent by the browser on its own: no cookie.
Thumbnails are fetched with the header and shown from blob: URLs (caption cards' when they scroll into view); the
event stream, which cannot send headers, opens with a single-use ticket for `/v1/events` (POST /v1/tickets) and, when
it drops, is reopened by the page with a new ticket and `after=<last event id>`.

Served with `PAGE_HEADERS`: a Content-Security-Policy that allows this page's one script and one style block (by
their SHA-256), images from this origin and blob:, requests to this origin only, no frames around it
(frame-ancestors 'none', X-Frame-Options DENY), no plugins, no <base>, no form posts, and no Referer.
"""

import base64
import hashlib
import re

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rlivs</title>
<style>
  :root { --bg:#f5f6f8; --card:#fff; --ink:#1d2330; --mute:#6b7385; --line:#dde1e8; --accent:#2456d6;
          --ok:#1a8f4a; --warn:#b7791f; --bad:#c53030; --hl:#fff4c2; --side:360px; --head:44px; }
  * { box-sizing: border-box; }
  html, body { height:100%; }
  body { margin:0; font:13px/1.35 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background:var(--bg);
         color:var(--ink); overflow-x:hidden; }
  header { display:flex; align-items:center; gap:10px; height:var(--head); padding:0 14px; background:#1d2330;
           color:#fff; white-space:nowrap; overflow:hidden; }
  header h1 { font-size:16px; margin:0; letter-spacing:.5px; }
  header .sub { color:#aab3c5; font-size:12px; overflow:hidden; text-overflow:ellipsis; }
  .pill { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; background:#e8ebf1; color:var(--ink); }
  .pill.ok { background:#d8f3e3; color:var(--ok); } .pill.warn { background:#fcefd6; color:var(--warn); }
  .pill.bad { background:#fde0e0; color:var(--bad); } .pill.done { background:#e3e7ef; color:#4a5264; }
  header #conn { margin-left:auto; }
  main { display:grid; grid-template-columns: minmax(0, 1fr) var(--side); gap:10px; padding:10px;
         height:calc(100vh - var(--head)); }
  #left { min-width:0; overflow-y:auto; }
  #right { min-width:0; overflow-y:auto; display:flex; flex-direction:column; gap:10px; }
  section.panel { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px; }
  h2 { font-size:12px; margin:0 0 6px; text-transform:uppercase; letter-spacing:.6px; color:var(--mute); }
  h2.gap { margin-top:8px; }
  /* the cards fill the window: 1 camera full size, 2 side by side, 3-4 in 2x2, 5-6 in 3x2, 7-8 in 4x2 (--cols and
     --rows are set from the number of streams); more scroll inside the left column */
  .streams { display:grid; grid-template-columns: repeat(var(--cols, 1), minmax(0, 1fr)); gap:10px; }
  .stream { display:flex; flex-direction:column; min-width:0; border:1px solid var(--line); border-radius:8px;
            background:var(--card); padding:8px;
            height:max(260px, calc((100vh - var(--head) - 20px - 10px * (var(--rows, 1) - 1)) / var(--rows, 1))); }
  .stream-head { display:flex; gap:6px; align-items:center; margin-bottom:6px; min-width:0; }
  .stream-head .name { font-weight:600; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
  .stream-head .stat { margin-left:auto; color:var(--mute); font-size:12px; white-space:nowrap;
                       font-variant-numeric: tabular-nums; }
  .stream-body { display:flex; flex-direction:column; gap:6px; flex:1; min-height:0; }
  .latest { flex:none; display:flex; gap:8px; min-width:0; }
  .latest img { width:min(160px, 40%); aspect-ratio:4/3; object-fit:cover; border-radius:5px; background:#e3e6ec;
                cursor:zoom-in; flex:none; }
  .latest .now { min-width:0; overflow:hidden; display:-webkit-box; -webkit-line-clamp:6; -webkit-box-orient:vertical; }
  .captions { list-style:none; margin:0; padding:0; flex:1; min-width:0; overflow-y:auto; }
  .caption-card { display:flex; gap:6px; padding:4px 2px; border-bottom:1px solid var(--line); scroll-margin:40px; }
  .caption-card.new { animation: flash 1.5s ease-out; }
  .caption-card.hl { background:var(--hl); }
  @keyframes flash { from { background:#dbe7ff; } to { background:transparent; } }
  .caption-card img { width:56px; height:42px; object-fit:cover; border-radius:3px; flex:none; cursor:zoom-in; }
  .meta { font-size:11px; color:var(--mute); font-variant-numeric: tabular-nums; }
  .text { word-break:break-word; }
  textarea, input, select, button { font:inherit; }
  textarea, input[type=text], input[type=number], input[type=password], select { width:100%; padding:5px;
         border:1px solid var(--line); border-radius:5px; background:#fff; }
  button { padding:5px 12px; border:0; border-radius:5px; background:var(--accent); color:#fff; cursor:pointer; }
  button.small { padding:2px 8px; font-size:12px; background:#8a93a6; }
  button:disabled { opacity:.5; cursor:default; }
  .row { display:flex; gap:6px; align-items:center; margin-top:5px; }
  #ask-progress { margin-top:6px; }
  #answer { margin-top:8px; }
  #answer-text { font-size:14px; padding:6px 8px; background:#f0f4ff; border-radius:5px; white-space:pre-wrap;
                 max-height:9em; overflow-y:auto; }
  #answer summary { cursor:pointer; margin-top:4px; }
  #answer-sources { list-style:none; padding:0; margin:4px 0 0; max-height:10em; overflow-y:auto; }
  #answer-sources li { margin:2px 0; white-space:nowrap; overflow:hidden; text-overflow:ellipsis; }
  a { color:var(--accent); cursor:pointer; }
  .table-wrap { overflow-x:auto; }
  table { width:100%; border-collapse:collapse; font-size:12px; }
  th, td { text-align:left; padding:2px 3px; border-bottom:1px solid var(--line); white-space:nowrap; }
  td.num { text-align:right; font-variant-numeric: tabular-nums; }
  .watch, .match { padding:4px 0; border-bottom:1px solid var(--line); }
  #watches, #matches { max-height:12em; overflow-y:auto; }
  .error { color:var(--bad); margin-top:4px; white-space:pre-wrap; }
  .empty { color:var(--mute); font-style:italic; }
  .spinner { display:inline-block; width:10px; height:10px; border:2px solid #b8c2d6; border-top-color:var(--accent);
             border-radius:50%; animation: spin .8s linear infinite; vertical-align:-1px; margin-right:4px; }
  @keyframes spin { to { transform: rotate(360deg); } }
  #token-box { display:none; margin-bottom:10px; }
  #overlay { position:fixed; inset:0; background:rgba(10,14,24,.78); display:none; align-items:center;
             justify-content:center; z-index:10; cursor:zoom-out; }
  #overlay.open { display:flex; }
  #overlay .box { background:#fff; border-radius:8px; padding:10px; max-width:min(92vw, 760px); cursor:default; }
  #overlay img { display:block; width:min(88vw, 740px); max-height:70vh; object-fit:contain; background:#111;
                 border-radius:5px; image-rendering:auto; }
  #overlay .text { margin-top:6px; font-size:14px; }
  @media (max-width: 900px) { main { grid-template-columns: 1fr; height:auto; } .stream { height:360px; } }
</style>
</head>
<body>
<header>
  <h1>rlivs</h1><span class="sub" id="sub">streaming video question answering, on the device</span>
  <span id="conn" class="pill">connecting…</span>
  <span id="health" class="pill">health…</span>
</header>
<main>
  <div id="left">
    <section class="panel" id="token-box">
      <h2>Token</h2>
      <div>This service needs its access token (the <code>--token</code> given to <code>rlivs serve</code>).</div>
      <form id="token-form" class="row"><input id="token-input" type="password" autocomplete="off"
        placeholder="token"><button type="submit">Use</button></form>
    </section>
    <div id="timeline" class="streams"><div class="empty" id="no-streams"><span class="spinner"></span>loading
      streams…</div></div>
  </div>
  <div id="right">
    <section class="panel">
      <h2>Ask</h2>
      <form id="ask-form">
        <textarea id="ask-input" rows="2" maxlength="2000" placeholder="What happened near the door?"></textarea>
        <div class="row"><select id="ask-stream"><option value="">all streams</option></select>
          <button id="ask-button" type="submit">Ask</button></div>
      </form>
      <div id="ask-progress" class="meta" hidden></div>
      <div id="ask-error" class="error"></div>
      <div id="answer" hidden>
        <div id="answer-text"></div>
        <details id="answer-used"><summary class="meta" id="answer-meta"></summary>
          <ul id="answer-sources"></ul></details>
      </div>
    </section>
    <section class="panel">
      <h2>Watches</h2>
      <form id="watch-form">
        <input id="watch-query" type="text" maxlength="500" placeholder="a person at the door">
        <div class="row">
          <input id="watch-threshold" type="number" step="0.001" min="-1" max="1" placeholder="threshold (auto)">
          <select id="watch-stream"><option value="">all streams</option></select>
        </div>
        <div class="row"><input id="watch-webhook" type="text" maxlength="2000" placeholder="webhook URL (optional)">
          <button id="watch-button" type="submit">Watch</button></div>
      </form>
      <div id="watch-error" class="error"></div>
      <div id="watches"><div class="empty loading"><span class="spinner"></span>loading watches…</div></div>
      <h2 class="gap">Matches</h2>
      <div id="matches"><div class="empty loading"><span class="spinner"></span>loading matches…</div></div>
    </section>
    <section class="panel">
      <h2>Stream health</h2>
      <div class="table-wrap"><table><thead><tr><th>stream</th><th>state</th><th>clips</th>
        <th title="clips the activity gate left uncaptioned (idle)">gated</th>
        <th title="clips not captioned for want of the model this run: a forced caption that waited past the lag bound (recorded idle)">skipped</th>
        <th title="lag of the last clip: from its end to its caption committed (the most this run in parentheses)">lag</th>
        <th title="frames decoded / dropped">frames</th><th title="decode errors">err</th>
        <th title="reconnects">rec</th><th title="seconds behind live">behind</th></tr></thead>
        <tbody id="health-rows"><tr><td colspan="10" class="empty">loading…</td></tr></tbody></table></div>
    </section>
  </div>
</main>
<div id="overlay" role="dialog" aria-modal="true">
  <div class="box"><img id="overlay-img" alt=""><div class="meta" id="overlay-meta"></div>
    <div class="text" id="overlay-text"></div></div>
</div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const MAX_CARDS = 60;
const ENDED = new Set(["finished", "stopped", "failed", "stored"]);
let token = sessionStorage.getItem("rlivs_token") || "";
const fromUrl = new URLSearchParams(location.hash.slice(1)).get("token");  // /#token=...: never sent to a server
if (fromUrl) {
  token = fromUrl; sessionStorage.setItem("rlivs_token", token);
  history.replaceState(null, "", location.pathname + location.search);  // out of the address bar and the history
}
let source = null;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

// 401: the token box, and every "loading…" placeholder says what is needed instead of spinning
const NEEDS_TOKEN = "waiting for the access token: enter the --token given to rlivs serve (or open /#token=...)";
function needToken() {
  $("token-box").style.display = "block";
  for (const e of document.querySelectorAll("#no-streams, #watches .loading, #matches .loading, #health-rows .empty")) {
    e.textContent = NEEDS_TOKEN;
  }
  $("conn").textContent = "token needed"; $("conn").className = "pill bad";
}

async function api(path, opts = {}) {
  opts.headers = Object.assign({}, opts.headers || {});
  if (token) opts.headers["Authorization"] = "Bearer " + token;
  if (opts.json !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(opts.json);
    delete opts.json;
  }
  const r = await fetch(path, opts);
  if (r.status === 401) { needToken(); throw new Error("a token is needed"); }
  if (r.status === 204) return null;
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.detail || ("HTTP " + r.status));
  return body;
}

// Thumbnails: fetched with the bearer header (an <img src> could not send it) and shown from a blob: URL, released
// once the image has loaded. Caption cards load theirs when they scroll into view.
async function loadImage(img) {
  const url = img.dataset.src;
  if (!url) return;
  try {
    const r = await fetch(url, { headers: token ? { Authorization: "Bearer " + token } : {} });
    if (!r.ok) return;
    const blob = await r.blob();
    if (img.dataset.src !== url) return;  // another clip's image was asked for meanwhile
    const local = URL.createObjectURL(blob);
    img.addEventListener("load", () => URL.revokeObjectURL(local), { once: true });
    img.addEventListener("error", () => URL.revokeObjectURL(local), { once: true });
    img.src = local;
  } catch (e) { /* the card stays without its frame */ }
}
const imgObserver = new IntersectionObserver((entries) => {
  for (const e of entries) if (e.isIntersecting) { imgObserver.unobserve(e.target); loadImage(e.target); }
});
function setImage(img, url, lazy) {
  if (img.dataset.src === url) return;
  img.dataset.src = url;
  img.removeAttribute("src");
  if (lazy) imgObserver.observe(img); else loadImage(img);
}

function fmt(s) { return s === null || s === undefined ? "–" : Number(s).toFixed(1) + " s"; }

// Clip times: local wall-clock time when the stream has a clock (wall_start/wall_end, ISO 8601 with the device's
// UTC offset), else stream-relative time (the API's `time`). The date is shown when it is not today.
function wallTime(iso, withDate) {
  const d = new Date(iso);
  if (isNaN(d)) return null;
  const t = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  return withDate && d.toDateString() !== new Date().toDateString() ? d.toLocaleDateString() + " " + t : t;
}
function clipTime(c) {
  if (c.wall_start) {
    const a = wallTime(c.wall_start, true), b = c.wall_end ? wallTime(c.wall_end, false) : null;
    if (a) return b ? a + "–" + b : a;
  }
  return c.time;
}

function updateSelects(name) {
  for (const sel of [$("ask-stream"), $("watch-stream")]) {
    if ([...sel.options].some((o) => o.value === name)) continue;
    const o = el("option", null, name); o.value = name; sel.appendChild(o);
  }
}

function streamColumn(name) {
  let col = document.querySelector('.stream[data-stream="' + CSS.escape(name) + '"]');
  if (col) return col;
  const none = $("no-streams"); if (none) none.remove();
  col = el("div", "stream"); col.dataset.stream = name;
  const h = el("div", "stream-head");
  h.appendChild(el("span", "name", name));
  h.appendChild(el("span", "pill state", "…"));
  h.appendChild(el("span", "stat"));
  col.appendChild(h);
  const body = el("div", "stream-body");
  const latest = el("div", "latest");
  const img = el("img"); img.alt = "latest frame of " + name; img.hidden = true;
  img.addEventListener("click", () => { if (img.dataset.clip) openClip(name, Number(img.dataset.clip)); });
  latest.appendChild(img);
  const now = el("div", "now");
  now.appendChild(el("div", "meta latest-meta", "waiting for the first clip…"));
  now.appendChild(el("div", "text latest-text"));
  latest.appendChild(now);
  body.appendChild(latest);
  body.appendChild(el("ul", "captions"));
  col.appendChild(body);
  $("timeline").appendChild(col);
  const n = document.querySelectorAll(".stream").length, cols = n <= 1 ? 1 : n <= 4 ? 2 : n <= 6 ? 3 : 4;
  $("timeline").style.setProperty("--cols", cols);
  $("timeline").style.setProperty("--rows", Math.min(2, Math.ceil(n / cols)));
  updateSelects(name);
  return col;
}

function cardId(stream, clip) { return "cap-" + encodeURIComponent(stream) + "-" + clip; }

const clips = new Map();  // cardId -> caption JSON (for the overlay)

function captionCard(c, isNew) {
  const li = el("li", "caption-card" + (isNew ? " new" : ""));
  li.id = cardId(c.stream, c.clip);
  li.dataset.stream = c.stream; li.dataset.clip = c.clip;
  if (c.thumbnail) {  // clips ingested by `rlivs ingest` have no thumbnail: the row is text only
    const img = el("img"); img.alt = "clip " + c.clip; setImage(img, c.thumbnail, true);
    img.addEventListener("click", () => openClip(c.stream, c.clip));
    li.appendChild(img);
  }
  const body = el("div");
  const meta = el("div", "meta", clipTime(c) + " · clip " + c.clip);
  if (c.wall_start) meta.title = "stream time " + c.time;
  body.appendChild(meta);
  body.appendChild(el("div", "text", c.caption));
  li.appendChild(body);
  return li;
}

function showLatest(c) {  // the newest clip of a stream: its frame (when it has one) and its caption
  const col = streamColumn(c.stream);
  const latest = col.querySelector(".latest");
  if (latest.dataset.clip && Number(latest.dataset.clip) > c.clip) return;  // keep the newest
  latest.dataset.clip = c.clip;
  const img = latest.querySelector("img");
  img.hidden = !c.thumbnail;
  if (c.thumbnail) { setImage(img, c.thumbnail, false); img.dataset.clip = c.clip; }
  col.querySelector(".latest-meta").textContent = "latest · " + clipTime(c) + " · clip " + c.clip;
  col.querySelector(".latest-text").textContent = c.caption;
}

function addCaption(c, isNew) {
  const list = streamColumn(c.stream).querySelector(".captions");
  clips.set(cardId(c.stream, c.clip), c);
  showLatest(c);
  if (document.getElementById(cardId(c.stream, c.clip))) return;
  const card = captionCard(c, isNew);
  // newest first: insert before the first card with a smaller clip index
  let before = null;
  for (const other of list.children) { if (Number(other.dataset.clip) < c.clip) { before = other; break; } }
  list.insertBefore(card, before);
  while (list.children.length > MAX_CARDS) list.lastChild.remove();
}

async function captionOf(stream, clip) {
  let c = clips.get(cardId(stream, clip));
  if (!c) {
    const page = await api("/v1/captions?stream=" + encodeURIComponent(stream) + "&clip=" + clip);
    if (page.captions.length) { addCaption(page.captions[0], false); c = page.captions[0]; }
  }
  return c;
}

async function openClip(stream, clip) {
  const c = await captionOf(stream, clip);
  if (!c) return;
  $("overlay-img").hidden = !c.thumbnail;
  if (c.thumbnail) { setImage($("overlay-img"), c.thumbnail, false); $("overlay-img").alt = "clip " + c.clip; }
  $("overlay-meta").textContent = c.stream + " · clip " + c.clip + " · " + clipTime(c) +
    (c.wall_start ? " (stream time " + c.time + ")" : "");
  $("overlay-text").textContent = c.caption;
  $("overlay").classList.add("open");
}
function closeClip() { $("overlay").classList.remove("open"); }
$("overlay").addEventListener("click", (e) => { if (e.target === $("overlay")) closeClip(); });
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeClip(); });

async function showCaption(stream, clip) {
  await captionOf(stream, clip);
  const card = document.getElementById(cardId(stream, clip));
  if (!card) return;
  document.querySelectorAll(".caption-card.hl").forEach((e) => e.classList.remove("hl"));
  card.classList.add("hl");
  card.scrollIntoView({ behavior: "smooth", block: "center" });
}

// What a stream's state means on the page: a finished file is not live and not behind anything.
function stateView(s) {
  if (s.state === "running") return s.live ? ["live", "ok"] : ["ingesting", "ok"];
  if (s.state === "failed") return ["failed", "bad"];
  if (ENDED.has(s.state)) return [s.state, "done"];
  return [s.state, "warn"];  // starting, connecting, reconnecting
}

let streamsSeen = [];
async function loadStreams(initial) {
  const data = await api("/v1/streams");
  streamsSeen = data.streams;
  const rows = $("health-rows"); rows.replaceChildren();
  if (!data.streams.length) {
    const none = $("no-streams");
    if (none) none.textContent = "no streams yet: start rlivs serve with --source, or ingest a video";
    rows.appendChild(el("tr")).appendChild(el("td", "empty", "no streams")).colSpan = 10;
  }
  for (const s of data.streams) {
    const col = streamColumn(s.name);
    const [label, cls] = stateView(s);
    const st = col.querySelector(".state");
    st.textContent = label; st.className = "pill state " + cls;
    st.title = s.error || "";
    const behind = s.ingesting && s.live && s.seconds_behind_live !== null && s.seconds_behind_live !== undefined;
    col.querySelector(".stat").textContent = s.clips + " clips" + (behind ? " · " + fmt(s.seconds_behind_live) +
                                                                   " behind" : "");
    const src = s.source_stats || {};
    const tr = el("tr"); tr.dataset.stream = s.name;
    const frames = src.frames_decoded === undefined ? "–" : src.frames_decoded + " / " + src.frames_dropped;
    const gated = s.gate || s.clips_gated ? (s.clips_gated ?? 0) : "–";  // "–": the gate is off and gated nothing
    const skipped = s.skipped_this_run ?? "–";  // "–": not ingesting
    const lag = s.lag_s === null || s.lag_s === undefined ? "–" : fmt(s.lag_s) + " (" + fmt(s.max_lag_s) + ")";
    for (const [v, num] of [[s.name], [label], [s.clips, 1], [gated, 1], [skipped, 1], [lag, 1], [frames, 1],
                            [src.decode_errors ?? "–", 1], [src.reconnects ?? "–", 1],
                            [behind ? fmt(s.seconds_behind_live) : "–", 1]]) {
      tr.appendChild(el("td", num ? "num" : "", v));
    }
    if (s.error) tr.title = s.error;
    rows.appendChild(tr);
    if (initial && s.clips) {
      const offset = Math.max(0, s.clips - 30);
      const page = await api("/v1/captions?stream=" + encodeURIComponent(s.name) + "&offset=" + offset + "&limit=30");
      for (const c of page.captions) addCaption(c, false);
    }
  }
  showSummary();
}

let healthSeen = null;
function showSummary() {  // the header: backend and models; the pill: what the sources are doing (+ /healthz status)
  const p = $("health");
  if (!healthSeen) return;
  const models = [...new Set(streamsSeen.map((s) => s.model_id))];
  $("sub").textContent = "backend " + healthSeen.backend + (models.length ? " · model " + models.join(", ") : "");
  const count = {};
  for (const s of streamsSeen) { const [label] = stateView(s); count[label] = (count[label] || 0) + 1; }
  const parts = Object.entries(count).map(([k, n]) => n + " " + k);
  p.textContent = healthSeen.status + (parts.length ? " · " + parts.join(" · ") : "");
  p.className = "pill " + (healthSeen.status === "ok" ? "ok" : "warn");
}

async function loadHealth() {
  try {
    healthSeen = await (await fetch("/healthz")).json();
    showSummary();
  } catch (e) { $("health").textContent = "unreachable"; $("health").className = "pill bad"; }
}

function matchItem(m) {
  const d = el("div", "match");
  d.appendChild(el("div", "meta", "#" + m.watch_id + " “" + (m.query || "") + "” · " + m.stream + " " + clipTime(m) +
                                    " · score " + Number(m.score).toFixed(3)));
  const a = el("a", null, m.caption);
  a.addEventListener("click", () => showCaption(m.stream, m.clip));
  d.appendChild(a);
  return d;
}

async function loadWatches() {
  const data = await api("/v1/watches");
  const box = $("watches"); box.replaceChildren();
  if (!data.watches.length) box.appendChild(el("div", "empty", "no watches"));
  for (const w of data.watches) {
    const d = el("div", "watch"); d.dataset.watch = w.id;
    const row = el("div", "row");
    row.appendChild(el("span", "text", "#" + w.id + " “" + w.query + "”"));
    const del = el("button", "small", "delete");
    del.addEventListener("click", async () => { await api("/v1/watches/" + w.id, { method: "DELETE" }); loadWatches(); });
    row.appendChild(del);
    d.appendChild(row);
    d.appendChild(el("div", "meta", "threshold " + Number(w.threshold).toFixed(3) + " · " + (w.stream || "all streams") +
      " · " + w.matches + " matches" + (w.max_score !== null ? " · best " + Number(w.max_score).toFixed(3) : "") +
      (w.webhook ? " · webhook" : "")));
    box.appendChild(d);
  }
  const ms = await api("/v1/matches?limit=20");
  const mbox = $("matches"); mbox.replaceChildren();
  if (!ms.matches.length) mbox.appendChild(el("div", "empty", "no matches yet"));
  for (const m of ms.matches) mbox.appendChild(matchItem(m));
}

let refreshTimer = null;
function refreshSoon() {  // stream health after new captions, at most every half second
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; loadStreams(false).catch(() => {}); }, 500);
}

// EventSource cannot send the bearer header: it opens with a ticket valid once, for /v1/events, for 60 s. A ticket
// cannot be reused by EventSource's own reconnection, so the page reconnects itself, with a new ticket and the id of
// the last event it got (the server replays what was missed).
let lastEventId = null, reconnectTimer = null;
function reconnectSoon() {
  $("conn").textContent = "reconnecting…"; $("conn").className = "pill warn";
  if (source) { source.close(); source = null; }
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(() => connectEvents().catch(eventsFailed), 2000);
}
function eventsFailed(e) {  // no ticket: try again, unless the token is wrong (the token box is shown)
  if ($("token-box").style.display !== "block") { reconnectSoon(); return; }
  $("conn").textContent = e.message; $("conn").className = "pill bad";
}

async function connectEvents() {
  clearTimeout(reconnectTimer);
  if (source) { source.close(); source = null; }
  const t = await api("/v1/tickets", { method: "POST", json: { path: "/v1/events" } });
  const url = "/v1/events?ticket=" + encodeURIComponent(t.ticket) +
              (lastEventId !== null ? "&after=" + encodeURIComponent(lastEventId) : "");
  const s = new EventSource(url);
  source = s;
  const seen = (ev) => { if (ev.lastEventId) lastEventId = ev.lastEventId; };
  s.onopen = () => { $("conn").textContent = "live"; $("conn").className = "pill ok"; };
  s.onerror = () => { if (source === s) reconnectSoon(); };
  s.addEventListener("caption", (ev) => { seen(ev); addCaption(JSON.parse(ev.data), true); refreshSoon(); });
  s.addEventListener("watch", (ev) => {
    seen(ev);
    const m = JSON.parse(ev.data);
    const mbox = $("matches");
    const empty = mbox.querySelector(".empty"); if (empty) empty.remove();
    mbox.insertBefore(matchItem(m), mbox.firstChild);
    loadWatches().catch(() => {});
  });
}

// POST /v1/ask/stream: server-sent events read from the response body (EventSource cannot POST): `token` pieces
// appended to the answer as they are generated, then `answer` (the /v1/ask JSON) or `error`.
async function askStreamed(body, onToken) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers["Authorization"] = "Bearer " + token;
  const r = await fetch("/v1/ask/stream", { method: "POST", headers, body: JSON.stringify(body) });
  if (r.status === 401) { needToken(); throw new Error("a token is needed"); }
  if (!r.ok) { const e = await r.json().catch(() => ({})); throw new Error(e.detail || ("HTTP " + r.status)); }
  const reader = r.body.getReader(), dec = new TextDecoder();
  let buf = "", result = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      const d = data ? JSON.parse(data) : {};
      if (event === "token") onToken(d.text);
      else if (event === "answer") result = d;
      else if (event === "error") throw new Error(d.detail);
    }
  }
  if (!result) throw new Error("the answer stream ended early: ask again");
  return result;
}

$("ask-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const q = $("ask-input").value.trim();
  if (!q) return;
  $("ask-button").disabled = true; $("ask-error").textContent = "";
  const progress = $("ask-progress"), t0 = performance.now();
  let generating = false;
  const tick = () => {
    progress.replaceChildren(el("span", "spinner"),
      document.createTextNode((generating ? "generating… " : "answering… ") +
                              ((performance.now() - t0) / 1000).toFixed(1) + " s" +
                              (generating ? "" : " (retrieving captions, reading them)")));
  };
  tick(); progress.hidden = false;
  const timer = setInterval(tick, 200);
  $("answer").hidden = true; $("answer-text").textContent = ""; $("answer-sources").replaceChildren();
  $("answer-used").hidden = true;
  try {
    const body = { question: q };
    if ($("ask-stream").value) body.stream = $("ask-stream").value;
    const a = await askStreamed(body, (text) => {
      generating = true;
      $("answer").hidden = false;
      $("answer-text").textContent += text;
    });
    $("answer").hidden = false;
    $("answer-text").textContent = a.answer;
    $("answer-used").hidden = false;
    $("answer-meta").textContent = a.latency_s.toFixed(2) + " s · from " + a.captions.length + " captions" +
      (a.window ? " · window: " + a.window : "") + (a.matches != null ? " · matching clips: " + a.matches : "") +
      (a.notes && a.notes.length ? " · " + a.notes.join("; ") : "");
    const ul = $("answer-sources"); ul.replaceChildren();
    for (const c of a.captions) {
      const li = el("li");
      const link = el("a", "source-link", c.stream + " " + clipTime(c));
      link.href = "#" + cardId(c.stream, c.clip);
      link.addEventListener("click", (e) => { e.preventDefault(); showCaption(c.stream, c.clip); });
      li.appendChild(link);
      li.appendChild(el("span", "meta", " (" + c.relevance.toFixed(3) + ") "));
      li.appendChild(el("span", "text", c.caption));
      li.title = c.caption;
      ul.appendChild(li);
    }
  } catch (e) { $("ask-error").textContent = e.message; }
  finally { clearInterval(timer); progress.hidden = true; $("ask-button").disabled = false; }
});

$("watch-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("watch-error").textContent = "";
  const body = { query: $("watch-query").value.trim() };
  if ($("watch-threshold").value !== "") body.threshold = Number($("watch-threshold").value);
  if ($("watch-stream").value) body.stream = $("watch-stream").value;
  if ($("watch-webhook").value.trim()) body.webhook = $("watch-webhook").value.trim();
  try { await api("/v1/watches", { method: "POST", json: body }); $("watch-query").value = ""; await loadWatches(); }
  catch (e) { $("watch-error").textContent = e.message; }
});

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token-input").value.trim();
  sessionStorage.setItem("rlivs_token", token);
  $("token-box").style.display = "none";
  start();
});

async function start() {
  $("conn").textContent = "connecting…"; $("conn").className = "pill";
  loadHealth();
  try {
    await loadStreams(true);
    await loadWatches();
    connectEvents().catch(eventsFailed);
  } catch (e) { $("conn").textContent = e.message; $("conn").className = "pill bad"; }
}

setInterval(() => { loadHealth(); if (source) loadStreams(false).catch(() => {}); }, 5000);
start();
</script>
</body>
</html>
"""


def _sha256(block: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(block.encode("utf-8")).digest()).decode() + "'"


_SCRIPTS = re.findall(r"<script>(.*?)</script>", PAGE, re.S)
_STYLES = re.findall(r"<style>(.*?)</style>", PAGE, re.S)
assert len(_SCRIPTS) == 1 and len(_STYLES) == 1 and " style=" not in PAGE  # what the policy below allows, exactly

CSP = "; ".join([
    "default-src 'self'",
    "script-src " + _sha256(_SCRIPTS[0]),  # this page's one inline script, nothing injected
    "style-src " + _sha256(_STYLES[0]),  # its one style block; no style="" attributes
    "img-src 'self' blob:",  # thumbnails, fetched with the bearer header and shown from blob: URLs
    "connect-src 'self'",  # fetch and EventSource: this origin (scheme, host and port) only
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",  # the forms are handled by the script; none is ever posted
    "frame-ancestors 'none'",  # no page, on another port or site, can frame this one (clickjacking)
])

PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
