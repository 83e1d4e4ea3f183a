// Projection: its state as a collapsible JSON tree, and its named queries run with arguments.
import { h, fill, jsonTree, number } from './dom.js';
import { call, callText, enc } from './api.js';
import { member, parse, scalar, source } from './json.js';

export async function render(main, { args: [name] }) {
  if (!name) {
    const plugins = (await call('/plugins')).filter((p) => p.kind === 'projection');
    fill(main, h('h1', {}, 'Projections'),
      plugins.length ? h('ul', {}, plugins.map((p) => h('li', {}, h('a', { href: `#/projection/${enc(p.name)}` }, p.name))))
        : h('p', { class: 'muted' }, 'No projection plugin is loaded.'));
    return;
  }
  const header = h('p', { id: 'projection-status' });
  const tree = h('div', { id: 'projection-state' });
  const queryName = h('input', { id: 'query-name', placeholder: 'query name', required: true });
  const queryArgs = h('input', { id: 'query-args', placeholder: 'owner=alice&n=3', size: 40 });
  const answer = h('div', { id: 'query-answer' });
  async function load() {
    const text = await callText(`/projections/${enc(name)}`);
    const projection = parse(text, { maxDepth: 1 });
    const status = JSON.parse(source(text, member(projection, 'status')));
    fill(header, h('span', { class: `status ${status.status}` }, status.status),
      ` at position ${number(scalar(text, member(projection, 'position')))}`);
    fill(tree, jsonTree(source(text, member(projection, 'state'))));
  }
  const form = h('form', { class: 'inline', id: 'query-form', onsubmit: async (e) => {
    e.preventDefault();
    try {
      fill(answer, jsonTree(await callText(`/projections/${enc(name)}/query/${enc(queryName.value)}?${queryArgs.value}`)));
    } catch (err) {
      fill(answer, h('p', { class: 'error' }, `(${err.status}) ${(err.body && err.body.reason) || err.message}`));
    }
  } }, queryName, queryArgs, h('button', {}, 'Run'));
  fill(main, h('h1', {}, 'Projection ', h('span', { class: 'mono' }, name)), header,
    h('div', { class: 'toolbar' }, h('button', { onclick: load }, 'Refresh')),
    h('h2', {}, 'State'), tree,
    h('h2', {}, 'Query'), h('p', { class: 'muted' }, 'Arguments are a query string; each value is read as JSON when it parses, else as text.'),
    form, answer);
  await load();
}
