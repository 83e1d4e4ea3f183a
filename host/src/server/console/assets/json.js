// JSON read as text, without JSON.parse: what the console shows is what the server sent, every
// number, key and repeated key as written and in its order, and a hostile document (deep,
// wide, huge) costs bounded work and memory to show.

const SPACE = new Set([' ', '\t', '\n', '\r']);
const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const LITERALS = ['true', 'false', 'null'];

/**
 * The JSON text `text` as nodes `{kind, start, end}` (`text.slice(start, end)` is the value's
 * text): `object` and `array` with `children` (`{key, value}`, `key` the key's text with its
 * quotes, null in arrays) and `omitted` (children not read, past `maxNodes`), `string`,
 * `number` and `literal`, and `more` for an object or array not read: deeper than `maxDepth`
 * levels or past `maxNodes` values. Throws a SyntaxError for text that is not JSON.
 */
export function parse(text, { maxDepth = 32, maxNodes = 2000 } = {}) {
  let i = 0, nodes = 0;
  const fail = (what) => { throw new SyntaxError(`not JSON: ${what} at character ${i}`); };
  const space = () => { while (SPACE.has(text[i])) i++; };

  function string() {
    i++;
    while (i < text.length) {
      const c = text[i++];
      if (c === '"') return;
      if (c === '\\') i++;
    }
    fail('unterminated string');
  }

  /** A number or literal at `i`; its kind. */
  function scalar() {
    NUMBER.lastIndex = i;
    if (NUMBER.test(text)) { i = NUMBER.lastIndex; return 'number'; }
    const word = LITERALS.find((w) => text.startsWith(w, i));
    if (!word) fail(i < text.length ? `unexpected ${JSON.stringify(text[i])}` : 'unexpected end');
    i += word.length;
    return 'literal';
  }

  /** Moves past one value without reading it into nodes, however deep (no recursion). */
  function skip() {
    space();
    let depth = 0;
    do {
      const c = text[i];
      if (c === '"') string();
      else if (c === '{' || c === '[') { depth++; i++; } else if (c === '}' || c === ']') {
        if (depth === 0) fail(`unexpected ${c}`);
        depth--; i++;
      } else if (depth === 0) scalar();
      else if (c === undefined) fail('unexpected end');
      else i++;
    } while (depth > 0);
  }

  function value(depth) {
    space();
    const start = i, c = text[i];
    if (c === '{' || c === '[') {
      if (depth >= maxDepth || nodes >= maxNodes) { skip(); return { kind: 'more', start, end: i }; }
      nodes++;
      return container(depth, start, c === '{');
    }
    nodes++;
    if (c === '"') { string(); return { kind: 'string', start, end: i }; }
    const kind = scalar();
    return { kind, start, end: i };
  }

  function container(depth, start, keyed) {
    const close = keyed ? '}' : ']';
    const node = { kind: keyed ? 'object' : 'array', start, end: start, children: [], omitted: 0 };
    i++;
    space();
    if (text[i] === close) { i++; node.end = i; return node; }
    for (;;) {
      let key = null;
      if (keyed) {
        space();
        if (text[i] !== '"') fail('expected a key');
        const from = i;
        string();
        key = text.slice(from, i);
        space();
        if (text[i] !== ':') fail('expected ":"');
        i++;
      }
      if (nodes < maxNodes) node.children.push({ key, value: value(depth + 1) });
      else { skip(); node.omitted++; }
      space();
      if (text[i] === ',') { i++; continue; }
      if (text[i] === close) { i++; node.end = i; return node; }
      fail(`expected "," or "${close}"`);
    }
  }

  const root = value(0);
  space();
  if (i < text.length) fail('text after the value');
  return root;
}

/** The value of `key` in object node `node` (its first, if repeated); undefined if none. */
export function member(node, key) {
  const quoted = JSON.stringify(key);
  return node && node.kind === 'object' ? node.children.find((c) => c.key === quoted)?.value : undefined;
}

/** The text of `node` in `text`. */
export function source(text, node) {
  return text.slice(node.start, node.end);
}

/** A string, number or literal node as a JavaScript value (numbers as doubles: for counters). */
export function scalar(text, node) {
  return node ? JSON.parse(source(text, node)) : undefined;
}

/**
 * The JSON text `text` indented two spaces a level, keeping every token's text: at most
 * `limit` characters of it, and whether that is all (`complete`).
 */
export function pretty(text, limit = Infinity) {
  const out = [];
  let length = 0, depth = 0, i = 0;
  const emit = (piece) => { out.push(piece); length += piece.length; };
  const newline = () => emit(`\n${'  '.repeat(Math.min(depth, limit))}`);
  while (i < text.length && length < limit) {
    const c = text[i];
    if (SPACE.has(c)) { i++; continue; }
    if (c === '{' || c === '[') {
      let next = i + 1;
      while (SPACE.has(text[next])) next++;
      if (text[next] === (c === '{' ? '}' : ']')) { emit(c + text[next]); i = next + 1; continue; }
      depth++; emit(c); newline(); i++;
    } else if (c === '}' || c === ']') {
      depth = Math.max(depth - 1, 0); newline(); emit(c); i++;
    } else if (c === ',') {
      emit(','); newline(); i++;
    } else if (c === ':') {
      emit(': '); i++;
    } else {
      const from = i;
      if (c === '"') {
        for (i++; i < text.length; i++) {
          if (text[i] === '\\') i++;
          else if (text[i] === '"') { i++; break; }
        }
      } else {
        while (i < text.length && !SPACE.has(text[i]) && !',:{}[]"'.includes(text[i])) i++;
      }
      emit(text.slice(from, i));
    }
  }
  const shown = out.join('');
  return { text: shown.slice(0, limit), complete: i >= text.length && length <= limit };
}
