// One operation: its tasks as a timeline (waiting, queued, running, done),
// with durations, attempts, errors and what each waits for; live while it
// runs; cancel and retry where allowed.

import { api } from '../api.js';
import { h, clear, badge, dl, time, duration, between, shortId, isFinishedOperation, toast, confirmDialog, json } from '../dom.js';
import { watch } from '../live.js';
import { operationTitle } from './resources.js';

function stepName(task) {
  const a = task.args || {};
  return a.method || a.transition || a.scope && `throttle (${a.scope}, ${a.limit})` || task.type.replaceAll('_', ' ');
}

function taskLine(task, longest, op) {
  const elsewhere = task.resource_id && op && task.resource_id !== op.resource_id;
  const took = between(task.started_at, task.finished_at);
  const waitingUntil = task.state === 'ready' && new Date(task.run_at) > new Date() ? task.run_at : null;
  const width = took && longest ? Math.max(2, Math.round((took / longest) * 100)) : 0;
  const tone = { succeeded: 'good', failed: 'bad', cancelled: 'quiet', running: 'busy', ready: 'pending', waiting: 'pending' }[task.state] || 'pending';
  return h('li', { class: `tl task ${tone}`, dataset: { state: task.state, type: task.type } },
    h('div', { class: 'tl-head' },
      h('span', { class: 'pos' }, `${task.position + 1}.`), ' ',
      h('strong', null, stepName(task)), ' ', h('span', { class: 'muted small' }, task.type.replaceAll('_', ' ')), ' ',
      task.undo ? h('span', { class: 'badge quiet' }, 'undo') : null, ' ',
      badge(task.state === 'ready' ? 'queued' : task.state)),
    h('div', { class: 'task-facts muted small' },
      elsewhere ? h('span', null, 'on ', h('a', { href: `/ui/resources/${task.resource_id}` }, shortId(task.resource_id))) : null,
      h('span', null, `queue ${task.queue}`),
      h('span', null, `attempts ${task.attempts}/${task.max_attempts}`),
      task.started_at ? h('span', null, 'started ', time(task.started_at)) : null,
      took !== null ? h('span', null, `${task.finished_at ? 'took' : 'running for'} ${duration(took)}`) : null,
      waitingUntil ? h('span', null, 'next try ', time(waitingUntil)) : null,
      task.worker ? h('span', null, `worker ${task.worker}`) : null),
    width ? h('div', { class: 'bar', 'aria-hidden': 'true' }, h('span', { class: `w${Math.min(100, Math.ceil(width / 5) * 5)}` })) : null,
    task.status ? h('p', { class: 'status-text' }, task.status) : null,
    task.last_error ? h('p', { class: 'error-text' }, h('strong', null, 'Last error: '), task.last_error) : null);
}

/** /ui/operations/{id} */
export async function operationPage({ main, params: [id], signal, session }) {
  let op = null;
  const head = h('div');
  const facts = h('div');
  const tasks = h('div');
  clear(main, head, h('div', { class: 'grid' }, h('section', { class: 'card', 'aria-labelledby': 'tasks-title' }, h('h2', { id: 'tasks-title' }, 'Tasks'), tasks), facts));

  const control = async (what, question) => {
    if (question && !(await confirmDialog(question, what === 'cancel' ? 'Cancel it' : 'Retry'))) return;
    try {
      await api(`/operations/${id}/${what}`, { method: 'POST' });
      toast(what === 'cancel' ? 'Operation cancelled' : 'Retrying from the failed step');
      await load();
    } catch (e) {
      toast(e.message, 'bad');
    }
  };

  const load = async () => {
    op = await api(`/operations/${id}`, { signal });
    const finished = isFinishedOperation(op.state);
    const buttons = session.canWrite() ? [
      !finished && op.state !== 'compensating' ? h('button', { type: 'button', class: 'danger', onclick: () => control('cancel', 'Cancel this operation? The resource ends erred.') }, 'Cancel operation') : null,
      op.state === 'failed' ? h('button', { type: 'button', class: 'primary', onclick: () => control('retry') }, 'Retry from the failed step') : null,
    ].filter(Boolean) : [];
    clear(head,
      h('p', { class: 'crumbs' }, h('a', { href: `/ui/resources/${op.resource_id}` }, `${op.resource_kind} ${shortId(op.resource_id)}`), ' / operation'),
      h('div', { class: 'page-head' },
        h('h1', null, `${operationTitle(op)} `, h('span', { id: 'operation-state' }, badge(op.state))),
        buttons.length ? h('div', { class: 'actions', role: 'group', 'aria-label': 'Operation controls' }, buttons) : null),
      h('div', { class: 'progress', role: 'progressbar', 'aria-label': 'Steps done', 'aria-valuemin': '0', 'aria-valuemax': String(op.step_count), 'aria-valuenow': String(op.steps_done) },
        h('span', { class: `w${Math.round((op.steps_done / Math.max(1, op.step_count)) * 20) * 5} ${op.state}` })),
      op.error ? h('div', { class: 'alert bad', role: 'alert', id: 'operation-error' }, h('strong', null, 'Failed: '), op.error) : null);
    const longest = Math.max(1, ...op.tasks.map((t) => between(t.started_at, t.finished_at) || 0));
    clear(tasks, h('ol', { class: 'timeline tasks' }, op.tasks.map((t) => taskLine(t, longest, op))));
    clear(facts, h('section', { class: 'card', 'aria-labelledby': 'facts-title' }, h('h2', { id: 'facts-title' }, 'Details'), dl([
      ['Id', h('code', null, op.id)],
      ['Resource', h('a', { href: `/ui/resources/${op.resource_id}` }, shortId(op.resource_id))],
      ['Executor', op.kind + (op.action ? ` (${op.action})` : '')],
      ['Steps', `${op.steps_done} of ${op.step_count} done`],
      ['Created', time(op.created_at)],
      ['Started', time(op.started_at)],
      ['Finished', time(op.finished_at)],
      ['Took', duration(between(op.started_at || op.created_at, op.finished_at))],
    ]), Object.keys(op.request || {}).length ? [h('h3', null, 'Request'), json(op.request)] : null));
  };
  await load();
  watch(signal, load, {
    match: (ev) => ev.data && (ev.data.operation_id === id || ev.data.resource_id === op?.resource_id),
    busy: () => Boolean(op) && !isFinishedOperation(op.state),
  });
}
