// The live page: polls the dashboard's JSON API and redraws. Plain JS, no framework.
// Every value from the API goes into the page as text (textContent), never as
// HTML: rejected payloads are whatever a client sent.
"use strict";

const POLL_MS = 3000;
// Alerts and rejections change less often; each costs the database a full read on FerretDB.
const EVENTS_EVERY = 4;
const SERIES_MINUTES = 60;
// The range of the lower chart and of the CSV download, in minutes (the select in the page).
const RANGES = { "1 h": 60, "3 h": 180, "24 h": 1440, "7 days": 10080, "30 days": 43200, "90 days": 129600 };

const state = {
  sensor: new URLSearchParams(location.search).get("sensor"),
  chosen: new URLSearchParams(location.search).has("sensor"),
  chart: null,
  aggregates: null,
  // ?minutes=<one of RANGES> opens the page on that range.
  range: Object.values(RANGES).includes(Number(new URLSearchParams(location.search).get("minutes")))
    ? Number(new URLSearchParams(location.search).get("minutes"))
    : 60,
  polls: 0,
  // The model panel: a re-scored model's hash set beside the live forecasts (?compare=), and what was last asked.
  compare: new URLSearchParams(location.search).get("compare") || "",
  modelAsked: "",
  compareChart: null,
};

const $ = (selector) => document.querySelector(selector);

