// One resource: its state, attributes, status, children, operations, and the
// timeline of its history; buttons for edit, delete and its actions.

import { api, ApiError } from '../api.js';
import { h, clear, badge, dl, json, section, table, time, shortId, isBusyResource, confirmDialog, toast, errorBox } from '../dom.js';
import { watch } from '../live.js';
import { operationColumns } from './resources.js';
import { actionAllowed, actionHasParams } from './forms.js';

function timeline(events) {
  if (!events.length) return h('p', { class: 'empty' }, 'No history.');
  return h('ol', { class: 'timeline' }, [...events].reverse().map((e) => {
    const tone = e.to_state === 'erred' ? 'bad' : e.to_state === 'ok' ? 'good' : e.to_state ? 'busy' : 'quiet';
    return h('li', { class: `tl ${tone}` },
      h('div', { class: 'tl-head' },
        h('strong', null, e.transition.replaceAll('_', ' ')), ' ',
        e.from_state ? badge(e.from_state) : null, e.from_state && e.to_state ? ' → ' : null, e.to_state ? badge(e.to_state) : h('span', { class: 'muted' }, 'removed'),
        ' ', h('span', { class: 'muted' }, time(e.created_at))),
      e.reason ? h('p', { class: 'reason' }, e.reason) : null,
      e.operation_id ? h('p', { class: 'muted small' }, 'by operation ', h('a', { href: `/ui/operations/${e.operation_id}` }, shortId(e.operation_id))) : null);
  }));
}

/** /ui/resources/{id} */
export async function resourcePage({ main, params: [id], signal, session, navigate }) {
  const kinds = await session.getKinds();
  const head = h('div');
  const body = h('div', { class: 'grid' });
  const history = h('div');
  const ops = h('div');
  clear(main, head, body,
    section('Operations', ops),
    section('History', history));

  let resource = null;
  let deleted = false;

  const buttons = (r, kind) => {
    if (!session.canWrite() || deleted) return null;
    const busy = Boolean(r.current_operation_id) && isBusyResource(r.state);
    const list = [];
    for (const action of kind?.actions || []) {
      const why = busy ? 'an operation is in flight' : actionAllowed(action, r);
      const props = { type: 'button', disabled: Boolean(why), title: why ? `${action.name}: ${why}` : action.description, dataset: { action: action.name } };
      if (actionHasParams(action)) {
        list.push(h('button', { ...props, onclick: () => navigate(`/ui/resources/${r.id}/actions/${encodeURIComponent(action.name)}`) }, `${action.name}…`));
      } else {
        list.push(h('button', { ...props, onclick: async (e) => {
          e.target.disabled = true;
          try {
            const op = await api(`/resources/${r.id}/actions/${encodeURIComponent(action.name)}`, { method: 'POST', body: {} });
            toast(`${action.name} started`);
            navigate(`/ui/operations/${op.id}`);
          } catch (err) {
            toast(err.message, 'bad');
            e.target.disabled = false;
          }
        } }, action.name));
      }
    }
    if (kind?.updatable?.length) list.push(h('a', { class: 'button', href: `/ui/resources/${r.id}/edit` }, 'Edit'));
    list.push(h('button', { type: 'button', class: 'danger', disabled: busy, title: busy ? 'an operation is in flight' : 'Delete this resource', onclick: async () => {
      if (!(await confirmDialog(`Delete ${r.name}?`, 'Delete'))) return;
      try {
        const op = await api(`/resources/${r.id}`, { method: 'DELETE' });
        navigate(`/ui/operations/${op.id}`);
      } catch (err) { toast(err.message, 'bad'); }
    } }, 'Delete'));
    return h('div', { class: 'actions', role: 'group', 'aria-label': 'Resource actions' }, list);
  };

  const load = async () => {
    let r;
    try {
      r = await api(`/resources/${id}`, { signal });
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) throw e;
      deleted = true;
    }
    const [events, operations] = await Promise.all([
      api(`/resources/${id}/events?limit=500`, { signal }).catch((e) => { if (deleted) throw e; return { items: [] }; }),
      api(`/resources/${id}/operations?limit=50`, { signal }).catch(() => ({ items: [] })),
    ]);
    clear(history, timeline(events.items));
    clear(ops, table(operations.items, operationColumns({ withResource: false }), { empty: 'No operations.', caption: 'Operations' }));
    if (deleted) {
      clear(head, h('div', { class: 'page-head' }, h('h1', null, `Resource ${shortId(id)}`), badge('deleted')),
        h('p', { class: 'muted' }, 'This resource has been deleted; its history and operations remain.'));
      clear(body);
      return;
    }
    resource = r;
    const kind = kinds.find((k) => k.name === r.kind);
    clear(head,
      h('p', { class: 'crumbs' }, h('a', { href: '/ui/resources' }, 'Resources'), ' / ', r.kind),
      h('div', { class: 'page-head' },
        h('h1', null, r.name, ' ', h('span', { id: 'resource-state' }, badge(r.state))),
        buttons(r, kind)),
      r.error_message ? h('div', { class: 'alert bad', role: 'alert' }, h('strong', null, 'Error: '), r.error_message) : null,
      r.current_operation_id && isBusyResource(r.state)
        ? h('div', { class: 'alert busy' }, `${r.action ? `${r.action} ` : ''}in progress: `, h('a', { href: `/ui/operations/${r.current_operation_id}` }, 'follow the operation'))
        : null);
    clear(body,
      section('Details', dl([
        ['Id', h('code', null, r.id)],
        ['Kind', r.kind],
        ['State', badge(r.state)],
        ['Runtime state', r.runtime_state ? h('span', { id: 'runtime-state' }, r.runtime_state) : null],
        ['Backend id', r.backend_id ? h('code', null, r.backend_id) : null],
        r.parent_id ? ['Parent', h('a', { href: `/ui/resources/${r.parent_id}` }, shortId(r.parent_id))] : null,
        ['Version', String(r.version)],
        ['Created', time(r.created_at)],
        ['Updated', time(r.updated_at)],
      ])),
      section('Attributes', json(r.attributes)),
      section('Status', Object.keys(r.status || {}).length ? json(r.status) : h('p', { class: 'empty' }, 'The backend has reported nothing yet.')),
      Array.isArray(r.children) ? section('Children', table(r.children, [
        { label: 'Name', cell: (c) => h('a', { href: `/ui/resources/${c.id}` }, c.name) },
        { label: 'Kind', cell: (c) => c.kind },
        { label: 'State', cell: (c) => badge(c.state) },
      ], { empty: 'No children.', caption: 'Children' })) : null);
  };
  try {
    await load();
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) throw new ApiError(404, { detail: `No resource has id ${id}.` });
    clear(main, errorBox(e));
    return;
  }
  watch(signal, load, {
    match: (ev) => ev.data && (ev.data.resource_id === id || ev.data.parent_id === id),
    busy: () => Boolean(resource) && isBusyResource(resource.state),
  });
}
