// Overview: the journal head, live appends/s and commands/s, p99 command latency, backend,
// uptime and version. Counters come from /stats and /metrics, sampled every second.
import { h, fill, number } from './dom.js';
import { call } from './api.js';

const POINTS = 120;

/** Sums of the command latency histogram from the Prometheus text: count and buckets. */
export function commandHistogram(text) {
  const buckets = new Map();
  let count = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('foldhost_command_seconds_bucket{')) {
      const le = line.match(/le="([^"]+)"/)[1];
      const value = Number(line.slice(line.lastIndexOf(' ') + 1));
      buckets.set(le, (buckets.get(le) || 0) + value);
    } else if (line.startsWith('foldhost_command_seconds_count')) {
      count += Number(line.slice(line.lastIndexOf(' ') + 1));
    }
  }
  return { count, buckets: [...buckets].map(([le, n]) => [le === '+Inf' ? Infinity : Number(le), n]).sort((a, b) => a[0] - b[0]) };
}

/** The 0.99 quantile between two histogram samples, interpolated like Prometheus does. */
export function p99(before, after) {
  const total = after.count - before.count;
  if (total <= 0) return null;
  const old = new Map(before.buckets);
  let lower = 0, below = 0;
  for (const [le, n] of after.buckets) {
    const inBucket = n - (old.get(le) || 0);
    if (inBucket >= 0.99 * total) {
      if (le === Infinity) return lower;
      const share = (0.99 * total - below) / Math.max(inBucket - below, 1);
      return lower + (le - lower) * Math.min(Math.max(share, 0), 1);
    }
    lower = le; below = inBucket;
  }
  return lower;
}

function draw(canvas, series) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio; canvas.height = height * ratio;
  const g = canvas.getContext('2d');
  g.scale(ratio, ratio);
  const max = Math.max(1, ...series.flatMap((s) => s.points));
  g.strokeStyle = '#e4e4de'; g.fillStyle = '#6b6b66'; g.font = '11px system-ui';
  for (const f of [0, 0.5, 1]) {
    const y = 8 + (height - 16) * (1 - f);
    g.beginPath(); g.moveTo(40, y); g.lineTo(width, y); g.stroke();
    g.fillText(number(max * f, 1), 2, y + 4);
  }
  for (const { points, color } of series) {
    g.strokeStyle = color; g.lineWidth = 1.5; g.beginPath();
    points.forEach((v, i) => {
      const x = 40 + (width - 44) * (i / (POINTS - 1));
      const y = 8 + (height - 16) * (1 - v / max);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  }
}

function uptime(seconds) {
  const d = Math.floor(seconds / 86400), hh = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  return d ? `${d}d ${hh}h` : hh ? `${hh}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}

export async function render(main) {
  const value = (id) => h('div', { class: 'value', id });
  const card = (label, id) => h('div', { class: 'card' }, h('div', { class: 'label' }, label), value(id));
  const canvas = h('canvas', { class: 'chart' });
  fill(main,
    h('h1', {}, 'Overview'),
    h('div', { class: 'cards' },
      card('Journal head', 'head'), card('Appends/s', 'appends-rate'), card('Commands/s', 'commands-rate'),
      card('p99 command latency', 'p99'), card('Backend', 'backend'), card('Uptime', 'uptime'), card('Version', 'version')),
    h('h2', {}, 'Throughput, last two minutes'),
    h('div', { class: 'legend' }, h('span', { class: 'appends' }, '— appends/s'), h('span', { class: 'commands' }, '— commands/s')),
    canvas,
    h('p', { class: 'error', id: 'overview-error' }));
  const appends = Array(POINTS).fill(0), commands = Array(POINTS).fill(0);
  let previous = null;
  let lastP99 = null;
  const set = (id, text) => { const el = main.querySelector(`#${id}`); if (el) el.textContent = text; };
  async function sample() {
    try {
      const [stats, metrics] = await Promise.all([
        call('/stats'),
        fetch('/metrics').then((r) => (r.ok ? r.text() : '')),
      ]);
      const histogram = commandHistogram(metrics);
      const now = performance.now();
      set('head', number(stats.head_position));
      set('backend', stats.backend === 'postgres' ? 'PostgreSQL' : 'redb');
      set('uptime', uptime(stats.uptime_seconds));
      set('version', stats.version);
      if (previous) {
        const seconds = (now - previous.at) / 1000;
        appends.push((stats.appends - previous.appends) / seconds); appends.shift();
        commands.push((histogram.count - previous.histogram.count) / seconds); commands.shift();
        const q = p99(previous.window, histogram);
        if (q !== null) lastP99 = q;
      }
      set('appends-rate', number(appends[POINTS - 1], 1));
      set('commands-rate', number(commands[POINTS - 1], 1));
      set('p99', lastP99 === null ? '–' : `${number(lastP99 * 1000, 2)} ms`);
      // p99 over the last 30 s: keep the histogram of 30 samples ago as the window's start.
      const window = previous && previous.history.length >= 30 ? previous.history[0] : previous ? previous.window : histogram;
      const history = previous ? [...previous.history, histogram].slice(-30) : [histogram];
      previous = { at: now, appends: stats.appends, histogram, window, history };
      set('overview-error', stats.fault ? `Storage fault: ${stats.fault}` : '');
      draw(canvas, [{ points: appends, color: '#2456a6' }, { points: commands, color: '#c2410c' }]);
    } catch (error) {
      set('overview-error', error.message);
    }
  }
  await sample();
  const timer = setInterval(sample, 1000);
  return () => clearInterval(timer);
}
