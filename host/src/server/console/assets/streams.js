// Streams: the most recently written first, filtered by prefix or category; one stream's
// events as pretty JSON with their metadata, a page at a time.
import { h, fill, number, when, jsonBlock } from './dom.js';
import { call, enc } from './api.js';

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

async function stream(main, name, from) {
  const events = await call(`/streams/${enc(name)}/events?from_version=${from}&limit=${PAGE}`);
  const last = events.length ? events[events.length - 1].version : from;
  const nav = h('div', { class: 'toolbar' },
    from > 1 ? h('a', { href: `#/stream/${enc(name)}/${Math.max(1, from - PAGE)}` }, '← Earlier') : '',
    events.length === PAGE ? h('a', { href: `#/stream/${enc(name)}/${last + 1}` }, 'Later →') : '');
  fill(main, h('h1', {}, 'Stream ', h('span', { class: 'mono' }, name)), nav,
    h('div', { id: 'events' }, events.map((e) => h('div', { class: 'card event' },
      h('div', {}, h('strong', {}, `#${e.version} `), h('span', { class: 'event-type' }, e.type),
        h('span', { class: 'muted' }, ` · position ${e.position} · ${when(e.recorded_at)} · ${e.id}`)),
      jsonBlock(e.data),
      e.metadata === null ? '' : [h('div', { class: 'muted' }, 'metadata'), jsonBlock(e.metadata)]))),
    nav.cloneNode(true));
}

export async function render(main, { name, args }) {
  if (name === 'stream' && args[0]) return stream(main, args[0], Number(args[1] || 1));
  return list(main);
}
