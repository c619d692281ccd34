// The dashboard: filters live in the URL's hash (#/?range=7d&user=alice, #/session/<id>?...),
// so a view can be reloaded, bookmarked and shared. Every number comes from the usage API.

import { anomalyBadge, anomalyIndex, anomalyPanel, loadAnomalies } from "./anomalies.js";
import { ApiError, getAll, getJson, getToken, setToken } from "./api.js";
import { barChart } from "./chart.js";
import { h, table } from "./dom.js";
import * as fmt from "./format.js";

const RANGE_HOURS = { "24h": 24, "7d": 24 * 7, "30d": 24 * 30, "90d": 24 * 90 };
const DEFAULTS = { range: "7d", since: "", until: "", grain: "auto", user: "", property: "" };
const MAX_HOUR_BUCKETS = 24 * 14;
const TOP = 10;
const HOUR = 3600 * 1000;
const DAY = 24 * HOUR;

let ticket = 0;

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const mark = raw.indexOf("?");
  const path = mark < 0 ? raw : raw.slice(0, mark);
  const query = new URLSearchParams(mark < 0 ? "" : raw.slice(mark + 1));
  const filters = { ...DEFAULTS };
  for (const name of Object.keys(DEFAULTS)) filters[name] = query.get(name) ?? DEFAULTS[name];
  if (!(filters.range in RANGE_HOURS) && !["all", "custom"].includes(filters.range)) {
    filters.range = DEFAULTS.range;
  }
  return { path, filters };
}

function hashFor(path, filters) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(filters)) {
    if (value && value !== DEFAULTS[name]) query.set(name, value);
  }
  const text = query.toString();
  return "#" + path + (text ? "?" + text : "");
}

function sessionPath(id) {
  return "/session/" + encodeURIComponent(id);
}

/** The time window in ms: [since|null, until|null]. */
function timeWindow(filters) {
  if (filters.range === "custom") {
    const at = (value) => (value ? Date.parse(value + ":00Z") : null);
    return [at(filters.since), at(filters.until)];
  }
  if (filters.range === "all") return [null, null];
  return [Date.now() - RANGE_HOURS[filters.range] * HOUR, null];
}

function apiParams(filters) {
  const [since, until] = timeWindow(filters);
  return {
    since: since === null || Number.isNaN(since) ? null : new Date(since).toISOString(),
    until: until === null || Number.isNaN(until) ? null : new Date(until).toISOString(),
    user_id: filters.user,
    property: filters.property,
  };
}

function bucketGrain(filters) {
  const [since, until] = timeWindow(filters);
  const span = (until ?? Date.now()) - (since ?? 0);
  if (filters.grain === "day" || since === null) return "day";
  if (filters.grain === "hour") return span / HOUR > MAX_HOUR_BUCKETS ? "day" : "hour";
  return span <= 2 * DAY ? "hour" : "day";
}

function bucketKey(ms, grain) {
  const iso = new Date(ms).toISOString();
  return grain === "day" ? iso.slice(0, 10) : iso.slice(0, 13) + ":00:00Z";
}

function keyTime(key) {
  return Date.parse(key.length === 10 ? key + "T00:00:00Z" : key);
}

/** Every bucket of the window, the empty ones too, so that time reads left to right evenly. */
function fillBuckets(rows, grain, filters) {
  const byKey = new Map(rows.map((row) => [row.key, row]));
  const [since, until] = timeWindow(filters);
  const keys = rows.map((row) => keyTime(row.key));
  const first = since ?? (keys.length ? Math.min(...keys) : Date.now());
  const last = Math.min(until ?? Date.now(), Date.now());
  const step = grain === "day" ? DAY : HOUR;
  const buckets = [];
  for (let at = keyTime(bucketKey(first, grain)); at <= last && buckets.length < 2000; at += step) {
    const key = bucketKey(at, grain);
    buckets.push(byKey.get(key) || { key, requests: 0, prompt_tokens: 0, completion_tokens: 0,
      total_tokens: 0, cost_usd: null });
  }
  return buckets;
}

function bucketLabel(key, grain) {
  return grain === "day" ? key.slice(5) : key.slice(5, 10) + " " + key.slice(11, 16);
}

function showMessage(text) {
  const message = document.getElementById("message");
  message.textContent = text || "";
  message.hidden = !text;
}

function card(id, label, value, detail) {
  return h("div", { class: "card", id }, h("div", { class: "label" }, label),
    h("div", { class: "value" }, value), h("div", { class: "detail" }, detail || ""));
}

