// Building DOM from data safely: text is always set as text, never parsed as HTML.

/** An element `tag` with attributes/properties `props` and `children` (nodes or text). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key in el && key !== 'list') el[key] = value;
    else el.setAttribute(key, value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces everything in `el` with `children`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** JSON as an indented, collapsible tree (objects and arrays are <details>). */
export function jsonTree(value, key, depth = 0) {
  const label = key === undefined ? [] : [h('span', { class: 'json-key' }, JSON.stringify(key)), ': '];
  if (value !== null && typeof value === 'object') {
    const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
    const summary = Array.isArray(value) ? `[${entries.length}]` : `{${entries.length}}`;
    return h('details', { class: 'json', open: depth < 3 },
      h('summary', {}, ...label, summary),
      entries.map(([k, v]) => h('div', {}, jsonTree(v, Array.isArray(value) ? undefined : k, depth + 1))));
  }
  const kind = value === null || typeof value === 'boolean' ? 'literal' : typeof value;
  return h('span', { class: 'mono' }, ...label, h('span', { class: `json-${kind}` }, JSON.stringify(value)));
}

/** Pretty JSON as a <pre> block of text. */
export function jsonBlock(value) {
  return h('pre', {}, JSON.stringify(value, null, 2));
}

export function when(ms) {
  return ms ? new Date(ms).toLocaleString() : '';
}

export function number(n, digits = 0) {
  return n === undefined || n === null ? '–' : Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}
