// Logging to the host's `tracing` log, and a `console` that does the same
// (QuickJS has none).

import host from "foldhost:plugin/host@0.1.2";

import { show } from "./errors.js";

function text(parts) {
  return parts.map((part) => (part instanceof Error ? `${part.name}: ${part.message}` : show(part))).join(" ");
}

const at = (level) => (...parts) => host.log(level, text(parts));

/** Lines in the host log, tagged with the plugin. */
export const log = {
  trace: at("trace"),
  debug: at("debug"),
  info: at("info"),
  warn: at("warn"),
  error: at("error"),
};

globalThis.console = {
  log: log.info,
  info: log.info,
  debug: log.debug,
  trace: log.trace,
  warn: log.warn,
  error: log.error,
};
