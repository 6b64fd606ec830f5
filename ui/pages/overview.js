// The overview: queues, running tasks, throttle scopes, the last hour's
// operations as a chart, and failures that need someone.

import { api, optional } from '../api.js';
import { h, s, clear, badge, table, time, duration, shortId, section, between } from '../dom.js';
import { watch } from '../live.js';
import { operationColumns } from './resources.js';

const CHART_STATES = ['succeeded', 'failed', 'cancelled', 'running', 'scheduled'];

function chart(data) {
  const { since, bucket_secs: bucket, buckets } = data;
  const n = Math.round(3600 / bucket) + 1;
  const start = new Date(since).getTime();
  const columns = Array.from({ length: n }, (_, i) => {
    const at = start + i * bucket * 1000;
    const found = buckets.find((b) => new Date(b.start).getTime() === at);
    return { at, counts: found ? found.counts : {} };
  });
  const totals = columns.map((c) => Object.values(c.counts).reduce((a, b) => a + b, 0));
  const max = Math.max(1, ...totals);
  const W = 600; const H = 150; const pad = 22; const gap = 6;
  const bw = (W - pad) / n - gap;
  const bars = columns.map((c, i) => {
    let y = H - 18;
    const x = pad + i * (bw + gap);
    const label = `${new Date(c.at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}: ${totals[i]} operations${totals[i] ? ` (${Object.entries(c.counts).map(([k, v]) => `${v} ${k}`).join(', ')})` : ''}`;
    return s('g', { class: 'col' },
      s('title', null, label),
      s('rect', { x, y: 0, width: bw, height: H - 18, class: 'hit' }),
      CHART_STATES.filter((st) => c.counts[st]).map((st) => {
        const bh = Math.max(2, (c.counts[st] / max) * (H - 30));
        y -= bh;
        return s('rect', { x, y, width: bw, height: bh, rx: 2, class: `st-${st}` });
      }),
      i % 3 === 0 ? s('text', { x: x + bw / 2, y: H - 4, 'text-anchor': 'middle', class: 'axis' }, new Date(c.at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })) : null);
  });
  const total = totals.reduce((a, b) => a + b, 0);
  const sums = {};
  for (const c of columns) for (const [k, v] of Object.entries(c.counts)) sums[k] = (sums[k] || 0) + v;
  return h('figure', { class: 'chart' },
    s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `Operations per 5 minutes over the last hour: ${total} in all` },
      s('text', { x: 0, y: 10, class: 'axis' }, String(max)),
      s('line', { x1: pad - 4, x2: W, y1: H - 18, y2: H - 18, class: 'base' }),
      bars),
    h('figcaption', { class: 'legend' }, CHART_STATES.map((st) => h('span', { class: 'key' }, h('i', { class: `sw st-${st}` }), `${st} ${sums[st] || 0}`))));
}

