// The atlas page's behaviour: head-table sorting and filtering, the attention viewer and the token view
// (both on window.HEADSCOPE_VIEWER; a prompt typed in when `headscope view` serves the page replaces it),
// and a click on the role map opening that head in the viewer. No external resources: plotly.min.js sits
// beside the page; headscopeTokenView (token_view.js) is inlined before this script.
"use strict";

function sortTable(th) {
  // A score column sorts largest first on its first click (the heads one looks for), smallest first on
  // the next; a text column A to Z first. Missing values stay last either way.
  const table = th.closest("table");
  const index = parseInt(th.dataset.col, 10);
  const numeric = th.dataset.kind === "number";
  const current = th.getAttribute("aria-sort");
  const descending = current ? current === "ascending" : numeric;
  table.querySelectorAll("th[aria-sort]").forEach((h) => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const key = (row) => row.cells[index].dataset.v;
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" && y === "") return 0;
    if (x === "") return 1;
    if (y === "") return -1;
    const c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
    return descending ? -c : c;
  });
  rows.forEach((r) => body.appendChild(r));
}

function filterTable() {
  // Runs on every keystroke and every change of a select: no Enter needed.
  const text = document.getElementById("head-filter").value.trim().toLowerCase();
  const role = document.getElementById("role-filter").value;
  const layer = document.getElementById("layer-filter").value;
  let shown = 0;
  const rows = document.querySelectorAll("#head-table tbody tr");
  rows.forEach((row) => {
    const ok = (!text || row.dataset.search.includes(text)) && (!role || row.dataset.roles.split("|").includes(role))
      && (!layer || row.dataset.layer === layer);
    row.hidden = !ok;
    if (ok) shown += 1;
  });
  document.getElementById("head-count").textContent = `${shown} of ${rows.length} heads`;
}

function viewerPatterns(doc) {
  const bytes = Uint8Array.from(atob(doc.data), (c) => c.charCodeAt(0));
  return { bytes, shape: doc.shape };
}

function drawViewer() {
  const doc = window.HEADSCOPE_VIEWER;
  const plot = document.getElementById("viewer-plot");
  if (!doc || !plot) return;
  if (!window._viewer) window._viewer = viewerPatterns(doc);
  const { bytes, shape } = window._viewer;
  const layer = parseInt(document.getElementById("viewer-layer").value, 10);
  const head = parseInt(document.getElementById("viewer-head").value, 10);
  const [, H, Q, K] = shape;
  const base = ((layer * H) + head) * Q * K;
  const label = (p) => (p === null ? "…" : `${p}: ${JSON.stringify(doc.tokens[p])}`);
  const z = [], text = [];
  for (let q = 0; q < Q; q++) {
    const row = [], hover = [];
    for (let k = 0; k < K; k++) {
      const v = bytes[base + q * K + k] / doc.scale;
      const key = doc.keys[k];
      const masked = key !== null && key > doc.queries[q];
      row.push(masked ? null : v);
      hover.push(`query ${label(doc.queries[q])}<br>key ${key === null ? "… (the elided keys together)" : label(key)}<br>attention ${v.toFixed(3)}`);
    }
    z.push(row); text.push(hover);
  }
  const ticks = (ps) => ps.map((p) => (p === null ? "…" : doc.tokens[p].replace(/\s/g, "·") || "∅"));
  const data = [{ type: "heatmap", z, text, hovertemplate: "%{text}<extra></extra>", colorscale: "Viridis",
    zmin: 0, zmax: 1, colorbar: { title: { text: "attention", side: "right" }, thickness: 12 } }];
  const layout = {
    title: { text: `L${layer}H${head}` + (doc.windowed ? ` (windowed: ${doc.n_tokens} tokens)` : "") },
    width: Math.min(1100, 260 + 16 * K), height: Math.min(1100, 200 + 16 * Q), margin: { l: 120, b: 120, t: 50, r: 20 },
    xaxis: { title: { text: "key" }, tickvals: [...Array(K).keys()], ticktext: ticks(doc.keys), tickangle: -60 },
    yaxis: { title: { text: "query" }, tickvals: [...Array(Q).keys()], ticktext: ticks(doc.queries), autorange: "reversed" },
  };
  Plotly.react(plot, data, layout, { displaylogo: false });
}

