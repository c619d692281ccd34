// Element builders. Data only ever reaches the page as text nodes or attribute values,
// never as markup: there is no innerHTML anywhere in the dashboard.

const SVG = "http://www.w3.org/2000/svg";

function build(element, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** An HTML element: h("td", {class: "num"}, "12"). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG, tag), attrs, children);
}

/** A table with a header row; columns are [label, render(row) -> node|text, className?]. */
export function table(columns, rows, attrs = {}) {
  const head = h("tr", {}, columns.map(([label, , cls]) => h("th", { class: cls }, label)));
  const body = rows.map((row, i) =>
    h("tr", {}, columns.map(([, render, cls]) => h("td", { class: cls }, render(row, i)))),
  );
  return h("div", { class: "scroll" }, h("table", attrs, h("thead", {}, head), h("tbody", {}, body)));
}
