// defineProjection: a fold over the global log with named queries, as the
// component's `foldhost:plugin/projection` export.

import { decodeBatch } from "./batch.js";
import { describe, describeWithStack, isDeliberate } from "./errors.js";
import { Fold, handlers, identity } from "./fold.js";
import { parse, stringify } from "./json.js";
import { log } from "./log.js";
import { readOnly } from "./readonly.js";

function strings(value, what) {
  if (value === undefined) return [];
  if (!Array.isArray(value) || !value.every((item) => typeof item === "string")) {
    throw new TypeError(`subscription.${what} must be an array of strings`);
  }
  return [...value];
}

/** Whether `stream` is `{category}-{id}` for one of `categories`. */
function inCategory(categories, stream) {
  return categories.some(
    (category) => stream.length > category.length && stream.startsWith(category) && stream[category.length] === "-",
  );
}

/**
 * Defines a projection. Export the result as `projection`:
 *
 *     export const projection = defineProjection({ name, version, subscription, initialState, apply, queries });
 *
 * Events of types without an apply handler are skipped; unless the
 * subscription lists event types, the host sends only the handled ones.
 */
export function defineProjection(definition) {
  const plugin = {
    ...identity(definition, "Projection"),
    apply: handlers(definition, "apply", true),
    queries: handlers(definition, "queries", false),
  };
  const subscription = definition.subscription ?? {};
  const categories = strings(subscription.categories, "categories");
  const eventTypes = subscription.eventTypes === undefined ? [...plugin.apply.keys()] : strings(subscription.eventTypes, "eventTypes");
  const wanted = (stream, type) =>
    (eventTypes.length === 0 || eventTypes.includes(type)) && (categories.length === 0 || inCategory(categories, stream));
  const answers = [...plugin.queries.keys()].join(", ") || "no queries";
  const fold = new Fold(plugin);
  const applyHandler = (event) => plugin.apply.get(event.type);

  return {
    describe: () => ({
      name: plugin.name,
      kind: "projection",
      pluginVersion: plugin.version,
      stateSchema: plugin.stateSchema,
    }),
    subscription: () => ({ eventTypes, categories }),
    init: (snapshot) => fold.init(snapshot),
    apply(batch) {
      let decoded;
      try {
        decoded = decodeBatch(batch, wanted);
      } catch (error) {
        throw error instanceof Error ? error.message : String(error);
      }
      fold.fold(decoded, applyHandler);
    },
    snapshot: () => fold.snapshot(),
    state: () => fold.json(),
    query(name, argsText) {
      const state = fold.current();
      const handler = plugin.queries.get(name);
      if (handler === undefined) throw `unknown query \`${name}\`; ${plugin.name} answers ${answers}`;
      let args;
      try {
        args = argsText.trim() === "" ? {} : (parse(argsText) ?? {});
      } catch (error) {
        throw `query arguments are not JSON: ${error.message}`;
      }
      try {
        return stringify(handler(readOnly(state), args));
      } catch (error) {
        // A plain Error refuses the query on purpose; anything else looks like a bug.
        if (!isDeliberate(error)) log.warn(`${plugin.name}: query ${name} failed: ${describeWithStack(error)}`);
        throw describe(error);
      }
    },
  };
}
