// Aggregate: an aggregate's state now or at any past version (the slider), and a command form
// that shows the new state, or the reason the plugin refused it (422).
import { h, fill, jsonTree } from './dom.js';
import { call, callText, enc } from './api.js';
import { member, parse, scalar, source } from './json.js';

function picker(main, plugins) {
  const plugin = h('select', { id: 'aggregate-plugin' }, plugins.map((p) => h('option', { value: p.name }, p.name)));
  const id = h('input', { id: 'aggregate-id', placeholder: 'id', required: true });
  fill(main, h('h1', {}, 'Aggregate'),
    plugins.length ? h('form', { class: 'inline', onsubmit: (e) => {
      e.preventDefault(); location.hash = `#/aggregate/${enc(plugin.value)}/${enc(id.value)}`;
    } }, plugin, id, h('button', {}, 'Open')) : h('p', { class: 'muted' }, 'No aggregate plugin is loaded.'));
}

export async function render(main, { args: [pluginName, id] }) {
  if (!pluginName || !id) {
    const plugins = (await call('/plugins')).filter((p) => p.kind === 'aggregate');
    return picker(main, plugins);
  }
  const base = `/aggregates/${enc(pluginName)}/${enc(id)}`;
  const stateView = h('div', { id: 'aggregate-state' });
  const versionLabel = h('span', { id: 'aggregate-version' });
  const slider = h('input', { type: 'range', class: 'slider', id: 'version-slider', min: 1, max: 1, value: 1, disabled: true });
  const error = h('p', { class: 'error', id: 'aggregate-error' });
  let head = 0, pending = null, settle = null;
  /**
   * Shows the state at `version`, or now (which moves the slider to the head). A request
   * still running is aborted, and its answer, should it come, dropped: what shows is the
   * answer to the last request, the slider's version.
   */
  async function show(version) {
    if (pending) pending.abort();
    const request = new AbortController();
    pending = request;
    const past = version !== undefined && version < head;
    try {
      const text = await callText(base + (past ? `?at_version=${version}` : ''), { signal: request.signal });
      if (request !== pending) return;
      const answer = parse(text, { maxDepth: 1 });
      const shown = scalar(text, member(answer, 'version'));
      if (!past) {
        head = shown;
        slider.max = Math.max(head, 1);
        slider.value = head;
        slider.disabled = head < 2;
      }
      versionLabel.textContent = past ? `version ${shown} of ${head}` : `version ${shown} (current)`;
      fill(stateView, jsonTree(source(text, member(answer, 'state'))));
      error.textContent = '';
    } catch (e) {
      if (request !== pending) return;
      if (!past) { head = 0; slider.disabled = true; }
      error.textContent = e.message;
      fill(stateView);
    }
  }
  // A past state is rebuilt from the log: one request once the slider rests, not one for
  // each step of a drag (the host rebuilds only a few at once).
  slider.addEventListener('input', () => {
    clearTimeout(settle);
    settle = setTimeout(() => show(Number(slider.value)), 150);
  });
  const type = h('input', { id: 'command-type', placeholder: 'command type', required: true });
  const data = h('textarea', { id: 'command-data', placeholder: '{"amount": 10}' });
  const outcome = h('div', { id: 'command-outcome' });
  const form = h('form', { id: 'command-form', onsubmit: async (e) => {
    e.preventDefault();
    // The data goes as typed: large numbers and key order reach the plugin unchanged.
    const text = data.value.trim() || 'null';
    try { JSON.parse(text); } catch (err) {
      fill(outcome, h('p', { class: 'error' }, `The data is not JSON: ${err.message}`)); return;
    }
    try {
      const json = `{"type": ${JSON.stringify(type.value)}, "data": ${text}}`;
      const result = await call(`${base}/commands`, { method: 'POST', json });
      fill(outcome, h('p', { class: 'ok' }, `Accepted: version ${result.version}, ${result.events.length} event(s)`));
      await show();
    } catch (err) {
      const reason = err.body && err.body.reason;
      fill(outcome, h('p', { class: 'error', id: 'command-refused' },
        `${err.status === 422 ? 'Refused' : 'Failed'} (${err.status}): ${reason || err.message}`));
    }
  } }, h('div', { class: 'inline toolbar' }, type, h('button', {}, 'Send')), data);
  fill(main, h('h1', {}, 'Aggregate ', h('span', { class: 'mono' }, `${pluginName} / ${id}`)),
    h('p', {}, h('a', { href: `#/stream/${enc(`${pluginName}-${id}`)}` }, 'Its stream')),
    h('h2', {}, 'State ', versionLabel), slider, stateView, error,
    h('h2', {}, 'Send a command'), form, outcome);
  await show();
  return () => { clearTimeout(settle); if (pending) pending.abort(); };
}
