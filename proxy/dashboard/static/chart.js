// Stacked bar charts as inline SVG: no library, no canvas, text only through text nodes.

import { s } from "./dom.js";

const WIDTH = 640;
const HEIGHT = 220;
const MARGIN = { top: 12, right: 8, bottom: 30, left: 72 };

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 2.5, 5, 10].find((m) => m * power >= value);
  return step * power;
}

/**
 * bars: [{label, title, values: [number, ...]}] stacked bottom up in the order of series:
 * [{className}]; tick(number) -> axis label. Returns an <svg> element.
 */
export function barChart({ bars, series, tick, ariaLabel }) {
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const top = niceMax(Math.max(0, ...bars.map((b) => b.values.reduce((a, v) => a + v, 0))));
  const y = (v) => MARGIN.top + plotHeight - (v / top) * plotHeight;
  const svg = s("svg", {
    class: "chart",
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    "aria-label": ariaLabel,
  });
  for (const fraction of [0, 0.5, 1]) {
    const at = y(top * fraction);
    svg.append(
      s("line", { class: "axis", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: at, y2: at }),
      s("text", { x: MARGIN.left - 6, y: at + 4, "text-anchor": "end" }, tick(top * fraction)),
    );
  }
  const slot = plotWidth / Math.max(bars.length, 1);
  const barWidth = Math.max(1, Math.min(36, slot * 0.72));
  const labelEvery = Math.ceil(bars.length / 8);
  bars.forEach((bar, i) => {
    const x = MARGIN.left + i * slot + (slot - barWidth) / 2;
    const group = s("g", { class: "bar", "data-key": bar.key }, s("title", {}, bar.title));
    let base = 0;
    bar.values.forEach((value, j) => {
      if (value > 0) {
        const height = Math.max(0.5, y(base) - y(base + value));
        group.append(
          s("rect", { class: series[j].className, x, y: y(base + value), width: barWidth, height }),
        );
      }
      base += value;
    });
    // A transparent full-height target so that small bars still show their tooltip.
    group.append(
      s("rect", { x: MARGIN.left + i * slot, y: MARGIN.top, width: slot, height: plotHeight,
        fill: "transparent" }),
    );
    svg.append(group);
    if (i % labelEvery === 0) {
      const middle = x + barWidth / 2;
      const anchor = middle > WIDTH - 40 ? "end" : "middle"; // keep the last label inside
      svg.append(s("text", { x: anchor === "end" ? WIDTH - 2 : middle, y: HEIGHT - 10,
        "text-anchor": anchor }, bar.label));
    }
  });
  return svg;
}
