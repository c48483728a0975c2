// Written by `wasmscore build` as _wasmscore_console.js and imported first by
// the generated entry, so that it runs before the module's own top level:
// console output goes to the version's logs (the host discards stdout and
// stderr, and the build turns StarlingMonkey's stdio off).
import { log } from "wasmscore";

function replacer(_, x) {
  if (typeof x === "bigint") return `${x}n`;
  if (ArrayBuffer.isView(x) && !(x instanceof DataView)) return Array.from(x);
  return x;
}

function show(v) {
  if (typeof v === "string") return v;
  if (v instanceof Error) return v.stack ? `${v.name}: ${v.message}\n${v.stack}` : `${v.name}: ${v.message}`;
  if (typeof v === "function") return `[Function: ${v.name || "anonymous"}]`;
  if (typeof v === "object" && v !== null) {
    try {
      const s = JSON.stringify(v, replacer);
      if (s !== undefined) return s;
    } catch {
      // A cycle: fall through.
    }
  }
  return String(v);
}

const LEVELS = { debug: "debug", log: "info", info: "info", warn: "warn", error: "error" };
for (const [method, level] of Object.entries(LEVELS)) {
  console[method] = (...args) => log(args.map(show).join(" "), level);
}

// The sandbox has no network: StarlingMonkey's fetch would reach a trap
// stub (the host gives no wasi:http). Say so instead.
globalThis.fetch = () => {
  throw new Error("fetch is not available: scoring modules have no network access");
};
