// The console's router: `#/page/args…` picks a page module, which renders into <main>.
import { h, fill } from './dom.js';
import { showTokenState } from './api.js';

const PAGES = {
  '': 'overview', plugins: 'plugins', streams: 'streams', stream: 'streams',
  aggregate: 'aggregate', projection: 'projection', tail: 'tail', api: 'openapi',
};

// Each visit has a number; only the latest one's page is current. A page's render may still
// be running when the next visit starts: it then fills an element no longer shown, and the
// stop function it returns (its timers, its live feed) is called at once.
let visits = 0;
let stopCurrent = () => {};

async function route() {
  const visit = ++visits;
  const [name = '', ...args] = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const module = PAGES[name] ?? 'overview';
  for (const link of document.querySelectorAll('nav a')) {
    link.classList.toggle('active', link.dataset.page === (name === 'stream' ? 'streams' : module === 'openapi' ? 'api' : module));
  }
  stopCurrent();
  stopCurrent = () => {};
  const view = h('div');
  fill(document.getElementById('page'), view);
  try {
    const page = await import(`./${module}.js`);
    const stop = await page.render(view, { name, args });
    if (typeof stop !== 'function') return;
    if (visit === visits) stopCurrent = stop; else stop();
  } catch (error) {
    fill(view, h('p', { class: 'error' }, String(error.message || error)));
  }
}

window.addEventListener('hashchange', route);
showTokenState();
route();