function panel(id, title, ...content) {
  return h("section", { class: "panel", id }, h("div", { class: "panel-head" }, h("h2", {}, title)),
    ...content);
}

function orEmpty(rows, node, text = "Nothing recorded for these filters.") {
  return rows.length ? node : h("p", { class: "empty" }, text);
}

function unpricedNote(count) {
  if (!count) return "every request priced";
  return `${fmt.int(count)} request${count === 1 ? "" : "s"} without a price`;
}

function keyText(key, none) {
  return key === null || key === undefined ? none : key;
}

const TOTAL_COLUMNS = [
  ["Requests", (r) => fmt.int(r.requests), "num"],
  ["Tokens", (r) => fmt.int(r.total_tokens), "num"],
  ["Cost", (r) => fmt.usd(r.cost_usd), "num"],
];

function topTable(id, title, rows, renderKey) {
  const columns = [[title, (r) => renderKey(r), "key"], ...TOTAL_COLUMNS];
  return panel(id, "Top " + title.toLowerCase() + "s", orEmpty(rows, table(columns, rows)));
}

async function renderOverview(filters, view) {
  const params = apiParams(filters);
  const grain = bucketGrain(filters);
  const summary = (group_by, limit) => getJson("../usage/summary", { ...params, group_by, limit });
  const [series, models, users, sessions, recent, anomalies, bill] = await Promise.all([
    summary(grain),
    summary("model", TOP),
    summary("user", TOP),
    summary("session", TOP),
    getJson("../usage/sessions", { ...params, limit: 20 }),
    loadAnomalies(params.since, params.until),
    // Admin only, and only once the reconciliation job has stored something: else no panel.
    getJson("../usage/reconciliation", { stored: "true", since: params.since, until: params.until })
      .catch(() => null),
  ]);
  const flagged = anomalyIndex(anomalies);
  const rows = series.data;
  const sum = (name) => rows.reduce((total, row) => total + (row[name] || 0), 0);
  const cost = fmt.sumMoney(rows.map((row) => row.cost_usd));
  const unpriced = sum("unpriced_requests");

  const userList = document.getElementById("user-list");
  userList.replaceChildren(...users.data.filter((u) => u.key !== null)
    .map((u) => h("option", { value: u.key })));

  const buckets = fillBuckets(rows, grain, filters);
  const title = (row) => `${row.key} UTC: ${fmt.int(row.requests)} requests`;
  const tokenBars = buckets.map((row) => ({
    key: row.key,
    label: bucketLabel(row.key, grain),
    title: `${title(row)}, ${fmt.int(row.total_tokens)} tokens (prompt ${fmt.int(row.prompt_tokens)}, completion ${fmt.int(row.completion_tokens)})`,
    values: [row.prompt_tokens || 0, row.completion_tokens || 0],
  }));
  const costBars = buckets.map((row) => ({
    key: row.key,
    label: bucketLabel(row.key, grain),
    title: `${title(row)}, ${fmt.usd(row.cost_usd)}`,
    values: [row.cost_usd === null ? 0 : Number(row.cost_usd)],
  }));
  const per = grain === "day" ? "per day" : "per hour";

  const sessionLink = (key) => key === null ? h("span", { class: "muted" }, "(no session)")
    : h("span", {}, h("a", { href: hashFor(sessionPath(key), filters), title: key }, key),
      anomalyBadge(flagged, "session", key));
  const userLink = (key) => key === null ? h("span", { class: "muted" }, "(no user)")
    : h("span", {},
      h("a", { href: hashFor("/", { ...filters, user: key }), title: `only ${key}` }, key),
      anomalyBadge(flagged, "user", key));
  const subjectLink = (row) => row.kind === "session" ? sessionLink(row.subject)
    : row.kind === "user" ? userLink(row.subject) : row.subject;

  view.replaceChildren(
    h("div", { class: "cards" },
      card("kpi-requests", "Requests", fmt.int(sum("requests"))),
      card("kpi-tokens", "Total tokens", fmt.int(sum("total_tokens")),
        `prompt ${fmt.int(sum("prompt_tokens"))} · completion ${fmt.int(sum("completion_tokens"))}`),
      card("kpi-cached", "Cached tokens", fmt.int(sum("cached_tokens")),
        `reasoning ${fmt.int(sum("reasoning_tokens"))}`),
      card("kpi-cost", "Cost", fmt.usd(cost),
        unpricedNote(unpriced))),
    ...(anomalies.length ? [anomalyPanel(anomalies, subjectLink)] : []),
    h("div", { class: "charts" },
      panel("chart-tokens", `Tokens ${per}`,
        h("div", { class: "legend" },
          h("span", {}, h("span", { class: "swatch prompt" }), "prompt"),
          h("span", {}, h("span", { class: "swatch completion" }), "completion")),
        barChart({ bars: tokenBars, series: [{ className: "prompt" }, { className: "completion" }],
          tick: fmt.compact, ariaLabel: `tokens ${per}` })),
      panel("chart-cost", `Cost ${per} (USD)`,
        h("div", { class: "legend" }, h("span", {}, h("span", { class: "swatch cost" }), "cost")),
        barChart({ bars: costBars, series: [{ className: "cost" }],
          tick: (v) => "$" + (v === 0 ? "0" : v.toPrecision(2)), ariaLabel: `cost ${per}` }))),
    h("div", { class: "grid3" },
      topTable("top-models", "Model",
        models.data, (r) => keyText(r.key, h("span", { class: "muted" }, "(no model)"))),
      topTable("top-users", "User", users.data, (r) => userLink(r.key)),
      topTable("top-sessions", "Session", sessions.data, (r) => sessionLink(r.key))),
    billPanel(bill),
    panel("recent-sessions", "Recent sessions", orEmpty(recent.data, table([
      ["Session", (r) => sessionLink(r.session_id), "key"],
      ["User", (r) => keyText(r.user_id, "–")],
      ...TOTAL_COLUMNS,
      ["Unpriced", (r) => fmt.int(r.unpriced_requests), "num"],
      ["First request", (r) => fmt.time(r.first_request_at)],
      ["Last request", (r) => fmt.time(r.last_request_at)],
      ["Models", (r) => Object.keys(r.models).join(", ")],
    ], recent.data))),
  );
}

