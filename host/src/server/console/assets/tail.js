// Live tail: the global log as it is written (SSE), with pause, a filter by stream prefix or
// event type, and reconnection from the last position seen, backing off while it fails.
import { h, fill, when, clip } from './dom.js';
import { member, parse, scalar, source } from './json.js';

const KEEP = 500;
/** Most characters of an event's data a row shows (its stream's page shows the rest). */
const DATA_SHOWN = 300;

/**
 * The fields of a feed event's JSON text that a row shows; the start of its data as the text
 * sent, copied so that a held row does not keep the whole text alive.
 */
function summary(text) {
  const event = parse(text, { maxDepth: 1 });
  const value = (key) => scalar(text, member(event, key));
  return {
    position: value('position'), stream: value('stream'), version: value('version'), type: value('type'),
    recorded_at: value('recorded_at'), binary: value('content_type') !== 'json',
    data: [...clip(source(text, member(event, 'data')), DATA_SHOWN)].join(''),
  };
}

export async function render(main) {
  const prefix = h('input', { id: 'tail-prefix', placeholder: 'stream prefix' });
  const type = h('input', { id: 'tail-type', placeholder: 'event type' });
  const pause = h('button', { type: 'button', id: 'tail-pause' }, 'Pause');
  const state = h('span', { class: 'muted', id: 'tail-state' });
  const rows = h('div', { class: 'tail', id: 'tail' });
  const problem = h('p', { class: 'error', id: 'tail-error' });
  let paused = false, feed = null, last = null, retry = null, failures = 0, opened = null;
  const held = [];
  function show(event) {
    if (prefix.value && !event.stream.startsWith(prefix.value)) return;
    if (type.value && event.type !== type.value) return;
    rows.prepend(h('div', { class: 'row', 'data-position': event.position },
      h('span', { class: 'mono' }, `${event.position} `), h('strong', {}, event.type), ' on ',
      h('a', { href: `#/stream/${encodeURIComponent(event.stream)}` }, event.stream),
      h('span', { class: 'muted' }, ` v${event.version} · ${when(event.recorded_at)} `),
      event.binary ? [h('span', { class: 'badge binary' }, 'binary'), ' '] : '',
      h('code', { class: 'data' }, event.data)));
    while (rows.childElementCount > KEEP) rows.lastElementChild.remove();
  }
  function connect() {
    // Starts at the head, or right after the last event seen (the feed resumes from there).
    const from = last === null ? '' : `?from_position=${last + 1}`;
    feed = new EventSource(`/events/live${from}`);
    state.textContent = 'connecting…';
    feed.onopen = () => { state.textContent = 'following'; opened = Date.now(); };
    feed.onmessage = (message) => {
      failures = 0;
      problem.textContent = '';
      let event;
      try { event = summary(message.data); } catch (error) {
        rows.prepend(h('div', { class: 'row error' }, `An event could not be shown: ${error.message}`));
        return;
      }
      last = event.position;
      if (paused) { held.push(event); if (held.length > KEEP) held.shift(); } else show(event);
    };
    // The server ends a feed it cannot go on with by an event named `error` with the reason as
    // its data; a lost connection is an `error` without data. Either way it reconnects from
    // the last event seen, after 1 s, then twice as long after each failure in a row (≤ 30 s);
    // a feed that stayed open 5 s before it failed starts the count again.
    feed.addEventListener('error', (event) => {
      feed.close();
      if (opened !== null && Date.now() - opened > 5000) failures = 0;
      opened = null;
      if (event.data !== undefined) problem.textContent = `The server ended the feed: ${event.data}`;
      const wait = Math.min(2 ** failures, 30);
      failures++;
      state.textContent = `disconnected, retrying in ${wait} s…`;
      retry = setTimeout(connect, wait * 1000);
    });
  }
  pause.addEventListener('click', () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    if (!paused) held.splice(0).forEach(show);
  });
  fill(main, h('h1', {}, 'Live tail'),
    h('div', { class: 'toolbar' }, prefix, type, pause, state), problem, rows);
  const health = await fetch('/health').then((r) => r.json());
  last = health.head_position > 10 ? health.head_position - 10 : null;
  connect();
  return () => { clearTimeout(retry); if (feed) feed.close(); };
}
