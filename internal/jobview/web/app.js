// The live page: polls /api/job every second and redraws. No framework,
// no build step; everything is drawn with the DOM and SVG.
"use strict";

const POLL_MS = 1000;
const SVGNS = "http://www.w3.org/2000/svg";
const KINDS = {
  F: ["forward", "#2563eb"], B: ["backward", "#f97316"], I: ["backward (input)", "#fb923c"],
  W: ["backward (weights)", "#16a34a"], L: ["loss", "#9333ea"], R: ["all-reduce", "#0891b2"],
  S: ["optimizer step", "#64748b"],
};

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").slice(0, 19) + "Z";
}

function fmtSeconds(s) {
  if (s === undefined || s === null) return "";
  return s < 1 ? (s * 1000).toFixed(0) + " ms" : s.toFixed(2) + " s";
}

let lastStep = null;
let lastStepAt = 0;

function renderFacts(s) {
  $("job").textContent = s.job;
  const c = s.committed;
  $("step").textContent = c ? String(c.step) : "0";
  $("loss").textContent = c ? c.loss.toFixed(4) : "–";
  $("epoch").textContent = s.plan ? String(s.plan.epoch) : "–";
  $("schedule").textContent = s.plan ? s.plan.schedule + " · " + s.plan.stages + " stages" : "no plan yet";
  $("leader").textContent = s.leader ? s.leader.name : "none";
  $("token").textContent = s.leader ? "fencing token " + s.leader.fencing_token + (s.leader.ttl_s >= 0 ? ", lease " + s.leader.ttl_s + " s" : "") : "";
  $("checkpoint").textContent = s.checkpoint ? "step " + s.checkpoint.step : "none";
  $("checkpoint-dir").textContent = s.checkpoint ? s.checkpoint.files + " files in " + s.checkpoint.dir : "";
  $("checkpoint-dir").title = s.checkpoint ? s.checkpoint.dir : "";
  $("recovery-count").textContent = String(s.recoveries.length);
  const lr = s.recoveries[s.recoveries.length - 1];
  $("recovery-last").textContent = lr ? "last: " + lr.kind + " at step " + lr.step : "none recorded";
  $("revision").textContent = "etcd revision " + s.revision + " at " + fmtTime(s.read_at);

  const now = Date.now();
  if (c && c.step !== lastStep) { lastStep = c.step; lastStepAt = now; }
  const st = $("state");
  if (s.offline) { st.textContent = "not running"; st.className = "pill offline"; }
  else if (!s.leader) { st.textContent = "no leader"; st.className = "pill noleader"; }
  else if (lastStepAt && now - lastStepAt > 30000) { st.textContent = "no step for " + Math.round((now - lastStepAt) / 1000) + " s"; st.className = "pill stalled"; }
  else { st.textContent = "running"; st.className = "pill running"; }
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function workerBox(name, member, planWorker) {
  const gone = !member;
  const box = el("div", "worker" + (gone ? " gone" : ""));
  box.appendChild(el("div", "name", name));
  let meta = gone ? "registration gone" : member.addr;
  if (planWorker && planWorker.replica > 0) meta += " · replica " + planWorker.replica;
  box.appendChild(el("div", "meta", meta));
  if (member) {
    const ttl = member.ttl_s;
    box.appendChild(el("div", "meta", ttl >= 0 ? "lease " + member.lease + " · " + ttl + " of " + member.granted_s + " s left" : "lease " + member.lease));
    if (ttl >= 0 && member.granted_s > 0) {
      const bar = el("div", "ttl");
      const fill = el("div");
      fill.style.width = Math.min(100, 100 * ttl / member.granted_s) + "%";
      bar.appendChild(fill);
      box.appendChild(bar);
    }
  }
  return box;
}

function renderStages(s) {
  const root = $("stages");
  root.replaceChildren();
  const members = {};
  for (const m of s.members) members[m.name] = m;
  if (!s.plan) {
    root.appendChild(el("div", "empty", "no plan installed yet; " + s.members.length + " workers registered"));
    return;
  }
  const vacant = new Set(s.plan.vacant || []);
  for (let st = 0; st < s.plan.stages; st++) {
    const col = el("div", "stage" + (vacant.has(st) ? " vacant" : ""));
    col.appendChild(el("h3", "", "stage " + st + (vacant.has(st) ? " · vacant" : "")));
    for (const w of s.plan.workers) {
      if (w.stages.includes(st)) col.appendChild(workerBox(w.name, w.registered ? members[w.name] : null, w));
    }
    if (vacant.has(st)) col.appendChild(el("div", "empty", "skipped by every path"));
    root.appendChild(col);
  }
  const standby = s.members.filter((m) => !m.in_plan);
  if (standby.length) {
    const col = el("div", "stage standby");
    col.appendChild(el("h3", "", "standby"));
    for (const m of standby) col.appendChild(workerBox(m.name, m, null));
    root.appendChild(col);
  }
  $("stage-note").textContent = "epoch " + s.plan.epoch + " · " + s.plan.workers.length + " workers";
}

function niceTicks(lo, hi, n) {
  const span = hi - lo || 1;
  const step = Math.pow(10, Math.floor(Math.log10(span / n)));
  const err = span / n / step;
  const m = err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
  const t = step * m;
  const out = [];
  for (let v = Math.ceil(lo / t) * t; v <= hi + 1e-12; v += t) out.push(v);
  return out;
}

// axes draws a frame with ticks and returns the mapping functions.
function axes(g, W, H, pad, x0, x1, y0, y1, fmtX, fmtY, xLabel) {
  const sx = (x) => pad.l + (x - x0) / ((x1 - x0) || 1) * (W - pad.l - pad.r);
  const sy = (y) => H - pad.b - (y - y0) / ((y1 - y0) || 1) * (H - pad.t - pad.b);
  for (const v of niceTicks(y0, y1, 4)) {
    g.appendChild(svg("line", { x1: pad.l, x2: W - pad.r, y1: sy(v), y2: sy(v), stroke: "#e3e6eb" }));
    g.appendChild(svg("text", { x: pad.l - 6, y: sy(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#6b7280" }, fmtY(v)));
  }
  for (const v of niceTicks(x0, x1, 6)) {
    g.appendChild(svg("line", { x1: sx(v), x2: sx(v), y1: H - pad.b, y2: H - pad.b + 4, stroke: "#9ca3af" }));
    g.appendChild(svg("text", { x: sx(v), y: H - pad.b + 16, "text-anchor": "middle", "font-size": 11, fill: "#6b7280" }, fmtX(v)));
  }
  g.appendChild(svg("line", { x1: pad.l, x2: W - pad.r, y1: H - pad.b, y2: H - pad.b, stroke: "#9ca3af" }));
  g.appendChild(svg("text", { x: W - pad.r, y: H - 2, "text-anchor": "end", "font-size": 11, fill: "#6b7280" }, xLabel));
  return [sx, sy];
}

function renderLoss(s) {
  const g = $("losschart");
  g.replaceChildren();
  const pts = s.losses || [];
  const W = 600, H = 260, pad = { l: 48, r: 12, t: 10, b: 30 };
  if (pts.length === 0) {
    g.appendChild(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#6b7280" }, "no committed step yet"));
    return;
  }
  let y0 = Infinity, y1 = -Infinity;
  for (const p of pts) { y0 = Math.min(y0, p.loss); y1 = Math.max(y1, p.loss); }
  const m = (y1 - y0) * 0.08 || 0.05;
  y0 -= m; y1 += m;
  const x0 = pts[0].step, x1 = Math.max(pts[pts.length - 1].step, x0 + 1);
  const [sx, sy] = axes(g, W, H, pad, x0, x1, y0, y1, (v) => String(Math.round(v)), (v) => v.toFixed(2), "step");
  const d = pts.map((p, i) => (i ? "L" : "M") + sx(p.step).toFixed(1) + " " + sy(p.loss).toFixed(1)).join(" ");
  g.appendChild(svg("path", { d: d, fill: "none", stroke: "#2563eb", "stroke-width": 2 }));
  const last = pts[pts.length - 1];
  g.appendChild(svg("circle", { cx: sx(last.step), cy: sy(last.loss), r: 4, fill: "#2563eb" }));
  for (const r of s.recoveries) {
    if (r.step >= x0 && r.step <= x1) {
      g.appendChild(svg("line", { x1: sx(r.step), x2: sx(r.step), y1: pad.t, y2: H - pad.b, stroke: "#b91c1c", "stroke-dasharray": "4 3" }));
    }
  }
}

function renderTimeline(s) {
  const g = $("timeline");
  g.replaceChildren();
  const t = s.timeline;
  const W = 600, H = 260, pad = { l: 80, r: 12, t: 8, b: 30 };
  if (!t || !t.workers || t.workers.length === 0) {
    g.appendChild(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#6b7280" },
      s.leader ? "served by the leading coordinator only" : "no iteration measured"));
    $("timeline-note").textContent = "";
    return;
  }
  $("timeline-note").textContent = "(step " + t.step + ", " + fmtSeconds(t.span_s) + ")";
  const span = t.span_s || 1;
  const [sx] = axes(g, W, H, pad, 0, span, 0, 1, (v) => fmtSeconds(v), () => "", "seconds");
  // Rows in pipeline order: by the first stage each worker holds.
  const stageOf = {};
  for (const w of (s.plan ? s.plan.workers : [])) stageOf[w.name] = Math.min(...w.stages);
  const rows = t.workers.slice().sort((a, b) => ((stageOf[a.worker] ?? 1e9) - (stageOf[b.worker] ?? 1e9)) || (a.worker < b.worker ? -1 : 1));
  const rowH = (H - pad.t - pad.b) / rows.length;
  const seen = new Set();
  rows.forEach((w, i) => {
    const y = pad.t + i * rowH;
    const label = w.worker + (stageOf[w.worker] !== undefined ? " · s" + stageOf[w.worker] : "");
    g.appendChild(svg("text", { x: pad.l - 6, y: y + rowH / 2 + 4, "text-anchor": "end", "font-size": 12, fill: "#1d2330" }, label));
    for (const a of w.actions) {
      const k = a.action.charAt(0);
      seen.add(k);
      const color = (KINDS[k] || ["", "#9ca3af"])[1];
      const x = sx(a.start_s), x2 = sx(a.end_s);
      const rect = svg("rect", { x: x, y: y + rowH * 0.15, width: Math.max(1, x2 - x), height: rowH * 0.7, fill: color, rx: 2 });
      rect.appendChild(svg("title", {}, a.action + " " + fmtSeconds(a.end_s - a.start_s)));
      g.appendChild(rect);
    }
  });
  const legend = $("legend");
  legend.replaceChildren();
  for (const k of Object.keys(KINDS)) {
    if (!seen.has(k)) continue;
    const item = el("span");
    const sw = el("span", "sw");
    sw.style.background = KINDS[k][1];
    item.appendChild(sw);
    item.appendChild(document.createTextNode(KINDS[k][0]));
    legend.appendChild(item);
  }
}

function renderRecoveries(s) {
  const body = $("recoveries").tBodies[0];
  body.replaceChildren();
  if (s.recoveries.length === 0) {
    const tr = el("tr");
    const td = el("td", "empty", "none recorded");
    td.colSpan = 7;
    tr.appendChild(td);
    body.appendChild(tr);
    return;
  }
  for (const r of s.recoveries.slice().reverse()) {
    const tr = el("tr");
    let who = [];
    if (r.lost && r.lost.length) who.push("lost " + r.lost.join(", "));
    if (r.joined && r.joined.length) who.push("joined " + r.joined.join(", "));
    if (r.vacant && r.vacant.length) who.push("stage " + r.vacant.join(", ") + " vacant");
    if (r.kind === "restore" || r.kind === "takeover") who.push("from step " + (r.from_checkpoint || 0) + (r.replayed ? ", replayed " + r.replayed : ""));
    const cells = [fmtTime(r.detected_at), r.kind, String(r.step), who.join("; "), String(r.epoch) + " (" + r.workers + " w)",
      fmtSeconds(r.recovery_s) + (r.to_commit_s ? " / " + fmtSeconds(r.to_commit_s) + " to commit" : ""), r.cause];
    cells.forEach((c, i) => {
      const td = el("td", i === 1 ? "kind " + r.kind : i === 6 ? "cause" : "", c);
      if (i === 6) td.title = c;
      tr.appendChild(td);
    });
    body.appendChild(tr);
  }
}

function render(s) {
  renderFacts(s);
  renderStages(s);
  renderLoss(s);
  renderTimeline(s);
  renderRecoveries(s);
}

async function poll() {
  try {
    const resp = await fetch("api/job", { cache: "no-store" });
    if (!resp.ok) throw new Error(resp.status + " " + (await resp.text()));
    render(await resp.json());
  } catch (e) {
    const st = $("state");
    st.textContent = "cannot read the job: " + e.message;
    st.className = "pill error";
  }
  setTimeout(poll, POLL_MS);
}

poll();
