// Streams: the most recently written first, filtered by prefix or category; one stream's
// events as indented JSON, as stored, with their metadata, a page at a time.
import { h, fill, number, when, jsonBlock } from './dom.js';
import { call, callText, enc } from './api.js';
import { member, parse, scalar, source } from './json.js';

const PAGE = 20;

async function list(main) {
  const prefix = h('input', { id: 'stream-prefix', placeholder: 'prefix or category-', size: 30 });
  const rows = h('tbody');
  const more = h('button', { type: 'button', hidden: true }, 'Older streams');
  const error = h('p', { class: 'error' });
  let after = null;
  async function load(reset) {
    if (reset) { after = null; rows.replaceChildren(); }
    const query = new URLSearchParams({ prefix: prefix.value, limit: 50 });
    if (after !== null) query.set('after', after);
    try {
      const page = await call(`/streams?${query}`);
      rows.append(...page.streams.map((s) => h('tr', {},
        h('td', {}, h('a', { href: `#/stream/${enc(s.stream)}` }, s.stream)),
        h('td', { class: 'num' }, number(s.version)), h('td', { class: 'num' }, number(s.last_position)),
        h('td', {}, when(s.last_written_at)))));
      after = page.next_after;
      more.hidden = after === null;
      error.textContent = '';
    } catch (e) { error.textContent = e.message; }
  }
  more.addEventListener('click', () => load(false));
  fill(main, h('h1', {}, 'Streams'),
    h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); load(true); } },
      prefix, h('button', {}, 'Filter')),
    h('table', { id: 'streams' },
      h('thead', {}, h('tr', {}, ['Stream', 'Version', 'Last position', 'Last written'].map((t) => h('th', {}, t)))), rows),
    more, error);
  await load(true);
}

/** One event of a page (`node`, read from the page's `text`) as a card. */
function eventCard(text, node) {
  const field = (key) => member(node, key);
  const value = (key) => scalar(text, field(key));
  const binary = value('content_type') !== 'json';
  const metadata = field('metadata');
  return h('div', { class: 'card event' },
    h('div', {}, h('strong', {}, `#${value('version')} `), h('span', { class: 'event-type' }, value('type')),
      binary ? [' ', h('span', { class: 'badge binary', title: 'Its data is bytes, shown in base64' }, 'binary')] : '',
      h('span', { class: 'muted' }, ` · position ${value('position')} · ${when(value('recorded_at'))} · ${value('id')}`)),
    jsonBlock(source(text, field('data'))),
    metadata === undefined || metadata.kind === 'literal' ? ''
      : [h('div', { class: 'muted' }, 'metadata'), jsonBlock(source(text, metadata))]);
}

async function stream(main, name, from) {
  // Read from the text as sent: data and metadata are shown as stored, every number and key
  // as written (JSON.parse would round large numbers and reorder keys).
  const text = await callText(`/streams/${enc(name)}/events?from_version=${from}&limit=${PAGE}`);
  const events = parse(text, { maxDepth: 2, maxNodes: Infinity }).children.map((child) => child.value);
  // A page may end before PAGE events (the server ends one at 16 MiB) and says nothing of
  // what follows: any page with events links on, and an empty one says there are no more.
  const later = events.length ? scalar(text, member(events[events.length - 1], 'version')) + 1 : null;
  const nav = h('div', { class: 'toolbar' },
    from > 1 ? h('a', { href: `#/stream/${enc(name)}/${Math.max(1, from - PAGE)}` }, '← Earlier') : '',
    later === null ? h('span', { class: 'muted' }, 'No more events.')
      : h('a', { href: `#/stream/${enc(name)}/${later}` }, 'Later →'));
  fill(main, h('h1', {}, 'Stream ', h('span', { class: 'mono' }, name)), nav,
    h('div', { id: 'events' }, events.map((node, i) => {
      // One event that cannot be shown must not hide the others.
      try { return eventCard(text, node); } catch (error) {
        return h('div', { class: 'card event error' }, `Event ${i + 1} of this page could not be shown: ${error.message}`);
      }
    })),
    nav.cloneNode(true));
}

export async function render(main, { name, args }) {
  if (name === 'stream' && args[0]) return stream(main, args[0], Number(args[1] || 1));
  return list(main);
}
