// Create a resource, update one, or run an action, from forms generated
// from the kind's JSON Schemas; the API's field errors show beside the fields.

import { api, ApiError } from '../api.js';
import { h, clear, badge, dl } from '../dom.js';
import { field, objectFields, showErrors, clearErrors, FieldError } from '../form.js';

function formShell({ title, intro, fields, submitLabel, cancelHref, onSubmit }) {
  const general = h('div', { class: 'alert bad', role: 'alert', hidden: true, tabindex: '-1' });
  const submit = h('button', { type: 'submit', class: 'primary' }, submitLabel);
  const form = h('form', { class: 'schema-form', novalidate: true }, general, fields, h('div', { class: 'buttons' },
    h('a', { href: cancelHref, class: 'button' }, 'Cancel'), submit));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form, general);
    if (!form.checkValidity()) {
      const errors = [...form.querySelectorAll(':invalid')]
        .filter((el) => el.name)
        .map((el) => ({ pointer: el.name, detail: el.validationMessage }));
      showErrors(form, general, errors);
      return;
    }
    submit.disabled = true;
    try {
      await onSubmit();
    } catch (err) {
      if (err instanceof FieldError) showErrors(form, general, [{ pointer: err.pointer, detail: err.message }]);
      else if (err instanceof ApiError && err.fieldErrors.length) showErrors(form, general, err.fieldErrors);
      else { general.textContent = err.message; general.hidden = false; general.focus(); }
    } finally {
      submit.disabled = false;
    }
  });
  return h('div', { class: 'form-page' }, h('h1', null, title), intro, form);
}

/** /ui/kinds/{kind}/new */
export async function createPage({ main, params: [kindName], session, navigate }) {
  const kinds = await session.getKinds();
  const kind = kinds.find((k) => k.name === kindName);
  if (!kind) throw new ApiError(404, { detail: `No kind is named ${kindName}.` });
  if (!session.canWrite()) {
    clear(main, h('h1', null, `New ${kind.name}`), h('p', null, 'Your token may only read.'));
    return;
  }
  const name = field('name', { type: 'string', minLength: 1, maxLength: 255 }, { pointer: '/name', required: true });
  const attrs = objectFields(kind.attributes_schema, '/attributes');
  clear(main, formShell({
    title: `New ${kind.name}`,
    intro: h('p', { class: 'muted' }, kind.description),
    fields: [name.el, h('fieldset', { class: 'group', dataset: { pointer: '/attributes' } }, h('legend', null, 'Attributes'),
      h('p', { class: 'field-error', role: 'alert', dataset: { pointer: '/attributes' } }), attrs.el)],
    submitLabel: `Create ${kind.name}`,
    cancelHref: '/ui/resources',
    onSubmit: async () => {
      const created = await api('/resources', { method: 'POST', body: { kind: kind.name, name: name.read() ?? '', attributes: attrs.read() } });
      navigate(`/ui/resources/${created.id}`);
    },
  }));
  main.querySelector('input,select,textarea')?.focus();
}

/** /ui/resources/{id}/edit */
export async function updatePage({ main, params: [id], session, navigate }) {
  const [resource, kinds] = await Promise.all([api(`/resources/${id}`), session.getKinds()]);
  const kind = kinds.find((k) => k.name === resource.kind);
  const updatable = new Set(kind ? kind.updatable : ['name']);
  const name = updatable.has('name') ? field('name', { type: 'string', minLength: 1, maxLength: 255 }, { pointer: '/name', value: resource.name }) : null;
  const props = {};
  for (const [key, sub] of Object.entries(kind?.attributes_schema?.properties || {})) if (updatable.has(key)) props[key] = sub;
  const attrs = Object.keys(props).length ? objectFields({ properties: props }, '/attributes', resource.attributes) : null;
  clear(main, formShell({
    title: `Edit ${resource.name}`,
    intro: h('p', { class: 'muted' }, `${resource.kind} · `, badge(resource.state)),
    fields: [name?.el, attrs ? h('fieldset', { class: 'group', dataset: { pointer: '/attributes' } }, h('legend', null, 'Attributes'), attrs.el) : null],
    submitLabel: 'Save',
    cancelHref: `/ui/resources/${id}`,
    onSubmit: async () => {
      const body = {};
      const n = name?.read();
      if (n !== undefined && n !== resource.name) body.name = n;
      if (attrs) body.attributes = attrs.read();
      const op = await api(`/resources/${id}`, { method: 'PATCH', body, headers: {} });
      navigate(`/ui/operations/${op.id}`);
    },
  }));
}

/** Whether `action` may start on `resource` now, and if not, why. */
export function actionAllowed(action, resource) {
  if (!action.states.includes(resource.state)) return `needs the resource ${action.states.join(' or ')}`;
  if (action.runtime_states.length && !action.runtime_states.includes(resource.runtime_state)) {
    return `needs runtime state ${action.runtime_states.join(' or ')}`;
  }
  return null;
}

export function actionHasParams(action) {
  return Object.keys(action.params_schema?.properties || {}).length > 0;
}

/** /ui/resources/{id}/actions/{action} */
export async function actionPage({ main, params: [id, actionName], session, navigate }) {
  const [resource, kinds] = await Promise.all([api(`/resources/${id}`), session.getKinds()]);
  const kind = kinds.find((k) => k.name === resource.kind);
  const action = kind?.actions.find((a) => a.name === actionName);
  if (!action) throw new ApiError(404, { detail: `${resource.kind} has no action ${actionName}.` });
  const params = objectFields(action.params_schema, '');
  clear(main, formShell({
    title: `${action.name}: ${resource.name}`,
    intro: [h('p', { class: 'muted' }, action.description),
      dl([['State', badge(resource.state)], ['Runtime state', resource.runtime_state]])],
    fields: [params.el],
    submitLabel: `Run ${action.name}`,
    cancelHref: `/ui/resources/${id}`,
    onSubmit: async () => {
      const op = await api(`/resources/${id}/actions/${encodeURIComponent(action.name)}`, { method: 'POST', body: params.read() });
      navigate(`/ui/operations/${op.id}`);
    },
  }));
}
