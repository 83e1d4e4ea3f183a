// A projection over the `bank-account` category, the JavaScript twin of the
// Rust plugins/bank-analytics: open accounts, total balance, deposits per UTC
// day and the largest balances, with the same state JSON and queries.
//
// Queries: `top` ({"n": k}, default 10) lists the largest balances of open
// accounts; `account` ({"id": stream}) shows one account.

import { defineProjection, u64 } from "foldhost-guest";

const DEFAULT_TOP = 10;
const U64_MAX = 2n ** 64n - 1n;

/** `a + b`, saturating at the largest u64 as the Rust build does. */
function add(a, b) {
  const sum = a + b;
  return sum > U64_MAX ? U64_MAX : sum;
}

/** The account behind `stream`, created empty on first sight. */
function account(state, stream) {
  return (state.accounts[stream] ??= { owner: "", balance: 0n, open: false });
}

/** The UTC date of a Unix time in milliseconds, `YYYY-MM-DD`. */
function utcDate(ms) {
  return new Date(ms).toISOString().slice(0, 10);
}

/** The `n` open accounts with the largest balances, ties by stream name. */
function top(state, n) {
  return Object.entries(state.accounts)
    .filter(([, summary]) => summary.open)
    .sort(([idA, a], [idB, b]) => (a.balance === b.balance ? (idA < idB ? -1 : 1) : a.balance > b.balance ? -1 : 1))
    .slice(0, n)
    .map(([id, { owner, balance }]) => ({ id, owner, balance }));
}

export const projection = defineProjection({
  name: "bank-analytics",
  version: "1.0.0",
  subscription: { categories: ["bank-account"] },
  initialState: () => ({ open_accounts: 0, total_balance: 0n, deposits_per_day: {}, accounts: {} }),

  apply: {
    Opened(state, { owner }, event) {
      const summary = account(state, event.stream);
      if (!summary.open) {
        summary.open = true;
        state.open_accounts += 1;
      }
      summary.owner = owner;
    },
    Deposited(state, { amount }, event) {
      const value = u64(amount);
      const summary = account(state, event.stream);
      summary.balance = add(summary.balance, value);
      state.total_balance = add(state.total_balance, value);
      const day = (state.deposits_per_day[utcDate(event.recordedAt)] ??= { count: 0, amount: 0n });
      day.count += 1;
      day.amount = add(day.amount, value);
    },
    Withdrawn(state, { amount }, event) {
      const summary = account(state, event.stream);
      const value = u64(amount);
      const taken = value < summary.balance ? value : summary.balance;
      summary.balance -= taken;
      state.total_balance = taken < state.total_balance ? state.total_balance - taken : 0n;
    },
    Closed(state, _data, event) {
      const summary = account(state, event.stream);
      if (summary.open) {
        summary.open = false;
        state.open_accounts -= 1;
      }
    },
  },

  /** A summary: the per-account map is reachable through the queries. */
  view: (state) => ({
    open_accounts: state.open_accounts,
    total_balance: state.total_balance,
    accounts: Object.keys(state.accounts).length,
    deposits_per_day: state.deposits_per_day,
    top: top(state, DEFAULT_TOP),
  }),

  queries: {
    top(state, { n = DEFAULT_TOP }) {
      if (!Number.isSafeInteger(n) || n < 0) throw new Error(`bad arguments for \`top\`: n must be a count, got ${n}`);
      return top(state, n);
    },
    account(state, { id }) {
      if (typeof id !== "string") throw new Error("bad arguments for `account`: missing field `id`");
      const summary = Object.hasOwn(state.accounts, id) ? state.accounts[id] : undefined;
      if (summary === undefined) throw new Error(`no account \`${id}\``);
      return { id, owner: summary.owner, balance: summary.balance, open: summary.open };
    },
  },
});