// Relative to the origin, never to the page URL: a page opened as
// http://user:pass@host/ would otherwise put the credentials into each
// request's URL, which fetch refuses. The browser still sends the login.
async function api(path) {
  const response = await fetch(new URL(path, location.origin), { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function fmt(value, digits = 2) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

// A time of day as the page writes it everywhere, on the charts' axes too: the 24-hour clock.
function timeOfDay(d) {
  return d.toLocaleTimeString([], { hour12: false });
}

function clock(iso) {
  return iso ? timeOfDay(new Date(iso)) : "–";
}

const epoch = (iso) => Date.parse(iso) / 1000;

// Time-axis labels as local clock times (uPlot's default stacks the date over them).
function clockTicks(_u, splits) {
  // Over more than a day and a half, the date says more than the time of day.
  if (splits.length > 1 && splits[splits.length - 1] - splits[0] > 1.5 * 86400) {
    return splits.map((t) => new Date(t * 1000).toLocaleDateString([], { month: "short", day: "numeric" }));
  }
  return splits.map((t) => {
    const d = new Date(t * 1000);
    const options = { hour: "2-digit", minute: "2-digit", hour12: false };
    if (d.getSeconds()) options.second = "2-digit";
    return d.toLocaleTimeString([], options);
  });
}

// --- health -------------------------------------------------------------------

function renderHealth(services) {
  const list = $("#health");
  list.replaceChildren(
    ...services.map((s) => {
      const rate = s.received_per_s ?? s.scored_per_s;
      const verb = s.received_per_s !== null && s.received_per_s !== undefined ? "in" : "scored";
      const checks = Object.entries(s.checks || {})
        .map(([name, ok]) => `${name} ${ok ? "ok" : "down"}`)
        .join(", ");
      return el(
        "li",
        { class: `service ${s.status}`, "data-service": s.name, "data-status": s.status, title: checks || s.error || "" },
        el("span", { class: "name" }, s.name),
        el("span", { class: `badge ${s.status}` }, s.status.replace("_", " ")),
        el("span", { class: "metric", "data-metric": "rate" }, rate === null || rate === undefined ? "– msg/s" : `${fmt(rate, 1)} msg/s ${verb}`),
        el("span", { class: "metric", "data-metric": "lag" }, `lag ${fmt(s.consumer_lag, 0)}`),
      );
    }),
  );
  if (!services.length) list.append(el("li", { class: "service subtle" }, "no services configured (DASHBOARD_SERVICES)"));
}

// --- alerts firing now (Alertmanager, through /api/firing) --------------------------

// Severities with a colour of their own; any other is shown as written, in grey.
const SEVERITIES = new Set(["critical", "warning", "info"]);
const PAGE_TITLE = document.title;

function firingAlert(a) {
  const severity = SEVERITIES.has(a.severity) ? a.severity : "other";
  const labels = Object.entries(a.labels || {}).map(([key, value]) => {
    const chip = el("span", { class: "label", "data-label": key }, `${key}=${value}`);
    if (key === "sensor" && value) {
      chip.classList.add("link");
      chip.title = "show this sensor";
      chip.addEventListener("click", () => choose(value));
    }
    return chip;
  });
  const item = el(
    "li",
    { class: `firing ${severity}`, "data-alertname": a.name, "data-severity": a.severity, "data-fingerprint": a.fingerprint || "" },
    el("span", { class: `badge ${severity}` }, a.severity),
    el("strong", { class: "alertname" }, a.name),
    el("span", { class: "summary" }, a.summary ?? "(no summary)"),
    el("time", { dateTime: a.since || "", title: a.since || "" }, a.since ? `since ${clock(a.since)}, ${ago((Date.now() - Date.parse(a.since)) / 1000)}` : "since –"),
  );
  // Only the dashboard's own runbook pages and http(s) links; the server checked too.
  if (a.runbook_url && /^(\/runbooks\/|https?:\/\/)/.test(a.runbook_url)) {
    item.append(el("a", { class: "runbook", href: a.runbook_url, target: "_blank", rel: "noopener noreferrer", title: a.runbook || "" }, "runbook"));
  }
  if (labels.length) item.append(el("span", { class: "labels" }, ...labels));
  return item;
}

function renderFiring(answer) {
  const panel = $("#firing-panel");
  const alerts = answer.alerts || [];
  Object.assign(panel.dataset, { status: answer.status, count: String(alerts.length) });
  $("#firing-count").textContent = answer.status === "ok" ? `(${answer.total})` : "";
  let text = "";
  if (answer.status === "not_configured") {
    text = "Alerting is not configured (DASHBOARD_ALERTMANAGER_URL is empty): this page cannot show alerts.";
  } else if (answer.status === "unreachable") {
    // Never an empty list that reads as "all good": say what is unknown.
    const last = answer.last_ok_at ? `last answer at ${clock(answer.last_ok_at)}` : "no answer since the dashboard started";
    text = `Alerting unreachable: Alertmanager at ${answer.alertmanager}: ${answer.error} (${last}). Alerts may be firing that this page cannot show.`;
  } else if (answer.status === "ok") {
    if (!alerts.length) text = `No alert firing (Alertmanager, ${clock(answer.checked_at)}).`;
  } else {
    text = `Alerts unknown: ${answer.error}`;
  }
  const state = $("#firing-state");
  state.textContent = text;
  state.hidden = !text;
  $("#firing").replaceChildren(...alerts.map(firingAlert));
  const notes = [];
  if (answer.total > alerts.length) notes.push(`and ${fmt(answer.total - alerts.length, 0)} more on Alertmanager`);
  if (answer.skipped) notes.push(`${fmt(answer.skipped, 0)} items of Alertmanager's answer were not alerts`);
  $("#firing-more").textContent = notes.join("; ");
  $("#firing-more").hidden = !notes.length;
  // The tab says it too, for a page left open behind others.
  const count = answer.status === "ok" ? answer.total : 0;
  const mark = answer.status === "unreachable" ? "(alerting?) " : count ? `(${count} firing) ` : "";
  document.title = mark + PAGE_TITLE;
}

// --- sensors ------------------------------------------------------------------

function renderSensors(sensors) {
  if (!state.chosen && !state.sensor && sensors.length) state.sensor = sensors[0].sensor;
  $("#sensor-count").textContent = sensors.length ? `(${sensors.length})` : "";
  $("#no-sensors").hidden = sensors.length > 0;
  $("#sensors tbody").replaceChildren(
    ...sensors.map((s) => {
      const row = el(
        "tr",
        { "data-sensor": s.sensor, "data-state": s.state, class: s.sensor === state.sensor ? "selected" : "", tabIndex: 0 },
        el("td", { class: "sensor-id" }, s.sensor),
        el("td", { class: "num" }, fmt(s.last_value)),
        el("td", { title: s.last_seen }, ago(s.age_s)),
        el("td", { class: "num" }, fmt(s.per_minute, 1)),
        el("td", {}, el("span", { class: `badge ${s.state}` }, s.state)),
      );
      row.addEventListener("click", () => choose(s.sensor));
      row.addEventListener("keydown", (event) => event.key === "Enter" && choose(s.sensor));
      return row;
    }),
  );
}

function choose(sensor) {
  state.sensor = sensor;
  state.chosen = true;
  state.compare = "";
  history.replaceState(null, "", `?sensor=${encodeURIComponent(sensor)}`);
  for (const row of document.querySelectorAll("#sensors tbody tr")) {
    row.classList.toggle("selected", row.dataset.sensor === sensor);
  }
  refreshSensor();
}

// --- the readings chart -----------------------------------------------------------

// Where nothing arrived for longer than QUIET_FACTOR of the series' usual steps (its median step between
// points, or the chart's period), the lines break instead of joining across as if there had been data.
const QUIET_FACTOR = 5;
const QUIET_MIN_S = 10;

function quietAfter(xs, step) {
  if (step) return 1.5 * step;
  const deltas = [];
  for (let i = 1; i < xs.length; i++) deltas.push(xs[i] - xs[i - 1]);
  deltas.sort((a, b) => a - b);
  const median = deltas.length ? deltas[Math.floor(deltas.length / 2)] : 0;
  return Math.max(QUIET_MIN_S, QUIET_FACTOR * median);
}

// A uPlot series' `gaps` (which uPlot asks only of a series with spanGaps false): the quiet spells, and the
// gaps of its nulls unless ``spanNulls`` (a forecast joins across readings not scored yet).
function quietGaps(spanNulls) {
  return (u, _seriesIdx, idx0, idx1, nullGaps) => {
    const xs = u.data[0];
    const gaps = spanNulls || !nullGaps ? [] : nullGaps.slice();
    for (const i of quietSpells(xs, u.quietAfter)) {
      if (i > idx0 && i <= idx1) {
        uPlot.addGap(gaps, Math.round(u.valToPos(xs[i - 1], "x", true)), Math.round(u.valToPos(xs[i], "x", true)));
      }
    }
    return gaps;
  };
}

// The indexes of the points that come after a quiet spell (longer than ``limit`` seconds since the one before).
function quietSpells(xs, limit) {
  const after = [];
  for (let i = 1; i < xs.length; i++) if (xs[i] - xs[i - 1] > limit) after.push(i);
  return after;
}

function chartWidth(node) {
  return Math.max(320, node.parentElement.clientWidth - 4);
}

function readingsChart(node) {
  return new uPlot(
    {
      width: chartWidth(node),
      height: 300,
      scales: { x: { time: true } },
      series: [
        {},
        { label: "reading", stroke: "#2563eb", width: 1.5, points: { show: false }, gaps: quietGaps(false) },
        { label: "forecast", stroke: "#7c3aed", width: 1.5, dash: [6, 4], points: { show: false }, gaps: quietGaps(true) },
        { label: "upper", stroke: "rgba(124, 58, 237, 0.35)", width: 1, points: { show: false }, gaps: quietGaps(true) },
        { label: "lower", stroke: "rgba(124, 58, 237, 0.35)", width: 1, points: { show: false }, gaps: quietGaps(true) },
        {
          label: "anomaly",
          stroke: "#dc2626",
          paths: () => null,
          points: { show: true, size: 10, fill: "#dc2626", stroke: "#ffffff", width: 1.5 },
        },
      ],
      // The forecast interval: filled between the upper (3) and lower (4) series.
      bands: [{ series: [3, 4], fill: "rgba(124, 58, 237, 0.12)" }],
      axes: [{ values: clockTicks, space: 70 }, { size: 50 }],
      legend: { show: false }, // the keys above the chart say what is what
    },
    [[], [], [], [], [], []],
    node,
  );
}

function renderSeries(series) {
  const node = $("#chart");
  const points = series.points;
  const data = [
    points.map((p) => epoch(p.ts)),
    points.map((p) => p.v),
    points.map((p) => p.yhat),
    points.map((p) => p.yhat_upper),
    points.map((p) => p.yhat_lower),
    points.map((p) => (p.anomaly ? p.v : null)),
  ];
  if (!state.chart) state.chart = readingsChart(node);
  state.chart.quietAfter = quietAfter(data[0]);
  state.chart.setData(data);
  const band = points.some((p) => p.yhat_lower !== null && p.yhat_upper !== null);
  Object.assign(node.dataset, {
    sensor: series.sensor,
    points: points.length,
    scored: series.scored,
    anomalies: series.anomalies,
    band: String(band),
    quietSpells: quietSpells(data[0], state.chart.quietAfter).length,
  });
  $("#chart-title").textContent = `${series.sensor}: readings and forecast, last ${series.minutes} min`;
  const empty = $("#chart-empty");
  empty.hidden = points.length > 0;
  empty.textContent = `No readings from ${series.sensor} in the last ${series.minutes} minutes.`;
}

// --- the per-minute chart ------------------------------------------------------------

// Seconds in each period the API draws a range in.
const PERIOD_S = { minute: 60, hour: 3600, day: 86400 };

function periodRange(xs, min, max) {
  const pad = PERIOD_S[state.resolution] || 60;
  return xs && xs.length ? [xs[0] - pad, xs[xs.length - 1] + pad] : [min, max];
}

function aggregatesChart(node) {
  return new uPlot(
    {
      width: chartWidth(node),
      height: 200,
      scales: {
        // From the data, a minute either side: with one minute stored, uPlot widened its own
        // range to years, and every tick read "00:00".
        x: { time: true, range: (u, min, max) => periodRange(u.data[0], min, max) },
        count: { range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] },
      },
      series: [
        {},
        {
          label: "count",
          scale: "count",
          stroke: "rgba(148, 163, 184, 0.6)",
          fill: "rgba(148, 163, 184, 0.22)",
          paths: uPlot.paths.bars({ size: [0.5, 30] }),
          points: { show: false },
        },
        { label: "mean", stroke: "#0f766e", width: 2, points: { show: true, size: 5 }, gaps: quietGaps(false) },
        { label: "max", stroke: "rgba(15, 118, 110, 0.4)", width: 1, points: { show: false }, gaps: quietGaps(false) },
        { label: "min", stroke: "rgba(15, 118, 110, 0.4)", width: 1, points: { show: false }, gaps: quietGaps(false) },
      ],
      bands: [{ series: [3, 4], fill: "rgba(15, 118, 110, 0.12)" }],
      axes: [
        { values: clockTicks, space: 70 },
        { size: 50 },
        { scale: "count", side: 1, grid: { show: false }, size: 40 },
      ],
      legend: { show: false },
    },
    [[], [], [], [], []],
    node,
  );
}

function renderAggregates(sensor, answer) {
  const node = $("#aggregates");
  const rows = answer.rows;
  state.resolution = answer.resolution;
  if (!state.aggregates) state.aggregates = aggregatesChart(node);
  $("#aggregates-title").textContent = `Per ${answer.resolution}`;
  state.aggregates.quietAfter = quietAfter([], PERIOD_S[answer.resolution] || 60);
  state.aggregates.setData([
    rows.map((r) => epoch(r.start)),
    rows.map((r) => r.count),
    rows.map((r) => r.mean),
    rows.map((r) => r.max),
    rows.map((r) => r.min),
  ]);
  Object.assign(node.dataset, { sensor, points: rows.length, resolution: answer.resolution });
  $("#aggregates-empty").hidden = rows.length > 0;
}

// --- the model serving the sensor ------------------------------------------------------------

function pct(x) {
  return x === null || x === undefined ? "–" : `${fmt(100 * x, 1)} %`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString([], { dateStyle: "medium", timeStyle: "short" }) : "–";
}

function modelText(m) {
  return m ? `${m.name} (${m.hash})` : "–";
}

function scores(m) {
  return m ? [`${fmt(m.mae, 4)}`, pct(m.coverage)] : ["–", "–"];
}

function historyRow(d) {
  const metrics = d.metrics || {};
  const [mae, coverage] = scores(metrics.challenger);
  const [theirMae, theirCoverage] = scores(metrics.incumbent);
  return el(
    "tr",
    { "data-promoted": String(Boolean(d.promoted)) },
    el("td", { title: d.decided_at || "" }, when(d.decided_at)),
    el("td", {}, d.model ? d.model.name : "(none fitted)", el("br"), el("span", { class: "hash" }, d.model ? d.model.hash : "")),
    el("td", {}, d.incumbent ? d.incumbent.name : "(none)", el("br"), el("span", { class: "hash" }, d.incumbent ? `${d.incumbent.source} ${d.incumbent.hash}` : "")),
    el("td", { class: "num" }, `${mae} vs ${theirMae}`),
    el("td", { class: "num" }, `${coverage} vs ${theirCoverage}`),
    el("td", {}, el("span", { class: `badge ${d.promoted ? "up" : "silent"}` }, d.promoted ? "promoted" : "kept")),
    el("td", { class: "why" }, d.reason || ""),
  );
}

function compareChart(node) {
  return new uPlot(
    {
      width: chartWidth(node),
      height: 220,
      scales: { x: { time: true } },
      series: [
        {},
        { label: "reading", stroke: "#2563eb", width: 1.5, points: { show: false } },
        { label: "live forecast", stroke: "#7c3aed", width: 1.5, dash: [6, 4], spanGaps: true, points: { show: false } },
        { label: "re-scored", stroke: "#ea580c", width: 2, dash: [4, 3], spanGaps: true, points: { show: false } },
        { label: "upper", stroke: "rgba(234, 88, 12, 0.35)", width: 1, spanGaps: true, points: { show: false } },
        { label: "lower", stroke: "rgba(234, 88, 12, 0.35)", width: 1, spanGaps: true, points: { show: false } },
      ],
      bands: [{ series: [4, 5], fill: "rgba(234, 88, 12, 0.12)" }],
      axes: [{ values: clockTicks, space: 70 }, { size: 50 }],
      legend: { show: false },
    },
    [[], [], [], [], [], []],
    node,
  );
}

function renderComparison(answer) {
  const runs = answer.rescored || [];
  const select = $("#compare");
  const options = [el("option", { value: "" }, runs.length ? "none" : "no re-scored model for this sensor")];
  for (const r of runs) {
    options.push(el("option", { value: r.model.hash }, `${modelText(r.model)}, ${when(r.since)} – ${when(r.until)}`));
  }
  select.replaceChildren(...options);
  select.value = runs.some((r) => r.model.hash === state.compare) ? state.compare : "";
  select.disabled = !runs.length;
  const node = $("#compare-chart");
  const c = answer.comparison;
  const run = runs.find((r) => r.model.hash === select.value);
  let text = runs.length ? "Choose a re-scored model to set its forecasts beside the live ones." : "";
  if (run && run.compared) {
    const [ours, live] = [run.compared.rescored, run.compared.live];
    text = `Its run over ${when(run.since)} – ${when(run.until)}, on the ${fmt(ours.n, 0)} readings that have a live forecast too: `
      + `re-scored MAE ${fmt(ours.mae, 4)}, coverage ${pct(ours.coverage)}; served live MAE ${fmt(live.mae, 4)}, coverage ${pct(live.coverage)}.`;
  }
  if (c) {
    text += ` Drawn: the last hour of the run (${clock(c.since)} – ${clock(c.until)}), ${fmt(c.points.length, 0)} readings`
      + (c.live.n ? `; there re-scored MAE ${fmt(c.rescored.mae, 4)} against live ${fmt(c.live.mae, 4)} on ${fmt(c.live.n, 0)}.` : ".");
  }
  $("#compare-summary").textContent = text;
  $("#compare-legend").hidden = !c;
  node.hidden = !c;
  Object.assign(node.dataset, { points: c ? c.points.length : 0, model: c ? c.model.hash : "" });
  if (!c) return;
  if (!state.compareChart) state.compareChart = compareChart(node);
  const points = c.points;
  state.compareChart.setData([
    points.map((p) => epoch(p.ts)),
    points.map((p) => p.v),
    points.map((p) => p.live[0]),
    points.map((p) => p.model[0]),
    points.map((p) => p.model[2]),
    points.map((p) => p.model[1]),
  ]);
}

function renderModel(answer) {
  const panel = $("#model-panel");
  const serving = answer.serving;
  $("#model-name").textContent = serving ? serving.name : "";
  $("#model-serving").replaceChildren(
    serving
      ? el("span", {}, serving.name, " ", el("span", { class: "hash" }, `hash ${serving.hash}`), `; it forecast the reading of ${clock(serving.scored_at)}`)
      : "not known: no reading of the last hour has a forecast yet",
  );
  const live = answer.live;
  $("#model-live").textContent = live && live.n
    ? `MAE ${fmt(live.mae, 4)}, coverage ${pct(live.coverage)}, over the ${fmt(live.n, 0)} readings it has forecast (running)`
    : serving ? "no accuracy recorded for it yet" : "–";
  const b = answer.backtest;
  $("#model-backtest").textContent = b
    ? `holdout MAE ${fmt(b.mae, 4)}, coverage ${pct(b.coverage)}, over ${fmt(b.n, 0)} readings (the trainer's decision of ${when(b.decided_at)}, as ${b.role})`
    : serving ? "none: the trainer has not scored this model on a holdout" : "–";
  $("#model-weekly").textContent = answer.weekly.text;
  const decisions = answer.history || [];
  $("#model-history tbody").replaceChildren(...decisions.map(historyRow));
  $("#model-history-empty").hidden = decisions.length > 0;
  Object.assign(panel.dataset, {
    sensor: answer.sensor,
    serving: serving ? serving.hash : "",
    history: decisions.length,
    rescored: (answer.rescored || []).length,
    compared: answer.comparison ? answer.comparison.points.length : 0,
  });
  renderComparison(answer);
}

async function refreshModel(sensor, force) {
  const asked = `${sensor}|${state.compare}`;
  // The model's record changes slowly: asked with the alerts, or at once for another sensor or model.
  if (!force && asked === state.modelAsked && state.polls % EVENTS_EVERY !== 1) return;
  state.modelAsked = asked;
  const query = state.compare ? `?compare=${encodeURIComponent(state.compare)}` : "";
  try {
    const answer = await api(`/api/sensors/${encodeURIComponent(sensor)}/model${query}`);
    if (sensor === state.sensor) renderModel(answer);
  } catch (error) {
    state.modelAsked = "";
    $("#model-weekly").textContent = `cannot read the model's record (${error.message}); retrying`;
  }
}

// --- alerts and rejections --------------------------------------------------------------

function renderAlerts(alerts) {
  $("#no-alerts").hidden = alerts.length > 0;
  $("#alerts").replaceChildren(
    ...alerts.map((a) => {
      const item = el(
        "li",
        { "data-sensor": a.sensor, "data-id": a.id, title: "show this sensor" },
        el("time", { dateTime: a.ts }, clock(a.ts)),
        el("span", { class: "sensor-id" }, a.sensor),
        el("span", {}, "value ", el("strong", { class: "bad" }, fmt(a.v)), ` outside ${fmt(a.yhat_lower)} – ${fmt(a.yhat_upper)}`),
        el("span", { class: "subtle" }, `forecast ${fmt(a.yhat)}`),
      );
      item.addEventListener("click", () => choose(a.sensor));
      return item;
    }),
  );
}

function renderRejections(rejections) {
  $("#no-rejections").hidden = rejections.length > 0;
  $("#rejections").replaceChildren(
    ...rejections.map((r) =>
      el(
        "li",
        { "data-id": r.id, "data-topic": r.topic || "" },
        el("time", { dateTime: r.received_at }, clock(r.received_at)),
        el("span", { class: "topic" }, `${r.transport} ${r.topic}`),
        el("span", { class: "reason" }, r.reason),
        el(
          "code",
          { class: "payload", title: `${r.size} bytes, ${r.payload_encoding}${r.truncated ? ", cut" : ""}` },
          r.payload,
        ),
      ),
    ),
  );
}

// --- polling -------------------------------------------------------------------------------

async function refreshSensor() {
  const sensor = state.sensor;
  if (!sensor) return;
  const path = encodeURIComponent(sensor);
  const [series, aggregates] = await Promise.all([
    api(`/api/sensors/${path}/series?minutes=${SERIES_MINUTES}`),
    api(`/api/aggregates/${path}?minutes=${state.range}`),
  ]);
  if (sensor !== state.sensor) return; // another sensor was chosen meanwhile
  const download = $("#download");
  download.href = `/api/sensors/${path}/readings.csv?minutes=${state.range}`;
  download.hidden = false;
  renderSeries(series);
  renderAggregates(sensor, aggregates);
  await refreshModel(sensor, false);
}

async function refresh() {
  const status = $("#updated");
  try {
    const events = state.polls++ % EVENTS_EVERY === 0;
    const [sensors, health, firing, alerts, rejections] = await Promise.all([
      api("/api/sensors"),
      api("/api/health"),
      // Its own failure is shown in its panel; the rest of the page goes on.
      api("/api/firing").catch((error) => ({ status: "error", error: error.message, alerts: [], total: 0 })),
      events ? api("/api/alerts?limit=20") : null,
      events ? api("/api/rejections?limit=20") : null,
    ]);
    renderHealth(health);
    renderFiring(firing);
    renderSensors(sensors);
    if (alerts) renderAlerts(alerts);
    if (rejections) renderRejections(rejections);
    await refreshSensor();
    status.textContent = `updated ${timeOfDay(new Date())}`;
    status.dataset.ok = "true";
  } catch (error) {
    status.textContent = `cannot reach the dashboard (${error.message}); retrying`;
    status.dataset.ok = "false";
  }
}

async function loop() {
  await refresh();
  setTimeout(loop, POLL_MS);
}

window.addEventListener("resize", () => {
  for (const [chart, node] of [
    [state.chart, $("#chart")],
    [state.aggregates, $("#aggregates")],
    [state.compareChart, $("#compare-chart")],
  ]) {
    if (chart) chart.setSize({ width: chartWidth(node), height: chart.height });
  }
});

const rangeSelect = $("#range");
for (const [label, minutes] of Object.entries(RANGES)) rangeSelect.append(el("option", { value: minutes }, label));
rangeSelect.value = String(state.range);
$("#compare").addEventListener("change", (event) => {
  state.compare = event.target.value;
  const params = new URLSearchParams(location.search);
  if (state.compare) params.set("compare", state.compare);
  else params.delete("compare");
  history.replaceState(null, "", `?${params}`);
  if (state.sensor) refreshModel(state.sensor, true);
});

rangeSelect.addEventListener("change", () => {
  state.range = Number(rangeSelect.value);
  refreshSensor().catch(() => {});
});

loop();
