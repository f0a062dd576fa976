// The orderstream console: polls the read-only JSON under /api/ every 1.5 s and draws it.
// Every request goes to this page's own origin.
"use strict";

const REFRESH_MS = 1500;
// Errors the page met, for whoever watches it (the browser tests read this).
window.consoleErrors = [];
window.addEventListener("error", (e) => window.consoleErrors.push(String(e.message)));

const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 0) =>
  x == null || Number.isNaN(x) ? "–" : Number(x).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
const money = (x) => fmt(x, 2);
const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const ago = (unixS) => {
  if (!unixS) return "never";
  const s = Math.max(0, Date.now() / 1000 - unixS);
  return s < 90 ? `${s.toFixed(0)} s ago` : `${(s / 60).toFixed(1)} min ago`;
};

// Tabs.
document.querySelectorAll("header nav button").forEach((button) => {
  button.addEventListener("click", () => {
    document.querySelectorAll("header nav button").forEach((b) => b.classList.toggle("active", b === button));
    document.querySelectorAll("main section").forEach((s) => s.classList.toggle("active", s.id === button.dataset.tab));
    charts.forEach((c) => c && c.setSize(chartSize(c.root.parentElement)));
  });
});

const charts = [];
function chartSize(el) {
  return { width: Math.max(300, (el && el.clientWidth ? el.clientWidth : 460) - 10), height: 200 };
}
function makeChart(id, series, scales = {}) {
  const el = $(id);
  const opts = {
    ...chartSize(el.parentElement),
    scales,
    series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 1.5 }))],
    axes: [{}, { size: 80 }],
    legend: { live: false },
  };
  const chart = new uPlot(opts, [[], ...series.map(() => [])], el);
  charts.push(chart);
  return chart;
}
const ratesChart = makeChart("rates-chart", [
  ["produced", "#6b7280"], ["consumed", "#2563eb"], ["stored", "#059669"], ["applied", "#7c3aed"], ["dead-lettered", "#dc2626"],
]);
const lagChart = makeChart("lag-chart", [["lag", "#b45309"]]);
// Always the last 30 minutes, however few of them have sales yet.
const lastHalfHour = () => [Date.now() / 1000 - 1800, Date.now() / 1000 + 60];
const minutesChart = makeChart("minutes-chart", [["sales", "#2563eb"], ["profit", "#059669"]], {
  x: { time: true, range: lastHalfHour },
});

async function get(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function drawPipeline(p) {
  $("chain").innerHTML = p.stages
    .map((s, i) => `${i ? '<span class="arrow">→</span>' : ""}<div class="card" data-stage="${escapeHtml(s.stage)}">
        <div class="label">${escapeHtml(s.stage)}</div>
        <div class="value stage-total">${fmt(s.total)}</div>
        <div class="sub">${fmt(s.per_second, 1)} /s</div></div>`)
    .join("");
  $("ready").textContent = p.ready ? "yes" : "no";
  $("ready").className = "value " + (p.ready ? "up" : "down");
  $("ready-why").textContent = p.not_ready_because || "";
  $("in-flight").textContent = `${fmt(p.in_flight_batches)} / ${fmt(p.max_in_flight_batches)}`;
  $("paused").textContent = fmt(p.paused_partitions);
  const l = p.latency_seconds;
  $("latency").textContent = l.p50 == null ? "–" : `${fmt(l.p50 * 1000)} / ${fmt(l.p99 * 1000)} ms`;
  $("restarts").textContent = fmt(p.restarts);
  $("last-failure").textContent = p.last_failure ? `${p.last_failure.actor}: ${p.last_failure.error}` : "";
  $("process").textContent = `${fmt(p.memory_bytes / 1048576)} MiB / ${fmt(p.cpu_cores, 2)} cores`;
  $("stores").innerHTML = p.stores
    .map((s) => `<span class="${s.reachable ? "up" : "down"}" data-store="${escapeHtml(s.store)}">${escapeHtml(s.store)} ${s.reachable ? "up" : "unreachable"}</span>`)
    .join(" ");
  $("partitions").innerHTML = p.partitions
    .map((q) => `<tr><td>${q.partition}</td><td>${fmt(Math.max(0, q.lag))}</td><td>${ago(q.last_progress_unix_s)}</td>
        <td class="${q.stuck ? "down" : ""}">${q.stuck ? "stuck" : q.held_here ? "held here" : "elsewhere"}</td></tr>`)
    .join("");
  const h = p.history;
  ratesChart.setData([h.unix_s, h.produced, h.consumed, h.stored, h.applied, h.dead_lettered]);
  lagChart.setData([h.unix_s, h.lag.map((v) => Math.max(0, v))]);
}

function bars(rows) {
  const max = Math.max(1, ...rows.map((r) => r.sales));
  return rows
    .map((r) => `<tr><td>${escapeHtml(r.name)}</td><td class="barcell"><div class="bar" style="width:${(100 * r.sales) / max}%"></div></td>
        <td>${money(r.sales)}</td><td class="muted">${money(r.profit)}</td></tr>`)
    .join("");
}

function drawSales(s) {
  $("olap-state").textContent = s.reachable ? "reachable" : "unreachable";
  $("olap-state").className = "value " + (s.reachable ? "up" : "down");
  $("olap-error").textContent = s.reachable ? "" : s.error || "";
  if (!s.reachable) return; // keep the last figures on screen
  $("sales-total").textContent = money(s.today.sales);
  $("profit-total").textContent = money(s.today.profit);
  $("orders-total").textContent = fmt(s.today.orders);
  $("margin").textContent = `${fmt(s.today.margin * 100, 1)} %`;
  $("by-category").innerHTML = bars(s.by_category);
  $("by-platform").innerHTML = bars(s.by_platform);
  $("sales-table").innerHTML = s.table
    .map((r) => `<tr><td>${escapeHtml(r.category)}</td><td>${escapeHtml(r.platform)}</td><td>${fmt(r.orders)}</td><td>${money(r.sales)}</td><td>${money(r.profit)}</td></tr>`)
    .join("");
  minutesChart.setData([s.per_minute.map((m) => m.minute), s.per_minute.map((m) => m.sales), s.per_minute.map((m) => m.profit)]);
}

function drawDeadLetters(d) {
  $("dl-reasons").innerHTML = Object.entries(d.by_reason)
    .map(([reason, n]) => `<tr><td>${escapeHtml(reason)}</td><td>${fmt(n)}</td></tr>`)
    .join("");
  $("dl-recent").innerHTML = d.recent
    .map((r) => `<tr><td>${escapeHtml(r.reason)}</td><td>${r.partition}</td><td>${r.offset}</td><td>${new Date(r.unix_ms).toLocaleTimeString()}</td></tr>`)
    .join("");
}

async function refresh() {
  const results = await Promise.allSettled([get("/api/pipeline"), get("/api/sales"), get("/api/dead-letters")]);
  const [pipeline, sales, deadLetters] = results;
  if (pipeline.status === "fulfilled") drawPipeline(pipeline.value);
  if (sales.status === "fulfilled") drawSales(sales.value);
  if (deadLetters.status === "fulfilled") drawDeadLetters(deadLetters.value);
  const failed = results.filter((r) => r.status === "rejected");
  $("status").textContent = failed.length ? "the instance does not answer" : `live · ${new Date().toLocaleTimeString()}`;
  $("status").className = failed.length ? "down" : "";
  document.body.dataset.refreshed = String(Date.now());
}

async function loop() {
  try {
    await refresh();
  } catch (e) {
    window.consoleErrors.push(String(e));
  }
  setTimeout(loop, REFRESH_MS);
}
loop();