/** /ui */
export async function overviewPage({ main, signal, session }) {
  const admin = session.me && session.me.role === 'admin';
  const stats = h('div', { class: 'stats' });
  const queues = h('div');
  const running = h('div');
  const throttles = h('div');
  const chartBox = h('div');
  const attention = h('div');
  clear(main, h('h1', null, 'Overview'), stats,
    h('div', { class: 'grid' },
      section('Operations, last hour', chartBox),
      section('Queues', queues),
      section('Needs attention', attention),
      section('Throttle scopes', throttles)),
    section('Running tasks', running));

  const load = async () => {
    const [o, failed] = await Promise.all([
      api('/system/overview', { signal }),
      optional('/operations?state=failed&limit=10', { signal }),
    ]);
    const backlog = o.queues.reduce((a, q) => a + q.ready, 0);
    const oldest = Math.max(0, ...o.queues.map((q) => q.oldest_ready_age_ms));
    const hour = {};
    for (const b of o.operations_last_hour.buckets) for (const [k, v] of Object.entries(b.counts)) hour[k] = (hour[k] || 0) + v;
    clear(stats,
      stat('Backlog', String(backlog), oldest ? `oldest ${duration(oldest)}` : 'no wait'),
      stat('Running tasks', String(o.running_tasks.length)),
      stat('Throttle waiters', String(o.throttle_scopes.reduce((a, t) => a + t.waiting, 0))),
      stat('Failed, last hour', String(hour.failed || 0), null, hour.failed ? 'bad' : null));
    clear(chartBox, chart(o.operations_last_hour));
    clear(queues, table(o.queues, [
      { label: 'Queue', cell: (q) => q.queue },
      { label: 'Ready', cell: (q) => String(q.ready) },
      { label: 'Later', cell: (q) => String(q.scheduled) },
      { label: 'Running', cell: (q) => String(q.running) },
      { label: 'Oldest wait', cell: (q) => (q.ready ? duration(q.oldest_ready_age_ms) : '—') },
    ], { caption: 'Queues' }));
    clear(running, table(o.running_tasks, [
      { label: 'Task', cell: (t) => (t.operation_id ? h('a', { href: `/ui/operations/${t.operation_id}` }, t.step || t.type.replaceAll('_', ' ')) : `job ${t.job}`) },
      { label: 'Resource', cell: (t) => (t.resource_id ? h('a', { href: `/ui/resources/${t.resource_id}` }, `${t.resource_kind} ${shortId(t.resource_id)}`) : '—') },
      { label: 'Queue', cell: (t) => t.queue },
      { label: 'For', cell: (t) => duration(between(t.started_at, null)) },
      { label: 'Attempts', cell: (t) => String(t.attempts) },
      { label: 'Status', class: 'wrap', cell: (t) => t.status || '' },
    ], { empty: 'Nothing is running.', caption: 'Running tasks' }));
    clear(throttles, table(o.throttle_scopes, [
      { label: 'Scope', cell: (t) => [t.name, admin && t.tenant ? h('span', { class: 'muted' }, ` (${t.tenant})`) : null] },
      { label: 'In use', cell: (t) => h('span', { class: 'meter' }, h('meter', { min: 0, max: t.limit, value: t.in_use, 'aria-label': `${t.in_use} of ${t.limit} slots in use` }), ` ${t.in_use}/${t.limit}`) },
      { label: 'Waiting', cell: (t) => String(t.waiting) },
      { label: 'Longest wait', cell: (t) => (t.oldest_waiting_since ? duration(between(t.oldest_waiting_since, null)) : '—') },
    ], { empty: 'No throttle slot is in use.', caption: 'Throttle scopes' }));
    if (failed !== undefined) {
      clear(attention, table(failed.items, operationColumns(), { empty: 'No failed operations.', caption: 'Failed operations' }),
        failed.items.length ? h('p', null, h('a', { href: '/ui/operations?state=failed' }, 'All failed operations')) : null);
    } else {
      const erred = await api('/resources?state=erred&limit=10', { signal });
      clear(attention, table(erred.items, [
        { label: 'Resource', cell: (r) => h('a', { href: `/ui/resources/${r.id}` }, r.name) },
        { label: 'Kind', cell: (r) => r.kind },
        { label: 'Since', cell: (r) => time(r.updated_at) },
        { label: 'Error', class: 'wrap', cell: (r) => h('span', { class: 'error-text' }, r.error_message || '') },
      ], { empty: 'No resource is in error.', caption: 'Resources in error' }),
      erred.items.length ? h('p', null, h('a', { href: '/ui/resources?state=erred' }, 'All resources in error')) : null);
    }
  };
  await load();
  watch(signal, load, { match: (ev) => ev.type.startsWith('operation.'), busy: () => false });
}

function stat(label, value, note, tone) {
  return h('div', { class: `stat ${tone || ''}` }, h('div', { class: 'stat-label' }, label), h('div', { class: 'stat-value' }, value), note ? h('div', { class: 'muted small' }, note) : null);
}
