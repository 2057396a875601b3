// How times, durations, money and sizes read in the console: always in the viewer's locale and
// time zone (the API speaks ISO-8601 UTC).

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

// Some browsers' ICU still names these zones by CLDR's old ids; people know them by IANA's.
const CURRENT_ZONE_NAMES = {
  "Africa/Asmera": "Africa/Asmara",
  "America/Buenos_Aires": "America/Argentina/Buenos_Aires",
  "America/Catamarca": "America/Argentina/Catamarca",
  "America/Coral_Harbour": "America/Atikokan",
  "America/Cordoba": "America/Argentina/Cordoba",
  "America/Godthab": "America/Nuuk",
  "America/Indianapolis": "America/Indiana/Indianapolis",
  "America/Jujuy": "America/Argentina/Jujuy",
  "America/Louisville": "America/Kentucky/Louisville",
  "America/Mendoza": "America/Argentina/Mendoza",
  "Asia/Calcutta": "Asia/Kolkata",
  "Asia/Katmandu": "Asia/Kathmandu",
  "Asia/Rangoon": "Asia/Yangon",
  "Asia/Saigon": "Asia/Ho_Chi_Minh",
  "Atlantic/Faeroe": "Atlantic/Faroe",
  "Europe/Kiev": "Europe/Kyiv",
  "Pacific/Enderbury": "Pacific/Kanton",
  "Pacific/Ponape": "Pacific/Pohnpei",
  "Pacific/Truk": "Pacific/Chuuk",
};

export function timeZoneName() {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  return CURRENT_ZONE_NAMES[zone] || zone || "your local time zone";
}

/** Date | ISO string | null -> a Date or null. */
export function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  const date = value instanceof Date ? value : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

export function formatTime(value) {
  const date = toDate(value);
  return date ? dateTime.format(date) : "—";
}

/** 0 s, 42 s, 3 min 12 s, 2 h 5 min, 4 d 3 h: the two largest units that matter. */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  if (seconds > 0 && seconds < 0.5) return "< 1 s";
  let rest = Math.max(0, Math.round(seconds));
  const units = [
    ["d", 86400],
    ["h", 3600],
    ["min", 60],
    ["s", 1],
  ];
  const parts = [];
  for (const [name, size] of units) {
    const count = Math.floor(rest / size);
    rest -= count * size;
    if (count > 0 || (parts.length > 0 && parts.length < 2)) parts.push(`${count} ${name}`);
    if (parts.length === 2) break;
  }
  // "2 h 0 min" reads worse than "2 h".
  const shown = parts.filter((part, index) => index === 0 || !part.startsWith("0 "));
  return shown.length ? shown.join(" ") : "0 s";
}

/** A coarser duration for values that refresh often (ages): seconds only under a minute. */
export function formatAge(seconds) {
  if (seconds === null || !Number.isFinite(seconds)) return "—";
  if (seconds < 60) return formatDuration(seconds);
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  return formatDuration(Math.floor(seconds / 60) * 60);
}

export function secondsBetween(start, end = new Date()) {
  const from = toDate(start);
  const to = toDate(end);
  return from && to ? (to - from) / 1000 : null;
}

/** "3 min 12 s ago" / "in 5 min" relative to now. */
export function formatRelative(value, now = new Date()) {
  const seconds = secondsBetween(value, now);
  if (seconds === null) return "—";
  if (Math.abs(seconds) < 1) return "just now";
  return seconds >= 0 ? `${formatAge(seconds)} ago` : `in ${formatAge(-seconds)}`;
}

/** Money arrives as a JSON number or a decimal string; null stays null. */
export function toNumber(value) {
  if (value === null || value === undefined || value === "") return null;
  const number = typeof value === "number" ? value : Number(value);
  return Number.isFinite(number) ? number : null;
}

const usdCache = new Map();

function usdFormatter(decimals) {
  if (!usdCache.has(decimals)) {
    usdCache.set(
      decimals,
      new Intl.NumberFormat(undefined, {
        style: "currency",
        currency: "USD",
        minimumFractionDigits: 2,
        maximumFractionDigits: decimals,
      }),
    );
  }
  return usdCache.get(decimals);
}

/** USD: cents for large amounts, up to 4 decimals below $100 so small charges still show. */
export function formatUsd(value) {
  const amount = toNumber(value);
  if (amount === null) return "—";
  return usdFormatter(Math.abs(amount) < 100 ? 4 : 2).format(amount);
}

const MB = 1e6;
const GB = 1e9;

/** Bytes as MB below a GB, else GB (decimal units, as download tools show them): 15 GB, not 15000 MB. */
export function formatBytes(bytes) {
  const value = toNumber(bytes);
  if (value === null) return "—";
  if (value < GB) return `${(value / MB).toFixed(value < 10 * MB ? 1 : 0)} MB`;
  return `${(value / GB).toFixed(2)} GB`;
}

/** GPU memory as reported by the node (MiB) in GB, the way GPUs are sold: 81920 -> "80 GB". */
export function formatGpuMemory(mebibytes) {
  const value = toNumber(mebibytes);
  return value === null ? "memory unknown" : `${Math.round(value / 1024)} GB`;
}

// Where a deployment runs, by the API's target value; a value not listed here shows as it is.
const TARGET_LABELS = { prism_node: "PRISM node", runpod: "RunPod", lambda: "Lambda Cloud" };

export function targetLabel(target) {
  return TARGET_LABELS[target] || target;
}

/** "A100 (GPU 0, 1)", "Any GPU" or "No GPU". */
export function gpuText(deployment) {
  if (!deployment.gpu) return "No GPU";
  const kind = deployment.gpu_type || "Any GPU";
  const indices = deployment.gpu_indices || [];
  return indices.length ? `${kind} (GPU ${indices.join(", ")})` : kind;
}

export function formatMs(value) {
  const ms = toNumber(value);
  if (ms === null) return "—";
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

export function formatCount(value) {
  const count = toNumber(value);
  return count === null ? "—" : new Intl.NumberFormat().format(count);
}
