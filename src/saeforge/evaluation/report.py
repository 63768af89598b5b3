"""`saeforge inspect`: a static, self-contained HTML feature browser plus PNG plots.

One page (index.html, no server, no network): the dictionary's summary and feature-density
plot on top; a searchable, sortable list of the studied features; the selected feature's
top-activating contexts (activating token marked, shaded by activation), activation
histogram (inline SVG) and the tokens it promotes and suppresses. The data is embedded as
JSON in the page and rendered with a few lines of plain JavaScript (textContent only: token
strings never become markup).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from saeforge.evaluation.analysis import DictionaryReport

VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍", "\x00": "␀"}


def visible(tok: str) -> str:
    return "".join(VISIBLE.get(c, c if c.isprintable() or c == " " else f"\\x{ord(c):02x}") for c in tok)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def plots(rep: DictionaryReport) -> dict[str, bytes]:
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    out = {}
    counts, edges = rep.density_histogram()
    fig = Figure(figsize=(6.5, 3.2))
    ax = fig.subplots()
    if counts:
        ax.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge", color="tab:blue")
    ax.set(xlabel="log10 firing frequency", ylabel="features",
           title=f"feature density ({rep.dead} dead, {rep.dense} dense > 10%, {len(rep.frequency_F)} in all)")
    fig.tight_layout()
    out["density.png"] = _png(fig)
    fig = Figure(figsize=(6.5, 3.2))
    ax = fig.subplots()
    feats = list(rep.features.values())
    ax.scatter([f.frequency for f in feats], [f.max_activation for f in feats], s=12)
    ax.set(xscale="log", xlabel="firing frequency", ylabel="max activation", title="studied features")
    fig.tight_layout()
    out["features.png"] = _png(fig)
    return out


def payload(rep: DictionaryReport, meta: dict[str, Any]) -> dict[str, Any]:
    feats = []
    for f in rep.features.values():
        feats.append({
            "index": f.index, "frequency": f.frequency, "max": f.max_activation,
            "contexts": [{"tokens": [visible(t) for t in c.tokens], "marked": c.marked, "act": c.activation}
                         for c in f.contexts],
            "hist": f.histogram, "edges": f.bin_edges,
            "promoted": [[visible(t), v] for t, v in f.promoted],
            "suppressed": [[visible(t), v] for t, v in f.suppressed],
            "label": f.label["task"] if f.label else "", "f1": f.label["f1"] if f.label else 0.0,
            "precision": f.label["precision"] if f.label else 0.0, "recall": f.label["recall"] if f.label else 0.0,
        })
    return {"meta": meta, "n_tokens": rep.n_tokens, "n_features": len(rep.frequency_F), "dead": rep.dead,
            "dense": rep.dense, "features": feats}


def write(rep: DictionaryReport, out: str | Path, meta: dict[str, Any]) -> Path:
    from saeforge.runtime import atomic_write_bytes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pngs = plots(rep)
    for name, data in pngs.items():
        atomic_write_bytes(out / name, data)
    data = json.dumps(payload(rep, meta)).replace("</", "<\\/")
    density = base64.b64encode(pngs["density.png"]).decode()
    html = PAGE.replace("__DATA__", data).replace("__DENSITY__", density)
    atomic_write_bytes(out / "index.html", html.encode())
    return out / "index.html"


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>saeforge feature browser</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;display:flex;height:100vh;color:#222}
#side{width:330px;border-right:1px solid #ccc;display:flex;flex-direction:column}
#side header{padding:8px;border-bottom:1px solid #ddd}
#search{width:100%;box-sizing:border-box;padding:4px}
#list{overflow:auto;flex:1;margin:0;padding:0;list-style:none}
#list li{padding:4px 8px;cursor:pointer;border-bottom:1px solid #f0f0f0;font-family:monospace;font-size:12px}
#list li:hover,#list li.sel{background:#e8f0fe}
#main{flex:1;overflow:auto;padding:12px 18px}
.ctx{font-family:monospace;white-space:pre;background:#fafafa;border:1px solid #eee;margin:3px 0;padding:2px 6px;overflow:hidden}
.ctx mark{background:#f4a;color:#000;font-weight:bold}
.tok{display:inline-block;margin:2px;padding:1px 5px;border-radius:3px;font-family:monospace}
.pos{background:#dfd}.neg{background:#fdd}
button{font-size:12px}
</style></head><body>
<div id="side"><header>
<div id="summary"></div>
<input id="search" placeholder="search: feature number or text in its contexts / tokens">
<div>sort: <button data-k="index">index</button> <button data-k="frequency">frequency</button>
<button data-k="max">max activation</button> <button data-k="f1">label F1</button> <span id="count"></span></div>
</header><ul id="list"></ul></div>
<div id="main"><img id="density" alt="feature density" src="data:image/png;base64,__DENSITY__" style="max-width:640px">
<div id="detail"><p>Select a feature on the left.</p></div></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; };
let sortKey = "index", sortDir = 1, selected = null;
document.getElementById("summary").textContent =
  `${D.meta.model || ""} ${D.meta.hook || ""} · ${D.n_features} features · ${D.dead} dead · ${D.dense} dense · ` +
  `${D.n_tokens} tokens`;
function haystack(f) {
  return [String(f.index), f.label, ...f.contexts.map(c => c.tokens.join("")), ...f.promoted.map(p => p[0]),
          ...f.suppressed.map(p => p[0])].join("\n").toLowerCase();
}
D.features.forEach(f => f.hay = haystack(f));
function renderList() {
  const q = document.getElementById("search").value.trim().toLowerCase();
  const list = document.getElementById("list"); list.replaceChildren();
  const shown = D.features.filter(f => !q || (/^\d+$/.test(q) ? String(f.index) === q || f.hay.includes(q) : f.hay.includes(q)))
    .sort((a, b) => sortDir * (a[sortKey] - b[sortKey]));
  for (const f of shown) {
    const li = el("li", f.index === selected ? "sel" : "",
      `#${f.index}  freq ${f.frequency.toExponential(2)}  max ${f.max.toFixed(2)}` +
      (f.label ? `  ${f.label} F1 ${f.f1.toFixed(2)}` : ""));
    li.dataset.index = f.index;
    li.onclick = () => { selected = f.index; renderList(); renderFeature(f); };
    list.appendChild(li);
  }
  document.getElementById("count").textContent = `${shown.length} shown`;
}
function histogram(f) {
  const ns = "http://www.w3.org/2000/svg", W = 360, H = 90, n = f.hist.length, m = Math.max(1, ...f.hist);
  const svg = document.createElementNS(ns, "svg"); svg.setAttribute("width", W); svg.setAttribute("height", H + 16);
  f.hist.forEach((c, i) => { const r = document.createElementNS(ns, "rect");
    const h = H * Math.log1p(c) / Math.log1p(m); r.setAttribute("x", i * W / n); r.setAttribute("width", W / n - 1);
    r.setAttribute("y", H - h); r.setAttribute("height", h); r.setAttribute("fill", "#48c");
    const t = document.createElementNS(ns, "title"); t.textContent = `${f.edges[i].toFixed(2)}–${f.edges[i+1].toFixed(2)}: ${c}`;
    r.appendChild(t); svg.appendChild(r); });
  const lab = document.createElementNS(ns, "text"); lab.setAttribute("x", 0); lab.setAttribute("y", H + 13);
  lab.setAttribute("font-size", 11); lab.textContent = `0 … ${f.max.toFixed(2)} (log counts)`; svg.appendChild(lab);
  return svg;
}
function renderFeature(f) {
  const d = document.getElementById("detail"); d.replaceChildren();
  d.appendChild(el("h2", "", `Feature ${f.index}`));
  d.appendChild(el("p", "", `fires on ${(100 * f.frequency).toFixed(3)}% of tokens; max activation ${f.max.toFixed(3)}`));
  if (f.label) d.appendChild(el("p", "label", `best Python label: ${f.label} (F1 ${f.f1.toFixed(3)}, precision ` +
    `${f.precision.toFixed(3)}, recall ${f.recall.toFixed(3)}; labels from tokenize and ast)`));
  d.appendChild(el("h3", "", "Top-activating contexts"));
  const box = el("div", "contexts");
  for (const c of f.contexts) {
    const row = el("div", "ctx"); row.title = `activation ${c.act.toFixed(3)}`;
    c.tokens.forEach((t, i) => row.appendChild(i === c.marked ? el("mark", "", t) : document.createTextNode(t)));
    row.appendChild(el("span", "", `   (${c.act.toFixed(2)})`)); box.appendChild(row);
  }
  if (!f.contexts.length) box.appendChild(el("p", "", "never fired on these tokens"));
  d.appendChild(box);
  d.appendChild(el("h3", "", "Activation histogram (nonzero activations)"));
  d.appendChild(histogram(f));
  for (const [title, key, cls] of [["Promotes", "promoted", "pos"], ["Suppresses", "suppressed", "neg"]]) {
    d.appendChild(el("h3", "", `${title} (W_dec · W_U)`));
    const p = el("div", "effects " + key);
    for (const [tok, v] of f[key]) { const s = el("span", "tok " + cls, `${tok} ${v.toFixed(2)}`); p.appendChild(s); }
    d.appendChild(p);
  }
}
document.getElementById("search").addEventListener("input", renderList);
document.querySelectorAll("button[data-k]").forEach(b => b.onclick = () => {
  sortDir = sortKey === b.dataset.k ? -sortDir : (b.dataset.k === "index" ? 1 : -1); sortKey = b.dataset.k; renderList(); });
renderList();
</script></body></html>
"""
