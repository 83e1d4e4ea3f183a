// API: the OpenAPI document of this server, browsable by path.
import { h, fill } from './dom.js';
import { call } from './api.js';

export async function render(main) {
  const doc = await call('/openapi.json');
  const ops = Object.entries(doc.paths).flatMap(([path, item]) =>
    Object.entries(item).filter(([m]) => m !== 'parameters').map(([method, op]) => ({ path, method, op })));
  fill(main, h('h1', {}, `${doc.info.title} API ${doc.info.version}`),
    h('p', {}, 'OpenAPI ', doc.openapi, ': ', h('a', { href: '/openapi.json' }, '/openapi.json')),
    ops.map(({ path, method, op }) => h('details', { class: 'card' },
      h('summary', {}, h('strong', { class: 'mono' }, method.toUpperCase()), ' ', h('span', { class: 'mono' }, path),
        h('span', { class: 'muted' }, ` ${(op.description || op.summary || '').split('\n')[0]}`)),
      h('pre', {}, JSON.stringify(op, null, 2)))));
}
