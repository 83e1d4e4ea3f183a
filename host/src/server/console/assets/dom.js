// Building DOM from data safely: text is always set as text, never parsed as HTML.
import { parse, pretty, source } from './json.js';

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

/** Most characters of one JSON value shown at first (the rest behind "Show all"). */
const SHOWN = 64 << 10;
/** How much of a JSON document a tree shows: levels and values... */
const TREE = { maxDepth: 32, maxNodes: 2000 };
/** ...and characters of one key or value. */
const TREE_TEXT = 2048;

/** `text`, cut to `most` characters with a note of how many there were. */
export function clip(text, most) {
  return text.length <= most ? text : `${text.slice(0, most)}… (${number(text.length)} characters)`;
}

/**
 * The JSON text `text` as an indented, collapsible tree (objects and arrays are <details>),
 * keys and numbers as written; at most 32 levels and 2,000 values of it, each cut to 2 KiB.
 */
export function jsonTree(text) {
  let root;
  try { root = parse(text, TREE); } catch (error) {
    return h('div', {}, h('p', { class: 'error' }, error.message), h('pre', {}, clip(text, SHOWN)));
  }
  return treeNode(text, root, null, 0);
}

function treeNode(text, node, key, depth) {
  const label = key === null ? [] : [h('span', { class: 'json-key' }, clip(key, TREE_TEXT)), ': '];
  if (node.kind === 'object' || node.kind === 'array') {
    const count = node.children.length + node.omitted;
    return h('details', { class: 'json', open: depth < 3 },
      h('summary', {}, ...label, node.kind === 'array' ? `[${count}]` : `{${count}}`),
      node.children.map((child) => h('div', {}, treeNode(text, child.value, child.key, depth + 1))),
      node.omitted ? h('div', { class: 'muted' }, `… ${number(node.omitted)} more not shown`) : '');
  }
  if (node.kind === 'more') {
    return h('span', { class: 'mono' }, ...label,
      h('span', { class: 'muted json-more' }, `${text[node.start]}… ${number(node.end - node.start)} characters not shown`));
  }
  return h('span', { class: 'mono' }, ...label,
    h('span', { class: `json-${node.kind}` }, clip(source(text, node), TREE_TEXT)));
}

/**
 * The JSON text `text` indented, every token as written, as a <pre>: its first 64 KiB, and a
 * button to show all of it as stored when there is more.
 */
export function jsonBlock(text) {
  const { text: shown, complete } = pretty(text, SHOWN);
  const pre = h('pre', {}, shown);
  if (complete) return pre;
  const note = h('p', { class: 'muted' }, `Showing the first ${number(SHOWN)} characters, indented. `,
    h('button', { type: 'button', class: 'show-all', onclick: () => { pre.textContent = text; note.remove(); } },
      `Show all ${number(text.length)} characters as stored`));
  return h('div', { class: 'json-block' }, pre, note);
}

export function when(ms) {
  return ms ? new Date(ms).toLocaleString() : '';
}

export function number(n, digits = 0) {
  return n === undefined || n === null ? '–' : Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}
