// foldhost-guest: write foldhost plugins in JavaScript or TypeScript.
// See index.d.ts for the API and README.md for a walk-through.

import "./determinism.js";

export { defineAggregate } from "./aggregate.js";
export { defineProjection } from "./projection.js";
export { InvalidCommand, NondeterminismError, Rejection, u64 } from "./errors.js";
export { parse as parseJson, stringify as stringifyJson } from "./json.js";
export { log } from "./log.js";
