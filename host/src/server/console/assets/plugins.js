// Plugins: what is loaded and how each stands; upload, unload, restart, reset, replay parked.
import { h, fill, number, when } from './dom.js';
import { call, enc } from './api.js';

function statusBadge(status) {
  return h('span', { class: `status ${status.status}` }, status.status);
}

/** Catch-up progress: a bar with position/head, events/s and an ETA. */
function progress(status) {
  if (status.status !== 'catching-up') {
    return status.position !== undefined ? h('span', { class: 'muted' }, `at ${number(status.position)}`) : '';
  }
  const { position, head, events_per_sec: rate } = status;
  const eta = rate > 0 ? Math.ceil((head - position) / rate) : null;
  return h('span', { class: 'catch-up' },
    h('progress', { max: Math.max(head, 1), value: position }), ' ',
    `${number(position)} / ${number(head)}`, ' · ', `${number(rate)} events/s`,
    eta === null ? '' : ` · ETA ${eta} s`);
}

function plugin(info, refresh, report) {
  const act = (label, path, question, danger) => h('button', {
    class: danger ? 'danger' : '',
    onclick: async () => {
      if (!confirm(question)) return;
      try {
        await call(path, { method: label === 'Unload' ? 'DELETE' : 'POST', admin: true });
        report(`${label} ${info.name}: done`);
      } catch (error) { report(`${label} ${info.name}: ${error.message}`, true); }
      refresh();
    },
  }, label);
  const name = enc(info.name);
  const projection = info.kind === 'projection';
  const link = projection ? `#/projection/${name}` : `#/aggregate/${name}`;
  const pending = info.pending;
  return h('tr', { 'data-plugin': info.name },
    h('td', {}, h('a', { href: link }, info.name)),
    h('td', {}, info.kind),
    h('td', {}, info.version),
    h('td', { class: 'mono', title: info.hash }, info.hash.slice(0, 12)),
    h('td', { class: 'plugin-status' }, statusBadge(info.status), ' ', progress(info.status),
      info.status.reason ? h('div', { class: 'error' }, info.status.reason) : ''),
    h('td', { class: 'pending' }, pending ? [pending.version, ' ', statusBadge(pending.status), ' ', progress(pending.status)] : ''),
    h('td', { class: 'error' }, info.last_error || ''),
    h('td', { class: 'num' }, projection ? h('a', { href: `#/plugins/${name}/parked` }, number(info.parked || 0)) : ''),
    h('td', {}, h('div', { class: 'toolbar' },
      act('Unload', `/plugins/${name}`, `Unload ${info.name}? Its snapshots and checkpoints stay.`, true),
      projection ? [
        act('Restart', `/plugins/${name}/restart`, `Restart ${info.name} from its checkpoint?`),
        act('Reset', `/plugins/${name}/reset`, `Rebuild ${info.name} from the start of the log?`, true),
        act('Replay parked', `/plugins/${name}/parked/replay`, `Fold the parked events of ${info.name} again?`),
      ] : [])));
}

/** A plugin file or upload being compiled, or queued for it: `{origin, status}` only. */
function loading({ origin, status }) {
  return h('tr', { 'data-origin': origin, class: 'loading' },
    h('td', {}, origin),
    h('td', { class: 'muted' }, 'loading'),
    h('td', {}), h('td', {}),
    h('td', { class: 'plugin-status' }, statusBadge(status), ' ', h('span', { class: 'muted' },
      `${number(status.bytes)} bytes`, status.seconds === undefined ? '' : ` · ${number(status.seconds, 1)} s`)),
    h('td', { colSpan: 4 }));
}

// The most parked events the server lists on one page.
const PARKED_PAGE = 1000;

async function parkedList(name) {
  const parked = await call(`/plugins/${enc(name)}/parked?limit=${PARKED_PAGE}`);
  return [h('h2', {}, `Parked events of ${name}`),
    parked.length === PARKED_PAGE ? h('p', { class: 'muted', id: 'parked-more' },
      `The first ${number(PARKED_PAGE)} are shown; foldhost plugins parked ${name} lists them all.`) : '',
    parked.length === 0 ? h('p', { class: 'muted' }, 'None.') :
      h('table', {}, h('tr', {}, ['Position', 'Stream', 'Type', 'Attempts', 'Parked at', 'Reason'].map((t) => h('th', {}, t))),
        parked.map((p) => h('tr', {}, h('td', { class: 'num' }, p.position), h('td', {}, h('a', { href: `#/stream/${enc(p.stream)}` }, p.stream)),
          h('td', {}, p.type), h('td', { class: 'num' }, p.attempts), h('td', {}, when(p.parked_at)), h('td', { class: 'error' }, p.reason))))];
}

export async function render(main, { args }) {
  const table = h('tbody');
  const message = h('p', { id: 'plugins-message' });
  const parked = h('div');
  const report = (text, bad) => { message.className = bad ? 'error' : 'ok'; message.textContent = text; };
  const file = h('input', { type: 'file', accept: '.wasm', id: 'upload-file' });
  const drop = h('div', { class: 'drop', id: 'drop' }, 'Drop a .wasm plugin here to install it, or ', file);
  let uploads = 0;
  async function upload(blob, filename) {
    const name = filename.replace(/\.wasm$/, '');
    uploads++;
    refresh();
    try {
      const info = await call(`/plugins/${enc(name)}`, { method: 'PUT', raw: blob, admin: true });
      report(`Installed ${info.name} ${info.version}`);
    } catch (error) { report(`Uploading ${filename}: ${error.message}`, true); }
    uploads--;
    refresh();
  }
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault(); drop.classList.remove('over');
    for (const f of e.dataTransfer.files) upload(f, f.name);
  });
  file.addEventListener('change', () => { for (const f of file.files) upload(f, f.name); file.value = ''; });
  // Polls every second, four times as often while an upload or a plugin is on its way to live.
  let timer = null, stopped = false;
  async function refresh() {
    clearTimeout(timer);
    let busy = false;
    try {
      const plugins = await call('/plugins');
      // A file still loading has no name, kind or hash yet: only where it came from.
      fill(table, plugins.map((info) => (info.origin === undefined ? plugin(info, refresh, report) : loading(info))));
      busy = uploads > 0 || plugins.some((p) => p.status.status !== 'live' || (p.pending && p.pending.status.status !== 'live'));
    } catch (error) { report(error.message, true); }
    // Another refresh may have run meanwhile: one timer at a time.
    clearTimeout(timer);
    if (!stopped) timer = setTimeout(refresh, busy ? 250 : 1000);
  }
  fill(main, h('h1', {}, 'Plugins'),
    h('table', { id: 'plugins' },
      h('thead', {}, h('tr', {}, ['Name', 'Kind', 'Version', 'Hash', 'Status', 'Pending', 'Last error', 'Parked', ''].map((t) => h('th', {}, t)))),
      table),
    message, drop, parked);
  await refresh();
  if (args[1] === 'parked') {
    // Caught here: a render that throws returns no stop function, and the polling would go on.
    try { fill(parked, await parkedList(args[0])); } catch (error) { fill(parked, h('p', { class: 'error' }, error.message)); }
  }
  return () => { stopped = true; clearTimeout(timer); };
}
