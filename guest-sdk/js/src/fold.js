// What aggregates and projections share: a definition's checked parts and
// the state they fold, snapshot and show.

import { describe, describeWithStack } from "./errors.js";
import { fromSnapshot, stringify, toSnapshot } from "./json.js";
import { log } from "./log.js";
import { readOnly } from "./readonly.js";
import { decode, encode } from "./utf8.js";

/** A table of handlers (`{ Deposited(state, data, event) {...} }`) as a Map. */
export function handlers(definition, field, required) {
  const table = definition[field];
  if (table === undefined && !required) return new Map();
  if (typeof table !== "object" || table === null) {
    throw new TypeError(`${field} must be an object of functions, one per type`);
  }
  const entries = Object.entries(table);
  for (const [type, handler] of entries) {
    if (typeof handler !== "function") throw new TypeError(`${field}.${type} must be a function`);
  }
  return new Map(entries);
}

/** The name, version, state schema and initial state every plugin declares. */
export function identity(definition, kind) {
  if (typeof definition !== "object" || definition === null) {
    throw new TypeError(`define${kind} takes an object: { name, version, initialState, ... }`);
  }
  const { name, version, stateSchema = 1, initialState, view } = definition;
  if (typeof name !== "string" || !/^[a-z0-9][a-z0-9-]*$/.test(name)) {
    throw new TypeError(`name must be lowercase letters, digits and '-' (e.g. "bank-account"), got ${String(name)}`);
  }
  if (typeof version !== "string" || version === "") throw new TypeError(`${name}: version must be a string such as "1.0.0"`);
  if (!Number.isInteger(stateSchema) || stateSchema < 0 || stateSchema > 0xffffffff) {
    throw new TypeError(`${name}: stateSchema must be an integer in 0..2^32-1`);
  }
  if (typeof initialState !== "function") {
    throw new TypeError(`${name}: initialState must be a function returning a fresh state, e.g. () => ({ count: 0 })`);
  }
  if (view !== undefined && typeof view !== "function") {
    throw new TypeError(`${name}: view must be a function of the state returning what readers see`);
  }
  return { name, version, stateSchema, initialState, view };
}

/** Logs `message` and traps: for calls the contract gives no error result. */
export function trap(message) {
  log.error(message);
  throw new Error(message);
}

/**
 * One plugin's state. A handler that throws halfway through a batch may have
 * changed the state already, so after a failed fold the state is unusable
 * until `init` starts it again: every use reports that failure.
 */
export class Fold {
  constructor(plugin) {
    this.plugin = plugin;
    this.state = plugin.initialState();
    this.failure = null;
  }

  /** `init`: the initial state, or the state a snapshot holds. Throws a string. */
  init(snapshot) {
    try {
      this.state = snapshot == null ? this.plugin.initialState() : fromSnapshot(decode(snapshot));
      this.failure = null;
    } catch (error) {
      throw `cannot restore the snapshot: ${describe(error)}`;
    }
  }

  /** The state, for reading; traps if a fold failed since `init`. */
  current() {
    if (this.failure !== null) trap(this.failure);
    return this.state;
  }

  /** Folds decoded `{ event, data }`s with `handlerFor(event)`. Throws a string. */
  fold(decoded, handlerFor) {
    if (this.failure !== null) throw this.failure;
    let state = this.state;
    for (const { event, data } of decoded) {
      const handler = handlerFor(event);
      if (handler === undefined) continue;
      try {
        const next = handler(state, data, event);
        if (next !== undefined) state = next;
      } catch (error) {
        this.failure =
          `${this.plugin.name}: applying event at position ${event.position} of type \`${event.type}\` ` +
          `failed, the state is unusable until it is rebuilt: ${describe(error)}`;
        log.error(describeWithStack(error, this.failure));
        throw this.failure;
      }
    }
    this.state = state;
  }

  /** `snapshot`: the state as snapshot bytes. */
  snapshot() {
    const state = this.current();
    try {
      return encode(toSnapshot(state));
    } catch (error) {
      return trap(`${this.plugin.name}: cannot snapshot the state: ${describe(error)}`);
    }
  }

  /** `state`: the state (or its `view`) as JSON, BigInts as plain integers. */
  json() {
    const state = this.current();
    try {
      return stringify(this.plugin.view ? this.plugin.view(readOnly(state)) : state);
    } catch (error) {
      return trap(`${this.plugin.name}: cannot show the state as JSON: ${describe(error)}`);
    }
  }
}
