// Anomalies (GET /usage/anomalies): a panel listing them, and a mark beside the sessions,
// users and keys they name wherever the dashboard shows those.

import { getJson } from "./api.js";
import { h, table } from "./dom.js";
import * as fmt from "./format.js";

/** The anomalies whose window starts in [since, until), newest first. */
export async function loadAnomalies(since, until, extra = {}) {
  const body = await getJson("../usage/anomalies", { since, until, limit: 200, ...extra });
  return body.data;
}

/** kind + subject -> the newest anomaly of that subject. */
export function anomalyIndex(rows) {
  const index = new Map();
  for (const row of rows) {
    const key = `${row.kind}\u0000${row.subject}`;
    if (!index.has(key)) index.set(key, row);
  }
  return index;
}

function describe(row) {
  const median = row.baseline.total_tokens || row.baseline.cost_usd;
  const usual = median ? `, peers' median ${median.median}` : "";
  return `anomaly: ${fmt.int(row.total_tokens)} tokens, ${fmt.usd(row.cost_usd)} ` +
    `in the window from ${fmt.time(row.window_start)}${usual}`;
}

/** A mark for the subject when an anomaly names it; null otherwise. */
export function anomalyBadge(index, kind, subject) {
  const row = subject === null || subject === undefined ? null : index.get(`${kind}\u0000${subject}`);
  return row ? h("span", { class: "anomaly", title: describe(row) }, "anomaly") : null;
}

function median(row, measure, format) {
  const base = row.baseline[measure];
  return base ? format(base.median) : "–";
}

/** The panel of anomalies; ``subjectLink(row)`` renders the subject (a session's link). */
export function anomalyPanel(rows, subjectLink) {
  return h("section", { class: "panel", id: "anomalies" },
    h("div", { class: "panel-head" }, h("h2", {}, `Anomalies (${rows.length})`)),
    table([
      ["Kind", (r) => r.kind],
      ["Subject", (r) => subjectLink(r), "key"],
      ["Window from", (r) => fmt.time(r.window_start)],
      ["Tokens", (r) => fmt.int(r.total_tokens), "num"],
      ["Peers' median tokens", (r) => median(r, "total_tokens", (v) => fmt.int(Number(v))), "num"],
      ["Cost", (r) => fmt.usd(r.cost_usd), "num"],
      ["Peers' median cost", (r) => median(r, "cost_usd", fmt.usd), "num"],
    ], rows, { id: "anomalies-table" }));
}