/** One path node and, expandable, its children (the API sends them costliest first). */
function treeNode(node, depth) {
  const t = node.total;
  const name = node.path === "/" ? "/ (session)" : node.path.split("/").pop();
  const errors = t.errors ? h("span", { class: "status-bad" }, ` · ${fmt.int(t.errors)} errors`) : "";
  const line = h("span", { class: "node-line", title: `${node.path}: own ${fmt.int(node.own.requests)} requests, ${fmt.usd(node.own.cost_usd)}` },
    h("code", { class: "node-path" }, name),
    h("span", { class: "node-numbers" },
      `${fmt.int(t.requests)} requests · ${fmt.int(t.total_tokens)} tokens · ${fmt.usd(t.cost_usd)}`, errors));
  if (!node.children.length) return h("div", { class: "node leaf", "data-path": node.path }, line);
  return h("details", { class: "node", "data-path": node.path, open: depth < 1 },
    h("summary", {}, line),
    ...node.children.map((child) => treeNode(child, depth + 1)));
}

/** The stored comparisons with the providers' reports, newest day first; none: no panel. */
function billPanel(bill) {
  const rows = bill && bill.stored ? bill.stored.slice().reverse() : [];
  if (!rows.length) return null;
  const pct = (r) => (r.difference_pct === null ? "–" : `${r.difference_pct.toFixed(2)} %`);
  const flags = (r) => [r.final ? "final" : "open", r.bypass ? "bypass" : "",
    r.unpriced_requests ? `${fmt.int(r.unpriced_requests)} unpriced` : "",
    r.alerted ? "alerted" : ""].filter(Boolean).join(" · ");
  return panel("provider-bill", "Provider's bill (reconciliation)", table([
    ["Provider", (r) => r.provider, "key"],
    ["Day", (r) => r.bucket_start.slice(0, 10)],
    ["Billed", (r) => fmt.usd(r.billed_cost_usd), "num"],
    ["Metered", (r) => fmt.usd(r.metered_cost_usd), "num"],
    ["Difference", pct, "num"],
    ["By", (r) => (r.measure === "cost_usd" ? "cost" : "tokens")],
    ["", flags],
  ], rows, { id: "bill-table" }));
}