function drawTokenView() {
  // The token view reads the viewer's data: its key columns as the text ("…" for the folded keys of a
  // long prompt), its query rows as the tokens one can hover.
  const doc = window.HEADSCOPE_VIEWER;
  const box = document.getElementById("token-view");
  const input = document.getElementById("token-view-heads");
  if (!doc || !box || !input) return;
  if (!window._viewer) window._viewer = viewerPatterns(doc);
  const { bytes, shape } = window._viewer;
  const [, H, Q, K] = shape;
  const heads = [];
  for (const m of input.value.matchAll(/L(\d+)\s*H(\d+)/gi)) {
    const layer = parseInt(m[1], 10), head = parseInt(m[2], 10);
    if (layer < doc.n_layers && head < doc.n_heads && !heads.some((h) => h.layer === layer && h.head === head)) {
      heads.push({ layer, head });
    }
  }
  const data = {
    tokens: doc.keys.map((k) => (k === null ? null : doc.tokens[k])),
    rows: doc.queries.map((q) => doc.keys.indexOf(q)),
    heads: heads.map(({ layer, head }) => {
      const base = ((layer * H) + head) * Q * K;
      const values = [];
      for (let q = 0; q < Q; q++) values.push(Array.from(bytes.subarray(base + q * K, base + (q + 1) * K), (b) => b / doc.scale));
      return { label: `L${layer}H${head}`, values };
    }),
    note: heads.length ? (doc.windowed ? `The last ${Q} tokens can be hovered; "…" holds the keys in between.` : "")
      : "No head: type labels such as L0H1.",
  };
  window.headscopeTokenView(box, data);
}

function setViewerData(doc) {
  window.HEADSCOPE_VIEWER = doc;
  window._viewer = null;
  const how = document.getElementById("viewer-how");
  if (how) {
    how.textContent = doc.windowed
      ? `The prompt has ${doc.n_tokens} tokens, more than ${doc.max_tokens}: the rows are its last ${doc.queries.length} queries; the columns its first ${doc.sink_keys} keys, a '…' column holding the attention on every key in between, and the same last positions (each row still sums to one).`
      : `The whole prompt (${doc.n_tokens} tokens).`;
  }
  drawViewer();
  drawTokenView();
}

async function runPrompt() {
  const text = document.getElementById("viewer-prompt").value;
  const status = document.getElementById("viewer-status");
  if (!text.trim()) { status.textContent = "type a prompt first"; return; }
  status.textContent = "computing…";
  try {
    const res = await fetch("attention", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt: text }) });
    const doc = await res.json();
    if (!res.ok) { status.textContent = doc.error || `error ${res.status}`; return; }
    setViewerData(doc);
    status.textContent = `${doc.n_tokens} tokens`;
  } catch (err) {
    status.textContent = `the server did not answer: ${err}`;
  }
}

async function detectServer() {
  // Only `headscope view` answers GET attention; a page opened as a file says how to start it.
  const folder = document.querySelector("#viewer-static-note .report-folder");
  if (location.protocol === "file:") {
    if (folder) folder.textContent = decodeURIComponent(location.pathname.replace(/\/[^/]*$/, "")) || ".";
    return;
  }
  try {
    const res = await fetch("attention", { method: "GET" });
    const info = res.ok ? await res.json() : null;
    if (!info || !info.model) return;
    document.getElementById("viewer-prompt-box").hidden = false;
    document.getElementById("viewer-static-note").hidden = true;
    document.getElementById("viewer-status").textContent = `served with ${info.model}`;
    document.getElementById("viewer-run").addEventListener("click", runPrompt);
    document.getElementById("viewer-prompt").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) runPrompt();
    });
  } catch (err) { /* a plain file server: keep the note */ }
}

function showHead(layer, head) {
  const layers = document.getElementById("viewer-layer");
  if (![...layers.options].some((o) => o.value === String(layer))) return; // a hybrid's layer without heads
  layers.value = String(layer);
  document.getElementById("viewer-head").value = String(head);
  drawViewer();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table.sortable th[data-col]").forEach((th) => th.addEventListener("click", () => sortTable(th)));
  const filter = document.getElementById("head-filter");
  if (filter) {
    filter.addEventListener("input", filterTable);
    ["role-filter", "layer-filter"].forEach((id) => document.getElementById(id).addEventListener("change", filterTable));
    filterTable();
  }
  ["viewer-layer", "viewer-head"].forEach((id) => {
    const el = document.getElementById(id);
    if (el) el.addEventListener("change", drawViewer);
  });
  drawViewer();
  const heads = document.getElementById("token-view-heads");
  if (heads) heads.addEventListener("input", drawTokenView);
  drawTokenView();
  detectServer();
  const map = document.getElementById("role-map");
  if (map && map.on) {
    map.on("plotly_click", (ev) => {
      const p = ev.points && ev.points[0];
      if (p && p.curveNumber === 0) {
        showHead(p.y, p.x);
        document.getElementById("viewer").scrollIntoView();
      }
    });
  }
});
