// A read-only view of the state for command handlers and queries: deciding
// must not change the state (the host applies the decided events once they
// are stored), so a write through the view throws instead of corrupting it.

const views = new WeakMap();

function refuse() {
  throw new TypeError(
    "the state is read-only here: a command handler returns events and their apply handlers change the state",
  );
}

const READ_ONLY = {
  get(target, key, receiver) {
    const value = Reflect.get(target, key, receiver);
    if (typeof value !== "object" || value === null) return value;
    // A frozen property must read as itself (a Proxy invariant).
    const property = Reflect.getOwnPropertyDescriptor(target, key);
    return property && !property.configurable && !property.writable ? value : readOnly(value);
  },
  set: refuse,
  deleteProperty: refuse,
  defineProperty: refuse,
  setPrototypeOf: refuse,
  preventExtensions: refuse,
};

/** `value` itself if it is not an object, else a cached read-only view of it. */
export function readOnly(value) {
  if (typeof value !== "object" || value === null) return value;
  let view = views.get(value);
  if (view === undefined) {
    view = new Proxy(value, READ_ONLY);
    views.set(value, view);
  }
  return view;
}
