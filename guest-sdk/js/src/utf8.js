// UTF-8 without TextEncoder/TextDecoder, which QuickJS lacks.
//
// Bytes become a "binary string" (one char per byte) with String.fromCharCode;
// escape + decodeURIComponent then turn its UTF-8 sequences into characters
// and reject malformed ones. Pure ASCII, the common case, skips that step.

const CHUNK = 0x2000;
const NON_ASCII = /[^\x00-\x7f]/;

/** One char per byte of `bytes` (a Uint8Array). */
export function binaryString(bytes) {
  if (bytes.length <= CHUNK) return String.fromCharCode.apply(null, bytes);
  let text = "";
  for (let start = 0; start < bytes.length; start += CHUNK) {
    text += String.fromCharCode.apply(null, bytes.subarray(start, start + CHUNK));
  }
  return text;
}

/** Whether a string is pure ASCII (for a binary string: byte offsets are char offsets). */
export function isAscii(text) {
  return !NON_ASCII.test(text);
}

/** Decodes the UTF-8 held in a binary string; throws on malformed input. */
export function fromBinaryString(binary) {
  if (isAscii(binary)) return binary;
  try {
    return decodeURIComponent(escape(binary));
  } catch {
    throw new Error("not valid UTF-8");
  }
}

/** Decodes UTF-8 bytes into a string; throws on malformed input. */
export function decode(bytes) {
  return fromBinaryString(binaryString(bytes));
}

/** Encodes a string as UTF-8 bytes. */
export function encode(text) {
  const binary = isAscii(text) ? text : unescape(encodeURIComponent(text));
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
