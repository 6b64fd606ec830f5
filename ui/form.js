// Forms generated from a JSON Schema: strings, numbers and integers (with
// their limits), booleans, enums (as selects), objects with properties
// (fieldsets), free-form objects (JSON text), arrays of values or objects
// (rows to add and remove). Each field knows its JSON pointer, so a
// problem+json's errors[].pointer is shown next to its field.

import { h } from './dom.js';

let uid = 0;
const nextId = () => `f${++uid}`;

function typeOf(schema) {
  if (Array.isArray(schema.type)) return schema.type.find((t) => t !== 'null') || 'string';
  if (schema.type) return schema.type;
  if (schema.enum) return 'enum';
  if (schema.properties) return 'object';
  if (schema.items) return 'array';
  return 'json';
}

function label(name, schema) {
  return schema.title || name.replaceAll('_', ' ');
}

function hint(schema) {
  const bits = [];
  if (schema.description) bits.push(schema.description);
  if (schema.minimum !== undefined && schema.maximum !== undefined) bits.push(`${schema.minimum} to ${schema.maximum}`);
  else if (schema.minimum !== undefined) bits.push(`at least ${schema.minimum}`);
  else if (schema.maximum !== undefined) bits.push(`at most ${schema.maximum}`);
  if (schema.maxLength !== undefined) bits.push(`up to ${schema.maxLength} characters`);
  return bits.join(' · ');
}

/** A field for `schema` at `pointer`; returns {el, read()} where read() gives the value or undefined. */
export function field(name, schema, { pointer, required = false, value } = {}) {
  schema = schema || {};
  const id = nextId();
  const type = schema.enum ? 'enum' : typeOf(schema);
  const errorEl = h('p', { class: 'field-error', id: `${id}-err`, role: 'alert', dataset: { pointer } });
  const help = hint(schema);
  const helpEl = help ? h('p', { class: 'hint', id: `${id}-hint` }, help) : null;
  const describedBy = [help ? `${id}-hint` : null, `${id}-err`].filter(Boolean).join(' ');
  const labelEl = (text) => h('label', { for: id }, text, required ? h('span', { class: 'req', 'aria-hidden': 'true' }, ' *') : null);

  if (type === 'enum') {
    const select = h('select', { id, name: pointer, required, 'aria-describedby': describedBy },
      required && value !== undefined ? null : h('option', { value: '' }, required ? 'Choose…' : '(none)'),
      schema.enum.map((v) => h('option', { value: JSON.stringify(v), selected: value !== undefined && JSON.stringify(value) === JSON.stringify(v) }, String(v))));
    return {
      el: h('div', { class: 'field', dataset: { pointer } }, labelEl(label(name, schema)), select, helpEl, errorEl),
      read: () => (select.value === '' ? undefined : JSON.parse(select.value)),
    };
  }
  if (type === 'boolean') {
    const box = h('input', { id, type: 'checkbox', name: pointer, checked: value ?? schema.default ?? false, 'aria-describedby': describedBy });
    return {
      el: h('div', { class: 'field check', dataset: { pointer } }, box, h('label', { for: id }, label(name, schema)), helpEl, errorEl),
      read: () => box.checked,
    };
  }
  if (type === 'integer' || type === 'number') {
    const input = h('input', {
      id, type: 'number', name: pointer, required, inputmode: type === 'integer' ? 'numeric' : 'decimal',
      min: schema.minimum, max: schema.maximum, step: type === 'integer' ? (schema.multipleOf || 1) : (schema.multipleOf || 'any'),
      value: value ?? schema.default, 'aria-describedby': describedBy,
    });
    return {
      el: h('div', { class: 'field', dataset: { pointer } }, labelEl(label(name, schema)), input, helpEl, errorEl),
      read: () => (input.value === '' ? undefined : Number(input.value)),
    };
  }
  if (type === 'string') {
    const input = h('input', {
      id, type: schema.format === 'email' ? 'email' : 'text', name: pointer, required,
      minlength: schema.minLength, maxlength: schema.maxLength, pattern: schema.pattern,
      value: value ?? schema.default, autocomplete: 'off', spellcheck: 'false', 'aria-describedby': describedBy,
    });
    return {
      el: h('div', { class: 'field', dataset: { pointer } }, labelEl(label(name, schema)), input, helpEl, errorEl),
      read: () => (input.value === '' ? undefined : input.value),
    };
  }
  if (type === 'object' && schema.properties) {
    const inner = objectFields(schema, pointer, value || {});
    return {
      el: h('fieldset', { class: 'group', dataset: { pointer } }, h('legend', null, label(name, schema), required ? ' *' : ''), helpEl, errorEl, inner.el),
      read: () => { const v = inner.read(); return Object.keys(v).length || required ? v : undefined; },
    };
  }
  if (type === 'array') {
    return arrayField(name, schema, { pointer, required, value, id, errorEl, helpEl });
  }
  // A free-form value: JSON text.
  const area = h('textarea', {
    id, name: pointer, rows: 3, spellcheck: 'false', class: 'mono', placeholder: type === 'object' ? '{"key": "value"}' : 'JSON',
    'aria-describedby': describedBy,
  });
  if (value !== undefined) area.value = JSON.stringify(value, null, 2);
  const read = () => {
    if (area.value.trim() === '') return undefined;
    try {
      area.setCustomValidity('');
      return JSON.parse(area.value);
    } catch {
      area.setCustomValidity('not valid JSON');
      throw new FieldError(pointer, 'not valid JSON');
    }
  };
  return {
    el: h('div', { class: 'field', dataset: { pointer } }, labelEl(`${label(name, schema)} (JSON)`), area, helpEl, errorEl),
    read,
  };
}

