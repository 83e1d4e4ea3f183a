// The exceptions a plugin throws on purpose, and how any exception reads.

/** A command refused by business rules: answered as `rejected` (HTTP 422). */
export class Rejection extends Error {
  constructor(reason) {
    super(reason);
    this.name = "Rejection";
  }
}

/** A command that cannot be understood: answered as `invalid` (HTTP 400). */
export class InvalidCommand extends Error {
  constructor(reason) {
    super(reason);
    this.name = "InvalidCommand";
  }
}

/** A clock or randomness read: plugins must fold the same state on every replay. */
export class NondeterminismError extends Error {
  constructor(what) {
    super(
      `${what} is not available in a foldhost plugin: replaying the same events must fold ` +
        "the same state, so plugins get no clock and no randomness (an event's recordedAt is its time)",
    );
    this.name = "NondeterminismError";
  }
}

/**
 * Whether `error` was thrown on purpose, its message meant for the caller: a
 * Rejection, an InvalidCommand or a plain Error (not a TypeError, say).
 */
export function isDeliberate(error) {
  return error instanceof Rejection || error instanceof InvalidCommand || error?.constructor === Error;
}

/** Any value, shown for a message: strings as they are, the rest as JSON where it can be. */
export function show(value) {
  if (typeof value === "string") return value;
  if (typeof value === "bigint") return `${value}`;
  try {
    return JSON.stringify(value, (_key, v) => (typeof v === "bigint" ? `${v}` : v)) ?? String(value);
  } catch {
    return String(value);
  }
}

/** A one-line description of anything thrown: the message, named unless deliberate. */
export function describe(error) {
  if (isDeliberate(error)) return error.message;
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return `uncaught ${show(error)}`;
}

/** `headline` (default: `describe(error)`), plus the stack when there is one, for the host log. */
export function describeWithStack(error, headline = describe(error)) {
  const stack = error instanceof Error && typeof error.stack === "string" ? error.stack.trim() : "";
  return stack ? `${headline}\n${stack}` : headline;
}

const U64_MAX = (1n << 64n) - 1n;

/**
 * `value` as a BigInt in 0..2^64-1: a u64 field read exactly. Numbers must be
 * safe integers; larger integers arrive as BigInts already. Throws
 * InvalidCommand otherwise, naming `field` when given.
 */
export function u64(value, field) {
  if (typeof value === "bigint" ? value >= 0n && value <= U64_MAX : Number.isSafeInteger(value) && value >= 0) {
    return BigInt(value);
  }
  const subject = field === undefined ? "" : `${field}: `;
  const shown = typeof value === "string" ? JSON.stringify(value) : show(value);
  throw new InvalidCommand(`${subject}expected an unsigned 64-bit integer, got ${shown}`);
}
