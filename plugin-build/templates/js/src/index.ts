// The `{{name}}` aggregate: a counter (streams `{{name}}-{id}`).
// `foldhost plugins build` type-checks this project and turns it into a
// component; `foldhost-guest/index.d.ts` documents the SDK.

import { Rejection, defineAggregate, u64 } from "foldhost-guest";

interface Counter {
  value: bigint;
}

interface Events {
  Added: { by: number | bigint };
  Reset: null;
}

interface Commands {
  Add: { by?: unknown };
  Reset: unknown;
}

export const aggregate = defineAggregate<Counter, Events, Commands>({
  name: "{{name}}",
  version: "0.1.0",
  initialState: () => ({ value: 0n }),
  apply: {
    Added(counter, { by }) {
      counter.value += u64(by);
    },
    Reset(counter) {
      counter.value = 0n;
    },
  },
  handle: {
    Add(_counter, { by }) {
      const amount = u64(by, "by");
      if (amount === 0n) throw new Rejection("nothing to add");
      return { type: "Added", data: { by: amount } };
    },
    Reset: () => ({ type: "Reset" }),
  },
});