function arrayField(name, schema, { pointer, required, value, id, errorEl, helpEl }) {
  const items = schema.items || {};
  const rows = [];
  const list = h('ol', { class: 'rows' });
  const renumber = () => rows.forEach((row, i) => { row.index = i; });
  const add = (v) => {
    const row = { index: rows.length };
    const f = field(`${label(name, items)} ${rows.length + 1}`, items, { pointer: `${pointer}/${rows.length}`, required: true, value: v });
    const remove = h('button', { type: 'button', class: 'small', 'aria-label': `Remove item ${rows.length + 1} of ${label(name, schema)}`, onclick: () => {
      rows.splice(rows.indexOf(row), 1);
      row.li.remove();
      renumber();
    } }, 'Remove');
    row.read = f.read;
    row.li = h('li', null, f.el, remove);
    rows.push(row);
    list.append(row.li);
  };
  (Array.isArray(value) ? value : []).forEach(add);
  const addButton = h('button', { type: 'button', class: 'small', id, onclick: () => { add(); const last = rows[rows.length - 1]; last.li.querySelector('input,select,textarea,button')?.focus(); } }, `Add ${items.title || 'item'}`);
  return {
    el: h('fieldset', { class: 'group', dataset: { pointer } }, h('legend', null, label(name, schema), required ? ' *' : ''), helpEl, errorEl, list, addButton),
    read: () => {
      const out = rows.map((r) => r.read());
      return out.length || required ? out.filter((v) => v !== undefined) : undefined;
    },
  };
}

/** The fields of an object schema's properties; read() gives the object (empty optional fields left out). */
export function objectFields(schema, pointer, value = {}) {
  const required = new Set(schema.required || []);
  // Required fields first, each group in the schema's order.
  const entries = Object.entries(schema.properties || {});
  const ordered = [...entries.filter(([n]) => required.has(n)), ...entries.filter(([n]) => !required.has(n))];
  const fields = ordered.map(([name, sub]) => [
    name, field(name, sub, { pointer: `${pointer}/${name}`, required: required.has(name), value: value[name] }),
  ]);
  return {
    el: h('div', { class: 'fields' }, fields.map(([, f]) => f.el)),
    read: () => {
      const out = {};
      for (const [name, f] of fields) {
        const v = f.read();
        if (v !== undefined) out[name] = v;
      }
      return out;
    },
  };
}

export class FieldError extends Error {
  constructor(pointer, message) { super(message); this.pointer = pointer; }
}

/**
 * Shows problem+json errors next to their fields in `form`: the deepest
 * field whose pointer starts the error's; the rest in `general`.
 */
export function showErrors(form, general, errors) {
  clearErrors(form, general);
  const slots = [...form.querySelectorAll('.field-error[data-pointer]')];
  const leftovers = [];
  let first = null;
  for (const { pointer = '', detail } of errors) {
    const slot = slots
      .filter((s) => pointer === s.dataset.pointer || pointer.startsWith(`${s.dataset.pointer}/`))
      .sort((a, b) => b.dataset.pointer.length - a.dataset.pointer.length)[0];
    if (slot) {
      slot.textContent = slot.textContent ? `${slot.textContent}; ${detail}` : detail;
      const holder = slot.closest('[data-pointer]:not(.field-error)');
      holder?.classList.add('invalid');
      holder?.querySelector('input,select,textarea')?.setAttribute('aria-invalid', 'true');
      first = first || holder;
    } else {
      leftovers.push(pointer ? `${pointer}: ${detail}` : detail);
    }
  }
  if (leftovers.length) {
    general.append(h('ul', null, leftovers.map((t) => h('li', null, t))));
    general.hidden = false;
  }
  (first?.querySelector('input,select,textarea,button') || general).focus?.();
}

export function clearErrors(form, general) {
  for (const el of form.querySelectorAll('.field-error')) el.textContent = '';
  for (const el of form.querySelectorAll('.invalid')) el.classList.remove('invalid');
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  general.replaceChildren();
  general.hidden = true;
}
