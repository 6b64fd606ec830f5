// The resource list (filters in the URL, live states) and the fleet's
// operation list.

import { api, optional } from '../api.js';
import { h, clear, badge, table, time, shortId, between, duration } from '../dom.js';
import { watch } from '../live.js';

const STATES = ['creation_scheduled', 'creating', 'update_scheduled', 'updating', 'deletion_scheduled', 'deleting', 'ok', 'erred'];
const OP_STATES = ['scheduled', 'running', 'compensating', 'succeeded', 'failed', 'cancelled'];

function select(id, labelText, options, value) {
  return h('div', { class: 'field inline' },
    h('label', { for: id }, labelText),
    h('select', { id, name: id }, h('option', { value: '' }, 'any'), options.map((o) => h('option', { value: o, selected: o === value }, o.replaceAll('_', ' ')))));
}

/** /ui/resources?kind=&state=&q=&parent= */
export async function resourcesPage({ main, query, signal, session }) {
  const kinds = await session.getKinds();
  const filters = { kind: query.get('kind') || '', state: query.get('state') || '', q: query.get('q') || '', parent: query.get('parent') || '' };
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter resources' },
    select('kind', 'Kind', kinds.map((k) => k.name), filters.kind),
    select('state', 'State', STATES, filters.state),
    h('div', { class: 'field inline grow' }, h('label', { for: 'q' }, 'Name'), h('input', { id: 'q', name: 'q', type: 'search', value: filters.q, placeholder: 'contains…', autocomplete: 'off' })),
    h('div', { class: 'field inline' }, h('label', { for: 'parent' }, 'Parent id'), h('input', { id: 'parent', name: 'parent', type: 'text', value: filters.parent, placeholder: 'any', autocomplete: 'off', spellcheck: 'false' })));
  const results = h('div', { 'aria-live': 'polite' });
  const more = h('div');
  const newButtons = session.canWrite()
    ? h('div', { class: 'actions' }, kinds.map((k) => h('a', { class: 'button primary', href: `/ui/kinds/${encodeURIComponent(k.name)}/new` }, `New ${k.name}`)))
    : null;
  clear(main, h('div', { class: 'page-head' }, h('h1', null, 'Resources'), newButtons), form, results, more);

  let limit = 100;
  const load = async () => {
    const params = new URLSearchParams({ limit: String(limit) });
    if (filters.kind) params.set('kind', filters.kind);
    if (filters.state) params.set('state', filters.state);
    if (filters.parent) params.set('parent_id', filters.parent);
    const page = await api(`/resources?${params}`, { signal });
    const q = filters.q.toLowerCase();
    const items = page.items.filter((r) => (!q || r.name.toLowerCase().includes(q))
      && (!filters.parent || r.parent_id === undefined || r.parent_id === filters.parent));
    const hasParents = items.some((r) => r.parent_id);
    clear(results, table(items, [
      { label: 'Name', cell: (r) => h('a', { href: `/ui/resources/${r.id}` }, r.name) },
      { label: 'Kind', cell: (r) => r.kind },
      { label: 'State', cell: (r) => badge(r.state) },
      { label: 'Runtime', cell: (r) => r.runtime_state || h('span', { class: 'muted' }, '—') },
      hasParents ? { label: 'Parent', cell: (r) => (r.parent_id ? h('a', { href: `/ui/resources/${r.parent_id}` }, shortId(r.parent_id)) : '—') } : null,
      { label: 'Updated', cell: (r) => time(r.updated_at) },
    ].filter(Boolean), { empty: 'No resources match.', caption: 'Resources' }));
    clear(more, page.next_cursor ? h('button', { type: 'button', onclick: () => { limit = Math.min(limit + 100, 500); load(); } }, 'Show more') : null);
  };
  const apply = () => {
    const data = new FormData(form);
    for (const key of Object.keys(filters)) filters[key] = String(data.get(key) || '').trim();
    const qs = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    history.replaceState(null, '', `/ui/resources${qs.toString() ? `?${qs}` : ''}`);
    load();
  };
  form.addEventListener('change', apply);
  let typing;
  form.addEventListener('input', (e) => { if (e.target.name === 'q') { clearTimeout(typing); typing = setTimeout(apply, 250); } });
  form.addEventListener('submit', (e) => { e.preventDefault(); apply(); });
  await load();
  watch(signal, load, { match: (ev) => ev.type.startsWith('resource.') || ev.type.startsWith('operation.') });
}

export function operationTitle(op) {
  return op.kind === 'action' ? `${op.action}` : op.kind;
}

export function operationColumns({ withResource = true } = {}) {
  return [
    { label: 'Operation', cell: (o) => h('a', { href: `/ui/operations/${o.id}` }, operationTitle(o), h('span', { class: 'muted' }, ` ${shortId(o.id)}`)) },
    withResource ? { label: 'Resource', cell: (o) => h('a', { href: `/ui/resources/${o.resource_id}` }, `${o.resource_kind} ${shortId(o.resource_id)}`) } : null,
    { label: 'State', cell: (o) => badge(o.state) },
    { label: 'Steps', cell: (o) => `${o.steps_done}/${o.step_count}` },
    { label: 'Created', cell: (o) => time(o.created_at) },
    { label: 'Took', cell: (o) => duration(between(o.started_at || o.created_at, o.finished_at)) },
    { label: 'Error', class: 'wrap', cell: (o) => (o.error ? h('span', { class: 'error-text' }, o.error) : '') },
  ].filter(Boolean);
}

/** /ui/operations?state=&kind= — needs the fleet list (GET /api/v1/operations). */
export async function operationsPage({ main, query, signal }) {
  const filters = { state: query.get('state') || '' };
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter operations' }, select('op-state', 'State', OP_STATES, filters.state));
  const results = h('div', { 'aria-live': 'polite' });
  clear(main, h('h1', null, 'Operations'), form, results);
  const load = async () => {
    const params = new URLSearchParams({ limit: '100' });
    if (filters.state) params.set('state', filters.state);
    const page = await optional(`/operations?${params}`, { signal });
    if (page === undefined) {
      clear(results, h('p', { class: 'empty' }, 'This server does not list operations across resources yet; open a resource to see its operations.'));
      return false;
    }
    clear(results, table(page.items, operationColumns(), { empty: 'No operations match.', caption: 'Operations' }));
    return true;
  };
  form.addEventListener('change', () => {
    filters.state = form.querySelector('select').value;
    history.replaceState(null, '', `/ui/operations${filters.state ? `?state=${filters.state}` : ''}`);
    load();
  });
  if (await load()) watch(signal, load, { match: (ev) => ev.type.startsWith('operation.') });
}
