// An aggregate (`hostile-js`) whose commands misbehave on purpose, for the
// tests of the JavaScript SDK's error mapping and of the sandbox.
//
// | command       | inside `handle`                                            |
// |---------------|------------------------------------------------------------|
// | `Ping`        | behaves: emits `Ponged`                                    |
// | `Record`      | behaves: emits `Recorded` with the command's `value`       |
// | `Reject`      | throws a Rejection with the command's `reason`             |
// | `Throw`       | throws a TypeError                                         |
// | `ThrowString` | throws a string, not an Error                              |
// | `Clock`       | reads Date.now()                                           |
// | `NewDate`     | constructs new Date()                                      |
// | `Random`      | calls Math.random()                                        |
// | `Mutate`      | changes the state instead of returning an event            |
// | `Unfoldable`  | decides an event type that has no apply handler            |
// | `Loop`        | spins forever                                              |
// | `Allocate`    | allocates 16 MiB buffers without bound                     |
// | `Recurse`     | recurses without bound                                     |
// | `Poison`      | behaves: emits `Poisoned`, whose apply handler throws      |

import { Rejection, defineAggregate } from "foldhost-guest";

function recurse(depth) {
  return recurse(depth + 1) + depth;
}

export const aggregate = defineAggregate({
  name: "hostile-js",
  version: "1.0.0",
  initialState: () => ({ pongs: 0, records: [] }),

  apply: {
    Ponged(state) {
      state.pongs += 1;
    },
    Recorded(state, { value }) {
      state.records.push(value);
    },
    Poisoned(state) {
      state.pongs += 1000;
      throw new Error("applied a Poisoned event");
    },
  },

  handle: {
    Ping: () => ({ type: "Ponged" }),
    Record: (_state, { value }) => ({ type: "Recorded", data: { value } }),
    Reject(_state, { reason }) {
      throw new Rejection(reason);
    },
    Throw() {
      throw new TypeError("thrown on purpose");
    },
    ThrowString() {
      throw "a string, on purpose";
    },
    Clock: () => ({ type: "Recorded", data: { value: Date.now() } }),
    NewDate: () => ({ type: "Recorded", data: { value: new Date().toISOString() } }),
    Random: () => ({ type: "Recorded", data: { value: Math.random() } }),
    Mutate(state) {
      state.pongs += 1;
      return [];
    },
    Unfoldable: () => ({ type: "Unfoldable" }),
    Loop() {
      for (;;);
    },
    Allocate() {
      const hoard = [];
      for (;;) hoard.push(new Uint8Array(16 << 20));
    },
    Recurse() {
      throw new Rejection(`recursion returned ${recurse(0)}: the stack is not limited`);
    },
    Poison: () => ({ type: "Poisoned" }),
  },
});
