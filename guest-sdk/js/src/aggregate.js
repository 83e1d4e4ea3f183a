// defineAggregate: the write side of one stream, as the component's
// `foldhost:plugin/aggregate` export.

import { decodeBatch } from "./batch.js";
import { Rejection, describe, describeWithStack, isDeliberate, show } from "./errors.js";
import { Fold, handlers, identity } from "./fold.js";
import { parse, stringify } from "./json.js";
import { log } from "./log.js";
import { readOnly } from "./readonly.js";
import { decode, encode } from "./utf8.js";

const every = () => true;

/** The `{ type, data }`s a command handler returned, checked and encoded. */
function newEvents(plugin, command, decided) {
  const events = decided === undefined ? [] : Array.isArray(decided) ? decided : [decided];
  return events.map((event) => {
    if (typeof event !== "object" || event === null || typeof event.type !== "string" || event.type === "") {
      throw new TypeError(
        `command ${command} returned ${show(event)}; an event is { type: "Deposited", data: { ... } }`,
      );
    }
    if (!plugin.apply.has(event.type)) {
      throw new TypeError(
        `command ${command} decided a ${event.type} event, which ${plugin.name} has no apply handler for`,
      );
    }
    return event.data instanceof Uint8Array
      ? { eventType: event.type, contentType: "binary", data: event.data }
      : { eventType: event.type, contentType: "json", data: encode(stringify(event.data)) };
  });
}

/**
 * Why a command failed, as the contract's `command-error`: a Rejection is
 * `rejected`, anything else `invalid`. Errors not thrown on purpose look like
 * bugs, so they are logged with their stack.
 */
function commandError(plugin, command, error) {
  if (error instanceof Rejection) return { tag: "rejected", val: error.message };
  if (!isDeliberate(error)) {
    log.warn(`${plugin.name}: command ${command} failed: ${describeWithStack(error)}`);
  }
  return { tag: "invalid", val: describe(error) };
}

/**
 * Defines an aggregate. Export the result as `aggregate`:
 *
 *     export const aggregate = defineAggregate({ name, version, initialState, apply, handle });
 */
export function defineAggregate(definition) {
  const plugin = {
    ...identity(definition, "Aggregate"),
    apply: handlers(definition, "apply", true),
    handle: handlers(definition, "handle", true),
  };
  const known = [...plugin.handle.keys()].join(", ");
  const fold = new Fold(plugin);
  const applyHandler = (event) => {
    const handler = plugin.apply.get(event.type);
    if (handler === undefined) {
      throw `${plugin.name} has no apply handler for event type \`${event.type}\` (position ${event.position})`;
    }
    return handler;
  };

  return {
    describe: () => ({
      name: plugin.name,
      kind: "aggregate",
      pluginVersion: plugin.version,
      stateSchema: plugin.stateSchema,
    }),
    init: (snapshot) => fold.init(snapshot),
    apply(batch) {
      let decoded;
      try {
        decoded = decodeBatch(batch, every);
      } catch (error) {
        throw error instanceof Error ? error.message : String(error);
      }
      for (const { event } of decoded) applyHandler(event);
      fold.fold(decoded, applyHandler);
    },
    handle(command, bytes) {
      const state = fold.current();
      const handler = plugin.handle.get(command);
      if (handler === undefined) {
        throw { tag: "invalid", val: `unknown command \`${command}\`; ${plugin.name} handles ${known}` };
      }
      let data;
      try {
        // No data (or null) reads as {}, so handlers may destructure it.
        data = (bytes.length === 0 ? null : parse(decode(bytes))) ?? {};
      } catch (error) {
        throw { tag: "invalid", val: `command data is not JSON: ${error.message}` };
      }
      try {
        return newEvents(plugin, command, handler(readOnly(state), data));
      } catch (error) {
        throw commandError(plugin, command, error);
      }
    },
    snapshot: () => fold.snapshot(),
    state: () => fold.json(),
  };
}
