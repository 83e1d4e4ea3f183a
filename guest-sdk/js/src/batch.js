// Reading a batch: events whose strings and payloads are byte ranges of one
// shared buffer.

import { parse } from "./json.js";
import { binaryString, fromBinaryString, isAscii } from "./utf8.js";

/** One stored event: where it sits in the log, and its type. */
export class StoredEvent {
  constructor(type, stream, version, position, recordedAt, metadataText) {
    /** The event type, e.g. "Deposited". */
    this.type = type;
    /** The stream it belongs to, e.g. "bank-account-42". */
    this.stream = stream;
    /** 1-based version within its stream. */
    this.version = version;
    /** 1-based position in the global log. */
    this.position = position;
    /** When the journal stored it, in milliseconds since the Unix epoch. */
    this.recordedAt = recordedAt;
    this.metadataText = metadataText;
  }

  /** The event's metadata object, or null when it has none. */
  get metadata() {
    return this.metadataText === "" ? null : parse(this.metadataText);
  }
}

function checkSpan(buffer, event, field, span) {
  if (span.offset + span.len > buffer.length) {
    throw new Error(
      `event at position ${event.position}: ${field} span ${span.offset}+${span.len} ` +
        `lies outside the ${buffer.length}-byte buffer`,
    );
  }
}

/** The batch's text reader: byte spans of the buffer as strings. */
function spans(batch) {
  const buffer = batch.buffer;
  const binary = binaryString(buffer);
  const ascii = isAscii(binary);
  return (event, field, span) => {
    checkSpan(buffer, event, field, span);
    const raw = binary.substr(span.offset, span.len);
    if (ascii) return raw;
    try {
      return fromBinaryString(raw);
    } catch {
      throw new Error(`event at position ${event.position}: ${field} is not UTF-8`);
    }
  };
}

/**
 * The batch's events, each as `{ event, data }` with its data decoded (JSON
 * parsed, binary as a Uint8Array), keeping only those `wanted(stream, type)`
 * accepts. Decodes everything before returning, so a malformed event fails
 * the batch before any of it is applied.
 */
export function decodeBatch(batch, wanted) {
  const text = spans(batch);
  const decoded = [];
  for (const raw of batch.events) {
    const stream = text(raw, "stream", raw.stream);
    const type = text(raw, "event type", raw.eventType);
    if (!wanted(stream, type)) continue;
    const event = new StoredEvent(
      type,
      stream,
      raw.version,
      raw.position,
      raw.recordedAt,
      text(raw, "metadata", raw.metadata),
    );
    let data;
    try {
      if (raw.contentType === "binary") {
        checkSpan(batch.buffer, raw, "data", raw.data);
        data = batch.buffer.slice(raw.data.offset, raw.data.offset + raw.data.len);
      } else {
        data = parse(text(raw, "data", raw.data));
      }
    } catch (error) {
      throw new Error(`cannot apply event at position ${raw.position} of type \`${type}\`: ${error.message}`);
    }
    decoded.push({ event, data });
  }
  return decoded;
}
