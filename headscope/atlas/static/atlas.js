// The atlas page's behaviour: head-table sorting and filtering, the attention viewer, and a click on
// the role map opening that head in the viewer. No external resources: plotly.min.js sits beside the page.
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

function showHead(layer, head) {
  document.getElementById("viewer-layer").value = String(layer);
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
