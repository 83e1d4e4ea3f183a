// JSON that keeps 64-bit integers exact.
//
// JSON.parse turns every number into a double, which is exact only up to
// 2^53. Here an integer literal beyond that becomes a BigInt instead (QuickJS
// gives revivers the literal's source text), and BigInts are written back as
// plain digits. Texts without a run of 16 digits cannot hold such a literal
// and take the plain, faster JSON.parse.

const LONG_DIGITS = /\d{16}/;
const INTEGER = /^-?\d+$/;

function reviveBig(_key, value, context) {
  if (typeof value === "number" && !Number.isSafeInteger(value) && INTEGER.test(context.source)) {
    return BigInt(context.source);
  }
  return value;
}

function writeBig(_key, value) {
  return typeof value === "bigint" ? JSON.rawJSON(value.toString()) : value;
}

/** Parses JSON; integers beyond ±(2^53 - 1) become BigInts. */
export function parse(text) {
  return LONG_DIGITS.test(text) ? JSON.parse(text, reviveBig) : JSON.parse(text);
}

/** Writes JSON; BigInts become plain integer literals. `undefined` becomes `null`. */
export function stringify(value) {
  return JSON.stringify(value, writeBig) ?? "null";
}

// Snapshots must restore exactly the state that was saved, including which
// numbers were BigInts. A BigInt is written as a string "\0n<digits>"; a
// string that itself starts with "\0" gets one more "\0" in front.

const MARK = "\0";

function snapshotValue(key, value) {
  // `this[key]` is the value before any toJSON (a Date, say) rewrote it.
  const original = this[key];
  switch (typeof original) {
    case "bigint":
      return `${MARK}n${value}`;
    case "string":
      return value.startsWith(MARK) ? MARK + value : value;
    case "number":
      if (!Number.isFinite(value)) throw new Error(`${where(key)} is ${value}, which JSON cannot hold`);
      return value;
    case "object": {
      if (original === null || Array.isArray(original)) return value;
      const proto = Object.getPrototypeOf(original);
      if (proto !== Object.prototype && proto !== null) {
        const kind = original.constructor?.name ?? "an object with a prototype";
        throw new Error(
          `${where(key)} is a ${kind}; a state holds plain objects, arrays, strings, numbers, BigInts, booleans and null`,
        );
      }
      return value;
    }
    case "function":
    case "symbol":
      throw new Error(`${where(key)} is a ${typeof original}, which a snapshot cannot hold`);
    default:
      return value;
  }
}

function where(key) {
  return key === "" ? "the state" : `state field ${JSON.stringify(key)}`;
}

function restoreValue(_key, value) {
  if (typeof value === "string" && value.startsWith(MARK)) {
    return value[1] === "n" ? BigInt(value.slice(2)) : value.slice(1);
  }
  return value;
}

/** The snapshot text of a state: JSON that remembers BigInts. */
export function toSnapshot(state) {
  return JSON.stringify(state, snapshotValue) ?? "null";
}

/** The state a {@link toSnapshot} text was made from. */
export function fromSnapshot(text) {
  return JSON.parse(text, restoreValue);
}
