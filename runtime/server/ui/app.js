// The /ui page: endpoints and versions, their last hour as plots, and the
// verdict, read from the admin API every few seconds. Plain JavaScript and
// the vendored uPlot; no build step.
"use strict";

const REFRESH_MS = 5000;
// Kept per origin (scheme, host and port), not sent with any request: a
// cookie would be shared by every port of the host, and sent to each.
const STORED = "wasmscore_admin";
const COLORS = ["#4c7bd9", "#e8710a", "#1a7f37", "#a142f4", "#cf222e", "#12939a"];
const PLOTS = [
  { key: "rps", title: "requests / s", unit: "req/s" },
  { key: "latency", title: "latency p50 (solid) and p99 (dashed), ms", unit: "ms" },
  { key: "errors_per_second", title: "errors (5xx) / s", unit: "err/s" },
  { key: "replicas", title: "replicas (solid) and queue (dashed)", unit: "" },
];

// What a test (or a curious person in the console) can read.
const state = { refreshes: 0, plots: {}, errors: [] };
window.wasmscoreUi = state;

// ---- the admin token: from the URL fragment once, then the origin's storage

// Earlier builds kept the token in a cookie for /ui: it goes.
document.cookie = `${STORED}=; Path=/ui; Max-Age=0`;

function readToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    // The fragment goes whatever it holds: a malformed one must not stop
    // the page before its login form shows.
    history.replaceState(null, "", location.pathname);
    try {
      saveToken(decodeURIComponent(m[1]));
    } catch {
      return null;
    }
  }
  return localStorage.getItem(STORED);
}

function saveToken(token) {
  localStorage.setItem(STORED, token);
}

function forgetToken(why) {
  localStorage.removeItem(STORED);
  showLogin(why);
}

function showLogin(why) {
  document.getElementById("login").hidden = false;
  document.getElementById("forget").hidden = true;
  if (why) document.getElementById("login-why").textContent = why;
  setStatus("not signed in");
}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: `Bearer ${readToken()}` } });
  if (r.status === 401) {
    forgetToken("That admin token was refused; give the one in DATA_DIR/admin.token.");
    throw new Error("unauthorized");
  }
  const body = await r.json().catch(() => null);
  return { status: r.status, body };
}

// ---- drawing ---------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return e;
}

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

function role(v) {
  if (v.is_control) return "control";
  if (v.mirror > 0) return "mirror";
  if (v.is_default) return "default";
  return "treatment";
}

function versionTable(service, series) {
  const total = series.reduce((n, s) => n + s.requests, 0);
  // A Map: a version named "constructor" is not an Object's own property.
  const observed = new Map(series.map((s) => [s.name, total ? (100 * s.requests) / total : null]));
  const head = el("tr", {}, ...["version", "role", "state", "traffic", "effective", "observed (1 h)", "replicas", "queued", "served"].map((h) => el("th", {}, h)));
  const rows = service.versions.map((v) =>
    el(
      "tr",
      { "data-version": v.name },
      el("td", {}, v.name),
      el("td", {}, role(v)),
      el("td", { class: `state-${v.state}`, title: v.error || v.last_error || "" }, v.state),
      el("td", { class: "num" }, `${v.traffic}%`),
      el("td", { class: "num" }, `${v.effective_traffic}%`),
      el("td", { class: "num" }, observed.get(v.name) == null ? "–" : `${observed.get(v.name).toFixed(1)}%`),
      el("td", { class: "num" }, v.replicas ?? "–"),
      el("td", { class: "num" }, v.queued ?? "–"),
      el("td", { class: "num" }, v.served ?? "–"),
    ),
  );
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows));
}

// One plot's columns: x, then per version one column (two for latency
// and replicas: p50/p99, replicas/queue), aligned on whole seconds.
function columns(plot, series) {
  const pick = {
    rps: (s) => [s.rps],
    latency: (s) => [s.p50_ms, s.p99_ms],
    errors_per_second: (s) => [s.errors_per_second],
    replicas: (s) => [s.replicas, s.queued],
  }[plot.key];
  const tables = series.map((s) => [s.t.map(Math.round), ...pick(s)]);
  const data = tables.length ? uPlot.join(tables) : [[]];
  const lines = [{}];
  series.forEach((s, i) => {
    const stroke = COLORS[i % COLORS.length];
    pick(s).forEach((_, j) =>
      lines.push({ label: j ? `${s.name} (${plot.key === "latency" ? "p99" : "queue"})` : s.name, stroke, width: 2, dash: j ? [6, 4] : undefined, spanGaps: true }),
    );
  });
  return { data, lines };
}

