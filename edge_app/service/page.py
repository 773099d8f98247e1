"""The page `rlivs serve` shows at `/`: plain HTML, CSS and vanilla JS in one string (no build step, no CDN).

It talks only to the API: `fetch` for streams, captions, questions and watches, `EventSource` on `/v1/events` for new
captions and watch matches. Every piece of server data is inserted with `textContent` (never as HTML). When the
service has a token the page asks for it once, keeps it in sessionStorage, sends it as a bearer header, and sets the
`rlivs_token` cookie (SameSite=Strict) so EventSource and thumbnails, which cannot send headers, are let in too.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rlivs</title>
<style>
  :root { --bg:#f5f6f8; --card:#fff; --ink:#1d2330; --mute:#6b7385; --line:#dde1e8; --accent:#2456d6;
          --ok:#1a8f4a; --warn:#b7791f; --bad:#c53030; --hl:#fff4c2; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background:var(--bg);
         color:var(--ink); }
  header { display:flex; align-items:center; gap:12px; padding:10px 16px; background:#1d2330; color:#fff; }
  header h1 { font-size:17px; margin:0; letter-spacing:.5px; }
  header .sub { color:#aab3c5; font-size:12px; }
  .pill { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; background:#e8ebf1; color:var(--ink); }
  .pill.ok { background:#d8f3e3; color:var(--ok); } .pill.warn { background:#fcefd6; color:var(--warn); }
  .pill.bad { background:#fde0e0; color:var(--bad); }
  header #conn { margin-left:auto; }
  main { display:grid; grid-template-columns: minmax(0, 3fr) minmax(300px, 2fr); gap:14px; padding:14px; }
  section.panel { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px; margin-bottom:14px; }
  h2 { font-size:14px; margin:0 0 8px; text-transform:uppercase; letter-spacing:.6px; color:var(--mute); }
  h3 { font-size:14px; margin:0 0 6px; display:flex; gap:8px; align-items:center; }
  .streams { display:grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap:12px; }
  .stream { border:1px solid var(--line); border-radius:6px; padding:8px; background:#fbfcfd; }
  .captions { list-style:none; margin:0; padding:0; max-height:560px; overflow-y:auto; }
  .caption-card { display:flex; gap:8px; padding:6px; border-bottom:1px solid var(--line); scroll-margin:40px; }
  .caption-card.new { animation: flash 1.5s ease-out; }
  .caption-card.hl { background:var(--hl); }
  @keyframes flash { from { background:#dbe7ff; } to { background:transparent; } }
  .caption-card img, .thumb-missing { width:96px; height:72px; object-fit:cover; border-radius:4px; background:#ccd; flex:none; }
  .meta { font-size:12px; color:var(--mute); font-variant-numeric: tabular-nums; }
  .text { word-break:break-word; }
  textarea, input, select, button { font:inherit; }
  textarea, input[type=text], input[type=number], input[type=password], select { width:100%; padding:6px;
         border:1px solid var(--line); border-radius:5px; background:#fff; }
  button { padding:6px 12px; border:0; border-radius:5px; background:var(--accent); color:#fff; cursor:pointer; }
  button.small { padding:2px 8px; font-size:12px; background:#8a93a6; }
  button:disabled { opacity:.5; cursor:default; }
  .row { display:flex; gap:8px; align-items:center; margin-top:6px; }
  #answer { margin-top:10px; }
  #answer-text { font-size:15px; padding:8px; background:#f0f4ff; border-radius:5px; white-space:pre-wrap; }
  #answer-sources { list-style:none; padding:0; margin:6px 0 0; }
  #answer-sources li { margin:3px 0; }
  a { color:var(--accent); cursor:pointer; }
  table { width:100%; border-collapse:collapse; font-size:12px; }
  th, td { text-align:left; padding:3px 4px; border-bottom:1px solid var(--line); }
  td.num { text-align:right; font-variant-numeric: tabular-nums; }
  .watch, .match { padding:5px 0; border-bottom:1px solid var(--line); }
  .error { color:var(--bad); margin-top:6px; white-space:pre-wrap; }
  .empty { color:var(--mute); font-style:italic; }
  #token-box { display:none; }
  @media (max-width: 900px) { main { grid-template-columns: 1fr; } }
</style>
</head>
<body>
<header>
  <h1>rlivs</h1><span class="sub">streaming video question answering, on the device</span>
  <span id="conn" class="pill">connecting…</span>
  <span id="health" class="pill">health…</span>
</header>
<main>
  <div>
    <section class="panel" id="token-box">
      <h2>Token</h2>
      <div>This service needs its access token (the <code>--token</code> given to <code>rlivs serve</code>).</div>
      <form id="token-form" class="row"><input id="token-input" type="password" autocomplete="off"
        placeholder="token"><button type="submit">Use</button></form>
    </section>
    <section class="panel">
      <h2>Live captions</h2>
      <div id="timeline" class="streams"><div class="empty" id="no-streams">no streams yet</div></div>
    </section>
  </div>
  <div>
    <section class="panel">
      <h2>Ask</h2>
      <form id="ask-form">
        <textarea id="ask-input" rows="2" maxlength="2000" placeholder="What happened near the door?"></textarea>
        <div class="row"><select id="ask-stream"><option value="">all streams</option></select>
          <button id="ask-button" type="submit">Ask</button></div>
      </form>
      <div id="ask-error" class="error"></div>
      <div id="answer" hidden>
        <div id="answer-text"></div>
        <div class="meta" id="answer-meta"></div>
        <ul id="answer-sources"></ul>
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
      <div id="watches"><div class="empty">no watches</div></div>
      <h2 style="margin-top:12px">Matches</h2>
      <div id="matches"><div class="empty">no matches yet</div></div>
    </section>
    <section class="panel">
      <h2>Stream health</h2>
      <table><thead><tr><th>stream</th><th>state</th><th>clips</th><th>decoded</th><th>dropped</th>
        <th>errors</th><th>reconn.</th><th>behind</th></tr></thead><tbody id="health-rows"></tbody></table>
    </section>
  </div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const MAX_CARDS = 60;
let token = sessionStorage.getItem("rlivs_token") || "";
let source = null;
const known = new Set();  // stream names with a timeline column

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
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
  if (r.status === 401) { $("token-box").style.display = "block"; throw new Error("a token is needed"); }
  if (r.status === 204) return null;
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.detail || ("HTTP " + r.status));
  return body;
}

function fmt(s) { return s === null || s === undefined ? "–" : Number(s).toFixed(1) + " s"; }

function streamColumn(name) {
  let col = document.querySelector('.stream[data-stream="' + CSS.escape(name) + '"]');
  if (col) return col;
  const none = $("no-streams"); if (none) none.remove();
  col = el("div", "stream"); col.dataset.stream = name;
  const h = el("h3"); h.appendChild(el("span", null, name));
  const st = el("span", "pill state", "…"); h.appendChild(st);
  col.appendChild(h);
  col.appendChild(el("ul", "captions"));
  $("timeline").appendChild(col);
  known.add(name);
  for (const sel of [$("ask-stream"), $("watch-stream")]) {
    const o = el("option", null, name); o.value = name; sel.appendChild(o);
  }
  return col;
}

function cardId(stream, clip) { return "cap-" + encodeURIComponent(stream) + "-" + clip; }

function captionCard(c, isNew) {
  const li = el("li", "caption-card" + (isNew ? " new" : ""));
  li.id = cardId(c.stream, c.clip);
  li.dataset.stream = c.stream; li.dataset.clip = c.clip;
  if (c.thumbnail) {
    const img = el("img"); img.loading = "lazy"; img.alt = "clip " + c.clip; img.src = c.thumbnail; li.appendChild(img);
  } else { li.appendChild(el("div", "thumb-missing")); }
  const body = el("div");
  body.appendChild(el("div", "meta", c.time + " · clip " + c.clip));
  body.appendChild(el("div", "text", c.caption));
  li.appendChild(body);
  return li;
}

function addCaption(c, isNew) {
  const list = streamColumn(c.stream).querySelector(".captions");
  if (document.getElementById(cardId(c.stream, c.clip))) return;
  const card = captionCard(c, isNew);
  // newest first: insert before the first card with a smaller clip index
  let before = null;
  for (const other of list.children) { if (Number(other.dataset.clip) < c.clip) { before = other; break; } }
  list.insertBefore(card, before);
  while (list.children.length > MAX_CARDS) list.lastChild.remove();
}

async function showCaption(stream, clip) {
  let card = document.getElementById(cardId(stream, clip));
  if (!card) {
    const page = await api("/v1/captions?stream=" + encodeURIComponent(stream) + "&offset=" + clip + "&limit=1");
    if (page.captions.length) addCaption(page.captions[0], false);
    card = document.getElementById(cardId(stream, clip));
  }
  if (!card) return;
  document.querySelectorAll(".caption-card.hl").forEach((e) => e.classList.remove("hl"));
  card.classList.add("hl");
  card.scrollIntoView({ behavior: "smooth", block: "center" });
}

async function loadStreams(initial) {
  const data = await api("/v1/streams");
  const rows = $("health-rows"); rows.replaceChildren();
  let live = 0;
  for (const s of data.streams) {
    const col = streamColumn(s.name);
    const st = col.querySelector(".state");
    st.textContent = s.state;
    st.className = "pill state " + ({ live: "ok", running: "ok", finished: "", stored: "" }[s.state] ??
                                     (s.state === "failed" ? "bad" : "warn"));
    if (s.error) st.title = s.error;
    const src = s.source_stats || {};
    const tr = el("tr");
    for (const [v, num] of [[s.name], [s.state], [s.clips, 1], [src.frames_decoded ?? "–", 1],
                            [src.frames_dropped ?? "–", 1], [src.decode_errors ?? "–", 1],
                            [src.reconnects ?? "–", 1], [fmt(s.seconds_behind_live), 1]]) {
      tr.appendChild(el("td", num ? "num" : "", v));
    }
    rows.appendChild(tr);
    if (initial && s.clips) {
      const offset = Math.max(0, s.clips - 20);
      const page = await api("/v1/captions?stream=" + encodeURIComponent(s.name) + "&offset=" + offset + "&limit=20");
      for (const c of page.captions) addCaption(c, false);
    }
  }
}

async function loadHealth() {
  try {
    const h = await (await fetch("/healthz")).json();
    const p = $("health");
    p.textContent = h.status + " · " + h.sources_ok + "/" + h.sources + " sources";
    p.className = "pill " + (h.status === "ok" ? "ok" : "warn");
  } catch (e) { $("health").textContent = "unreachable"; $("health").className = "pill bad"; }
}

function matchItem(m) {
  const d = el("div", "match");
  d.appendChild(el("div", "meta", "#" + m.watch_id + " “" + (m.query || "") + "” · " + m.stream + " " + m.time +
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

function connectEvents() {
  if (source) source.close();
  source = new EventSource("/v1/events");
  source.onopen = () => { $("conn").textContent = "live"; $("conn").className = "pill ok"; };
  source.onerror = () => { $("conn").textContent = "reconnecting…"; $("conn").className = "pill warn"; };
  source.addEventListener("caption", (ev) => { addCaption(JSON.parse(ev.data), true); refreshSoon(); });
  source.addEventListener("watch", (ev) => {
    const m = JSON.parse(ev.data);
    const mbox = $("matches");
    const empty = mbox.querySelector(".empty"); if (empty) empty.remove();
    mbox.insertBefore(matchItem(m), mbox.firstChild);
    loadWatches().catch(() => {});
  });
}

$("ask-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const q = $("ask-input").value.trim();
  if (!q) return;
  $("ask-button").disabled = true; $("ask-error").textContent = "";
  try {
    const body = { question: q };
    if ($("ask-stream").value) body.stream = $("ask-stream").value;
    const a = await api("/v1/ask", { method: "POST", json: body });
    $("answer").hidden = false;
    $("answer-text").textContent = a.answer;
    $("answer-meta").textContent = a.latency_s.toFixed(2) + " s · from " + a.captions.length + " captions:";
    const ul = $("answer-sources"); ul.replaceChildren();
    for (const c of a.captions) {
      const li = el("li");
      const link = el("a", "source-link", c.stream + " " + c.time);
      link.href = "#" + cardId(c.stream, c.clip);
      link.addEventListener("click", (e) => { e.preventDefault(); showCaption(c.stream, c.clip); });
      li.appendChild(link);
      li.appendChild(el("span", "meta", " (" + c.relevance.toFixed(3) + ") "));
      li.appendChild(el("span", "text", c.caption));
      ul.appendChild(li);
    }
  } catch (e) { $("ask-error").textContent = e.message; }
  finally { $("ask-button").disabled = false; }
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
  document.cookie = "rlivs_token=" + encodeURIComponent(token) + "; path=/; SameSite=Strict";
  $("token-box").style.display = "none";
  start();
});

async function start() {
  $("conn").textContent = "connecting…"; $("conn").className = "pill";
  if (token) document.cookie = "rlivs_token=" + encodeURIComponent(token) + "; path=/; SameSite=Strict";
  loadHealth();
  try {
    await loadStreams(true);
    await loadWatches();
    connectEvents();
  } catch (e) { $("conn").textContent = e.message; $("conn").className = "pill bad"; }
}

setInterval(() => { loadHealth(); if (source) loadStreams(false).catch(() => {}); }, 5000);
start();
</script>
</body>
</html>
"""
