// The token view (CircuitsVis-style): several heads side by side, each the prompt's tokens as text.
// Hover a token (in any head) to highlight, in every head, the keys that token attends to (the
// background's strength = the attention weight); click it to keep it chosen. Used by the atlas page and
// by headscope.viz.token_view (inlined into a notebook cell's HTML: no external resources).
//
// data = {tokens: [text of each key column], rows: [the key column of each query row, or -1],
//         heads: [{label, values: [query row][key column] in 0..1}], note: optional text}
"use strict";

window.headscopeTokenView = function (container, data) {
  const show = (t) => (t === null ? "…" : t.replace(/\n/g, "⏎").replace(/\t/g, "⇥")) || "∅";
  const rowOf = new Map(data.rows.map((col, q) => [col, q]));  // key column -> its query row
  let pinned = data.rows.length ? data.rows[data.rows.length - 1] : -1;  // the last token, until one is clicked
  container.textContent = "";
  container.classList.add("hs-tv");
  if (data.note) {
    const p = document.createElement("div");
    p.className = "hs-tv-note";
    p.textContent = data.note;
    container.appendChild(p);
  }
  const grid = document.createElement("div");
  grid.className = "hs-tv-grid";
  container.appendChild(grid);
  const panels = data.heads.map((head) => {
    const panel = document.createElement("div");
    panel.className = "hs-tv-head";
    const title = document.createElement("div");
    title.className = "hs-tv-title";
    title.textContent = head.label;
    panel.appendChild(title);
    const text = document.createElement("div");
    text.className = "hs-tv-text";
    const spans = data.tokens.map((tok, col) => {
      const s = document.createElement("span");
      s.className = "hs-tv-tok" + (rowOf.has(col) ? " hs-tv-query" : "");
      s.textContent = show(tok);
      s.dataset.col = String(col);
      text.appendChild(s);
      return s;
    });
    panel.appendChild(text);
    grid.appendChild(panel);
    return { head, spans };
  });
  function paint(col) {
    const q = rowOf.has(col) ? rowOf.get(col) : -1;
    panels.forEach(({ head, spans }) => {
      spans.forEach((s, k) => {
        const v = q < 0 ? 0 : head.values[q][k] || 0;
        s.style.background = v > 0 ? `rgba(214, 39, 40, ${Math.min(1, v).toFixed(3)})` : "";
        s.style.color = v > 0.55 ? "#fff" : "";
        s.classList.toggle("hs-tv-current", k === col);
        s.title = q < 0 ? `${show(data.tokens[k])} (not a query shown here)`
          : `${head.label}: ${show(data.tokens[col])} → ${show(data.tokens[k])}: ${v.toFixed(3)}`;
      });
    });
  }
  grid.addEventListener("mouseover", (ev) => {
    const col = ev.target.dataset && ev.target.dataset.col;
    if (col !== undefined) paint(parseInt(col, 10));
  });
  grid.addEventListener("mouseleave", () => paint(pinned));
  grid.addEventListener("click", (ev) => {
    const col = ev.target.dataset && ev.target.dataset.col;
    if (col !== undefined) { pinned = parseInt(col, 10); paint(pinned); }
  });
  paint(pinned);
  return { paint };
};
