// Types for foldhost-guest: foldhost plugins in JavaScript and TypeScript.

/** A JSON value as this SDK reads it: integers beyond ±(2^53 - 1) are BigInts. */
export type Json = null | boolean | number | bigint | string | Json[] | { [key: string]: Json };

/** A stored event, as apply handlers see it beside its data. */
export interface StoredEvent {
  /** The event type, e.g. "Deposited". */
  readonly type: string;
  /** The stream it belongs to, e.g. "bank-account-42". */
  readonly stream: string;
  /** 1-based version within its stream. */
  readonly version: number;
  /** 1-based position in the global log. */
  readonly position: number;
  /** When the journal stored it, in milliseconds since the Unix epoch: a plugin's only clock. */
  readonly recordedAt: number;
  /** The event's metadata object (parsed on first use), or null when it has none. */
  readonly metadata: { [key: string]: Json } | null;
}

/** Event types mapped to their data, e.g. `{ Deposited: { amount: bigint }; Closed: null }`. */
export type EventMap = Record<string, any>;

/** An event a command decides: its type and data (JSON, or a Uint8Array for a binary event). */
export type NewEvent<Events extends EventMap = EventMap> = {
  [Type in keyof Events & string]: { type: Type; data?: Events[Type] };
}[keyof Events & string];

/** What a command handler returns: one event, several, or none. */
export type Decision<Events extends EventMap = EventMap> = NewEvent<Events> | NewEvent<Events>[] | void;

/** A read-only view: deciding and querying must not change the state (writes throw). */
export type ReadonlyDeep<T> = T extends bigint | string | number | boolean | null | undefined
  ? T
  : T extends (infer Item)[]
    ? readonly ReadonlyDeep<Item>[]
    : { readonly [Key in keyof T]: ReadonlyDeep<T[Key]> };

/** Folds an event into the state: change `state` in place, or return the new state. */
export type ApplyHandler<State, Data> = (state: State, data: Data, event: StoredEvent) => State | void;

interface Identity<State> {
  /** The plugin name; an aggregate's streams are `{name}-{id}`. Lowercase letters, digits and '-'. */
  name: string;
  /** The plugin's own release, e.g. "1.0.0". */
  version: string;
  /** Bump whenever the state's shape changes, so old snapshots are not restored into it. Default 1. */
  stateSchema?: number;
  /**
   * A fresh, empty state. States are plain data: objects, arrays, strings,
   * numbers, BigInts, booleans and null (snapshots are JSON that keeps BigInts).
   */
  initialState(): State;
  /** What readers see as the state (`GET` the aggregate or projection); defaults to the state itself. */
  view?(state: ReadonlyDeep<State>): unknown;
}

/** An aggregate: the state of one stream, folded from its events; decides commands into events. */
export interface AggregateDefinition<State, Events extends EventMap = EventMap, Commands extends EventMap = EventMap>
  extends Identity<State> {
  /** One handler per event type. An event without a handler cannot be folded: its batch fails. */
  apply: { [Type in keyof Events]: ApplyHandler<State, Events[Type]> };
  /**
   * One handler per command type, given the state (read-only) and the command's
   * JSON data (`{}` when the command has none). Throw a {@link Rejection} to refuse (HTTP 422) or an
   * {@link InvalidCommand} for malformed data (HTTP 400); any other exception
   * also answers 400 and is logged.
   */
  handle: { [Type in keyof Commands]: (state: ReadonlyDeep<State>, data: Commands[Type]) => Decision<Events> };
}

/** Which events a projection reads. Empty or missing lists mean "all". */
export interface Subscription {
  /** Stream categories: a stream `{category}-{id}` belongs to `category`, e.g. "bank-account". */
  categories?: string[];
  /** Event types; defaults to the types that have an apply handler. */
  eventTypes?: string[];
}

/** A projection: a fold over the global log, answering named queries. */
export interface ProjectionDefinition<State, Events extends EventMap = EventMap> extends Identity<State> {
  subscription?: Subscription;
  /** One handler per event type; events of other types are skipped. */
  apply: { [Type in keyof Events]: ApplyHandler<State, Events[Type]> };
  /**
   * Named queries (`GET /projections/{name}/query/{query}?k=v`), given the
   * state (read-only) and the arguments as an object; the answer is sent as JSON.
   */
  queries?: { [name: string]: (state: ReadonlyDeep<State>, args: { [key: string]: Json }) => unknown };
}

/** What a plugin module exports as `aggregate`; only the host calls it. */
export interface AggregateExports {
  readonly __foldhostAggregate?: never;
}

/** What a plugin module exports as `projection`; only the host calls it. */
export interface ProjectionExports {
  readonly __foldhostProjection?: never;
}

/** Defines an aggregate. Export the result: `export const aggregate = defineAggregate({...})`. */
export function defineAggregate<State, Events extends EventMap = EventMap, Commands extends EventMap = EventMap>(
  definition: AggregateDefinition<State, Events, Commands>,
): AggregateExports;

/** Defines a projection. Export the result: `export const projection = defineProjection({...})`. */
export function defineProjection<State, Events extends EventMap = EventMap>(
  definition: ProjectionDefinition<State, Events>,
): ProjectionExports;

/** Thrown by a command handler: the command breaks a business rule (`rejected`, HTTP 422). */
export class Rejection extends Error {
  constructor(reason: string);
}

/** Thrown by a command handler: the command's data is malformed (`invalid`, HTTP 400). */
export class InvalidCommand extends Error {
  constructor(reason: string);
}

/** Thrown by Date.now(), new Date(), Math.random() and performance.now(): plugins are deterministic. */
export class NondeterminismError extends Error {}

/**
 * A u64 field read exactly, as a BigInt in 0..2^64-1. JSON integers up to
 * 2^53 - 1 arrive as numbers and larger ones as BigInts; anything else throws
 * an {@link InvalidCommand} naming `field`.
 */
export function u64(value: unknown, field?: string): bigint;

/** JSON.parse that keeps integers beyond ±(2^53 - 1) exact, as BigInts. */
export function parseJson(text: string): Json;

/** JSON.stringify that writes BigInts as plain integers. */
export function stringifyJson(value: unknown): string;

/** Lines in the host's log, tagged with the plugin (`console.log` and friends write here too). */
export const log: {
  trace(...parts: unknown[]): void;
  debug(...parts: unknown[]): void;
  info(...parts: unknown[]): void;
  warn(...parts: unknown[]): void;
  error(...parts: unknown[]): void;
};
