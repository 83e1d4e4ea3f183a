// Plugins must be deterministic. Without WASI a clock read traps with no
// explanation and Math.random repeats a seed fixed at build time, so both
// are replaced by functions that throw a NondeterminismError saying why.
// `new Date(ms)`, Date.UTC and Date.parse stay: they compute, they read no clock.

import { NondeterminismError } from "./errors.js";

function forbid(target, key, what) {
  Object.defineProperty(target, key, {
    value: () => {
      throw new NondeterminismError(what);
    },
    writable: true,
    configurable: true,
  });
}

forbid(Math, "random", "Math.random()");

const ClockDate = globalThis.Date;
function Date(...args) {
  if (!new.target) throw new NondeterminismError("Date()");
  if (args.length === 0) throw new NondeterminismError("new Date()");
  return Reflect.construct(ClockDate, args, new.target);
}
Object.setPrototypeOf(Date, ClockDate);
Date.prototype = ClockDate.prototype;
forbid(Date, "now", "Date.now()");
globalThis.Date = Date;

const clocklessPerformance = {};
forbid(clocklessPerformance, "now", "performance.now()");
Object.defineProperty(globalThis, "performance", {
  value: clocklessPerformance,
  writable: true,
  configurable: true,
});
