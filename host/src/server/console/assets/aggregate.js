// Aggregate: an aggregate's state now or at any past version (the slider), and a command form
// that shows the new state, or the reason the plugin refused it (422).
import { h, fill, jsonTree } from './dom.js';
import { call, enc } from './api.js';

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
  const slider = h('input', { type: 'range', class: 'slider', id: 'version-slider', min: 1, max: 1, value: 1 });
  const error = h('p', { class: 'error', id: 'aggregate-error' });
  let head = 0;
  async function show(version) {
    try {
      const query = version && version < head ? `?at_version=${version}` : '';
      const answer = await call(base + query);
      versionLabel.textContent = version && version < head ? `version ${answer.version} of ${head}` : `version ${answer.version} (current)`;
      fill(stateView, jsonTree(answer.state));
      error.textContent = '';
      return answer;
    } catch (e) {
      error.textContent = e.message;
      fill(stateView);
      return null;
    }
  }
  async function current() {
    const answer = await show();
    head = answer ? answer.version : 0;
    slider.max = Math.max(head, 1);
    slider.value = head;
    slider.disabled = head < 2;
  }
  slider.addEventListener('input', () => show(Number(slider.value)));
  const type = h('input', { id: 'command-type', placeholder: 'command type', required: true });
  const data = h('textarea', { id: 'command-data', placeholder: '{"amount": 10}' });
  const outcome = h('div', { id: 'command-outcome' });
  const form = h('form', { id: 'command-form', onsubmit: async (e) => {
    e.preventDefault();
    let body;
    try { body = { type: type.value, data: data.value.trim() ? JSON.parse(data.value) : null }; } catch (err) {
      fill(outcome, h('p', { class: 'error' }, `The data is not JSON: ${err.message}`)); return;
    }
    try {
      const result = await call(`${base}/commands`, { method: 'POST', body });
      fill(outcome, h('p', { class: 'ok' }, `Accepted: version ${result.version}, ${result.events.length} event(s)`));
      await current();
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
  await current();
}