async function renderSession(id, filters, view) {
  const [session, requests, anomalies] = await Promise.all([
    getJson(`../usage/sessions/${encodeURIComponent(id)}`),
    getAll("../usage/requests", { session_id: id, limit: 1000 }),
    loadAnomalies(null, null, { kind: "session", subject: id }),
  ]);
  const rows = requests.rows.slice().reverse(); // the API lists newest first
  const models = Object.entries(session.models).map(([model, totals]) => ({ model, ...totals }));
  const status = (r) => h("span", { class: r.status_code >= 400 ? "status-bad" : "" }, r.status_code);
  view.replaceChildren(
    h("a", { class: "back", href: hashFor("/", filters) }, "← all usage"),
    h("h2", { class: "session-title" }, "Session ", h("code", { id: "session-id" }, session.session_id),
      anomalyBadge(anomalyIndex(anomalies), "session", session.session_id)),
    h("div", { class: "cards" },
      card("kpi-requests", "Requests", fmt.int(session.requests),
        session.user_id === null ? "no user" : `user ${session.user_id}`),
      card("kpi-tokens", "Total tokens", fmt.int(session.total_tokens),
        `prompt ${fmt.int(session.prompt_tokens)} · completion ${fmt.int(session.completion_tokens)}`),
      card("kpi-cost", "Cost", fmt.usd(session.cost_usd),
        unpricedNote(session.unpriced_requests)),
      card("kpi-time", "First → last request", fmt.time(session.first_request_at),
        fmt.time(session.last_request_at))),
    session.tree && session.tree.children.length
      ? panel("session-tree", "Paths (costliest first; a node's totals include its children)",
        h("div", { class: "tree", id: "path-tree" }, treeNode(session.tree, 0)))
      : null,
    panel("session-models", "Models", table([
      ["Model", (r) => r.model, "key"], ...TOTAL_COLUMNS], models)),
    panel("session-requests", `Requests in order (${rows.length}${requests.complete ? "" : ", the newest only"})`,
      table([
        ["#", (r, i) => i + 1, "num"],
        ["Time", (r) => fmt.time(r.created_at)],
        ["Model", (r) => keyText(r.model, "–")],
        ["Endpoint", (r) => r.endpoint],
        ["Status", status, "num"],
        ["Stream", (r) => (r.stream ? "yes" : "no")],
        ["Prompt", (r) => fmt.int(r.prompt_tokens), "num"],
        ["Completion", (r) => fmt.int(r.completion_tokens), "num"],
        ["Total", (r) => fmt.int(r.total_tokens), "num"],
        ["Cached", (r) => fmt.int(r.cached_tokens), "num"],
        ["Cost", (r) => fmt.usd(r.cost_usd), "num"],
        ["Latency", (r) => fmt.ms(r.latency_ms), "num"],
        ["TTFT", (r) => fmt.ms(r.ttft_ms), "num"],
        ["Usage", (r) => keyText(r.usage_source, "–")],
        ["Error", (r) => r.error || "", "error"],
      ], rows, { id: "requests-table" })),
  );
}

function fillForm(filters) {
  const form = document.getElementById("filters");
  for (const name of Object.keys(DEFAULTS)) form.elements[name].value = filters[name];
  form.classList.toggle("is-custom", filters.range === "custom");
}

function readForm() {
  const form = document.getElementById("filters");
  const filters = {};
  for (const name of Object.keys(DEFAULTS)) filters[name] = form.elements[name].value.trim();
  return filters;
}

async function render() {
  const mine = ++ticket;
  const { path, filters } = parseHash();
  fillForm(filters);
  const view = document.getElementById("view");
  document.body.dataset.state = "loading";
  try {
    const property = filters.property;
    if (property && !/^[^:]+:/.test(property)) {
      throw new ApiError(400, "Property filter: use name:value, e.g. env:prod");
    }
    const fresh = h("div");
    if (path.startsWith("/session/")) {
      await renderSession(decodeURIComponent(path.slice("/session/".length)), filters, fresh);
    } else {
      await renderOverview(filters, fresh);
    }
    if (mine !== ticket) return; // a newer view was asked for meanwhile
    view.replaceChildren(...fresh.childNodes);
    showMessage("");
    document.body.dataset.state = "ready";
  } catch (error) {
    if (mine !== ticket) return;
    if (error instanceof ApiError && error.status === 401) {
      showMessage("The usage API needs the admin token: paste it at the top right and press Use.");
      document.getElementById("token-input").focus();
    } else {
      showMessage(error instanceof ApiError ? error.message : `Something broke: ${error}`);
    }
    view.replaceChildren();
    document.body.dataset.state = "error";
  }
}

function showTokenState() {
  document.getElementById("token-state").textContent = getToken() ? "token set" : "";
}

function start() {
  const form = document.getElementById("filters");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = hashFor(parseHash().path, readForm());
  });
  form.elements.range.addEventListener("change", () => {
    form.classList.toggle("is-custom", form.elements.range.value === "custom");
  });
  document.getElementById("f-reset").addEventListener("click", () => {
    location.hash = hashFor("/", DEFAULTS);
  });
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token-input");
    setToken(input.value.trim());
    input.value = "";
    showTokenState();
    render();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    setToken("");
    showTokenState();
    render();
  });
  window.addEventListener("hashchange", render);
  showTokenState();
  render();
}

start();
