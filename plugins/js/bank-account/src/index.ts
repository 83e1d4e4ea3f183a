// A bank account aggregate (streams `bank-account-{id}`), the TypeScript twin
// of the Rust plugins/bank-account: same events, commands, rules, rejection
// reasons and state JSON, so either build can replace the other.
//
// Rules: an account is opened once, with a non-empty owner; deposits and
// withdrawals need a positive amount and an open account; a withdrawal may not
// overdraw; a deposit may not overflow the balance (a u64); an account closes
// only when its balance is zero, and a closed account accepts nothing more.

import { InvalidCommand, Rejection, defineAggregate, log, u64 } from "foldhost-guest";

type Status = "new" | "open" | "closed";

interface Account {
  owner: string | null;
  /** In the smallest currency unit. */
  balance: bigint;
  status: Status;
}

/** Amounts are u64: numbers up to 2^53 - 1, BigInts beyond. */
type Amount = number | bigint;

interface Events {
  Opened: { owner: string };
  Deposited: { amount: Amount };
  Withdrawn: { amount: Amount };
  Closed: null;
}

interface Commands {
  Open: { owner?: unknown };
  Deposit: { amount?: unknown };
  Withdraw: { amount?: unknown };
  Close: unknown;
}

const U64_MAX = 2n ** 64n - 1n;

function ensureOpen(account: Readonly<Account>): void {
  if (account.status === "new") throw new Rejection("account is not open");
  if (account.status === "closed") throw new Rejection("account is closed");
}

function positive(amount: bigint): bigint {
  if (amount === 0n) throw new Rejection("amount must be positive");
  return amount;
}

export const aggregate = defineAggregate<Account, Events, Commands>({
  name: "bank-account",
  version: "1.0.0",
  initialState: () => ({ owner: null, balance: 0n, status: "new" }),

  apply: {
    Opened(account, { owner }) {
      account.owner = owner;
      account.status = "open";
    },
    Deposited(account, { amount }) {
      const sum = account.balance + u64(amount);
      account.balance = sum > U64_MAX ? U64_MAX : sum;
    },
    Withdrawn(account, { amount }) {
      const value = u64(amount);
      account.balance = value > account.balance ? 0n : account.balance - value;
    },
    Closed(account) {
      account.status = "closed";
    },
  },

  handle: {
    Open(account, { owner }) {
      if (typeof owner !== "string") throw new InvalidCommand("owner: expected a string");
      if (account.status === "open") throw new Rejection("account is already open");
      if (account.status === "closed") throw new Rejection("account is closed");
      if (owner.trim() === "") throw new Rejection("owner must not be empty");
      log.info(`opening account for ${owner}`);
      return { type: "Opened", data: { owner } };
    },
    Deposit(account, { amount }) {
      const value = u64(amount, "amount");
      ensureOpen(account);
      positive(value);
      if (account.balance + value > U64_MAX) throw new Rejection("deposit would overflow the balance");
      return { type: "Deposited", data: { amount: value } };
    },
    Withdraw(account, { amount }) {
      const value = u64(amount, "amount");
      ensureOpen(account);
      positive(value);
      if (value > account.balance) {
        throw new Rejection(`insufficient funds: balance ${account.balance}, requested ${value}`);
      }
      return { type: "Withdrawn", data: { amount: value } };
    },
    Close(account) {
      ensureOpen(account);
      if (account.balance !== 0n) throw new Rejection(`balance must be zero to close, is ${account.balance}`);
      return { type: "Closed" };
    },
  },
});