function drawPlot(box, id, plot, series) {
  const { data, lines } = columns(plot, series);
  const shape = lines.map((l) => l.label).join("|");
  const have = state.plots[id];
  if (have && have.shape === shape && box.contains(have.u.root)) {
    have.u.setData(data);
  } else {
    if (have) have.u.destroy();
    box.replaceChildren();
    const u = new uPlot(
      {
        width: Math.max(400, box.clientWidth || 440),
        height: 200,
        series: lines,
        scales: { x: { time: true } },
        axes: [{}, { label: plot.unit, size: 60 }],
        legend: { live: false },
      },
      data,
      box,
    );
    state.plots[id] = { u, shape };
  }
  state.plots[id].points = data[0].length;
  state.plots[id].values = data.slice(1).reduce((n, col) => n + col.filter((x) => x != null).length, 0);
}

function verdictBox(compare) {
  const box = el("div", { class: "verdict" }, el("strong", {}, "Verdict (each treatment against the control)"));
  if (compare.status === 409) {
    box.append(el("p", { class: "muted" }, compare.body?.error?.message ?? "no control version"));
    return box;
  }
  if (compare.status !== 200) {
    box.append(el("p", { class: "muted" }, `not available here (${compare.status})`));
    return box;
  }
  const v = compare.body.verdict;
  for (const line of v.lines) box.append(el("p", { class: "line" }, line));
  if (!v.comparisons.length) box.append(el("p", { class: "muted" }, "no treatment serving"));
  if (v.srm?.mismatch) {
    box.append(el("p", { class: "srm" }, `sample ratio mismatch: the observed split is not the configured one (p = ${v.srm.p_value.toExponential(1)})`));
  }
  return box;
}

async function drawEndpoint(main, service) {
  const name = service.name;
  const [series, compare] = await Promise.all([api(`/admin/v1/endpoints/${encodeURIComponent(name)}/series`), api(`/admin/v1/endpoints/${encodeURIComponent(name)}/compare`)]);
  let sec = main.querySelector(`section[data-endpoint="${CSS.escape(name)}"]`);
  if (!sec) {
    sec = el("section", { class: "endpoint", "data-endpoint": name }, el("h2"), el("div", { class: "table" }), el("div", { class: "plots" }), el("div", { class: "verdict-slot" }));
    for (const p of PLOTS) sec.querySelector(".plots").append(el("div", { class: "plot", "data-plot": p.key }, el("h3", {}, p.title), el("div", { class: "canvas" })));
    main.append(sec);
  }
  const versions = series.status === 200 ? series.body.versions : [];
  sec.querySelector("h2").textContent = `${name} — ${service.state}${service.control_version ? `, control ${service.control_version}` : ""}`;
  sec.querySelector(".table").replaceChildren(versionTable(service, versions));
  for (const p of PLOTS) drawPlot(sec.querySelector(`.plot[data-plot="${p.key}"] .canvas`), `${name}/${p.key}`, p, versions);
  sec.querySelector(".verdict-slot").replaceChildren(verdictBox(compare));
}

// One refresh at a time: a slow server does not get them stacked.
let refreshing = false;

async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    await refreshOnce();
  } finally {
    refreshing = false;
  }
}

async function refreshOnce() {
  if (!readToken()) return showLogin();
  document.getElementById("login").hidden = true;
  document.getElementById("forget").hidden = false;
  try {
    const list = await api("/admin/v1/endpoints");
    if (list.status !== 200) throw new Error(list.body?.error?.message ?? `HTTP ${list.status}`);
    const main = document.getElementById("endpoints");
    const names = new Set(list.body.services.map((s) => s.name));
    for (const sec of main.querySelectorAll("section.endpoint")) {
      if (names.has(sec.dataset.endpoint)) continue;
      // Its plots go with it (their listeners too).
      for (const id of Object.keys(state.plots)) {
        if (id.startsWith(`${sec.dataset.endpoint}/`)) {
          state.plots[id].u.destroy();
          delete state.plots[id];
        }
      }
      sec.remove();
    }
    if (names.size) for (const p of main.querySelectorAll(":scope > p.muted")) p.remove();
    for (const service of list.body.services) await drawEndpoint(main, service);
    if (!names.size) main.replaceChildren(el("p", { class: "muted" }, "No endpoints yet: `wasmscore deploy` one."));
    state.refreshes += 1;
    setStatus(`${names.size} endpoint(s); updated ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    state.errors.push(String(e));
    if (String(e) !== "Error: unauthorized") setStatus(`refresh failed: ${e}`);
  }
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  saveToken(document.getElementById("token").value.trim());
  refresh();
});
document.getElementById("forget").addEventListener("click", () => forgetToken());
refresh();
setInterval(refresh, REFRESH_MS);
