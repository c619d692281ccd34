// Numbers, money and times for display. Money arrives as exact decimal strings and is added
// exactly (BigInt), never as floats.

const SCALE = 18;

function toScaled(text) {
  const negative = text.startsWith("-");
  const [whole, fraction = ""] = (negative ? text.slice(1) : text).split(".");
  const digits = BigInt(whole + fraction.padEnd(SCALE, "0").slice(0, SCALE));
  return negative ? -digits : digits;
}

function fromScaled(value) {
  const negative = value < 0n;
  const digits = (negative ? -value : value).toString().padStart(SCALE + 1, "0");
  const whole = digits.slice(0, -SCALE);
  const fraction = digits.slice(-SCALE).replace(/0+$/, "");
  return (negative ? "-" : "") + whole + (fraction ? "." + fraction : "");
}

/** Exact sum of decimal strings; null ones (unknown) are skipped; null if all are unknown. */
export function sumMoney(values) {
  const known = values.filter((v) => v !== null && v !== undefined);
  if (known.length === 0) return null;
  return fromScaled(known.reduce((total, v) => total + toScaled(String(v)), 0n));
}

export function usd(value) {
  return value === null || value === undefined ? "unknown" : "$" + value;
}

export function int(value) {
  return value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US");
}

export function ms(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value).toLocaleString("en-US")} ms`;
}

/** "2026-03-01T12:34:56.789Z" -> "2026-03-01 12:34:56". */
export function time(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("Z", "") : "–";
}

/** Short number for chart axes: 1.2k, 3.4M. */
export function compact(value) {
  return Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 }).format(value);
}
