// The console's router: `#/page/args…` picks a page module, which renders into <main>.
import { h, fill } from './dom.js';
import { showTokenState } from './api.js';

const PAGES = {
  '': 'overview', plugins: 'plugins', streams: 'streams', stream: 'streams',
  aggregate: 'aggregate', projection: 'projection', tail: 'tail', api: 'openapi',
};

let stopCurrent = () => {};

async function route() {
  const [name = '', ...args] = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const module = PAGES[name] ?? 'overview';
  for (const link of document.querySelectorAll('nav a')) {
    link.classList.toggle('active', link.dataset.page === (name === 'stream' ? 'streams' : module === 'openapi' ? 'api' : module));
  }
  stopCurrent();
  stopCurrent = () => {};
  const main = document.getElementById('page');
  try {
    const page = await import(`./${module}.js`);
    const stop = await page.render(main, { name, args });
    if (typeof stop === 'function') stopCurrent = stop;
  } catch (error) {
    fill(main, h('p', { class: 'error' }, String(error.message || error)));
  }
}

window.addEventListener('hashchange', route);
showTokenState();
route();
