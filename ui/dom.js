// Small DOM helpers: elements, formatting, state badges.

const SVG_NS = 'http://www.w3.org/2000/svg';

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

function setProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === 'class') {
      el.setAttribute('class', Array.isArray(value) ? value.filter(Boolean).join(' ') : value);
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (key === 'value' && 'value' in el) {
      el.value = value;
    } else if (key === 'checked' || key === 'disabled' || key === 'selected' || key === 'required') {
      el[key] = Boolean(value);
      if (key !== 'checked' && key !== 'selected') el.toggleAttribute(key, Boolean(value));
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
}

/** An HTML element: h('a', {href}, 'text', child, …). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

/** An SVG element. */
export function s(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setProps(el, props);
  append(el, children);
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const TERMINAL_OK = new Set(['ok', 'succeeded']);
const BAD = new Set(['erred', 'failed']);
const QUIET = new Set(['cancelled']);

/** A badge for a resource, operation or task state. */
export function badge(state) {
  if (!state) return h('span', { class: 'badge' }, '—');
  let tone = 'busy';
  if (TERMINAL_OK.has(state)) tone = 'good';
  else if (BAD.has(state)) tone = 'bad';
  else if (QUIET.has(state)) tone = 'quiet';
  else if (state === 'waiting' || state.endsWith('_scheduled') || state === 'scheduled' || state === 'ready') tone = 'pending';
  return h('span', { class: `badge ${tone}`, dataset: { state } }, state.replaceAll('_', ' '));
}

export function isBusyResource(state) {
  return state !== 'ok' && state !== 'erred';
}

export function isFinishedOperation(state) {
  return state === 'succeeded' || state === 'failed' || state === 'cancelled';
}

export function shortId(id) {
  return id ? String(id).slice(-8) : '';
}

export function time(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const d = new Date(iso);
  return h('time', { datetime: iso, title: d.toLocaleString() }, ago(iso));
}

export function ago(iso) {
  const secs = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (secs < -1) return `in ${duration(-secs * 1000)}`;
  if (secs < 5) return 'just now';
  return `${duration(secs * 1000)} ago`;
}

export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  const hrs = Math.floor(m / 60);
  if (hrs < 48) return `${hrs} h ${m % 60} min`;
  return `${Math.floor(hrs / 24)} d`;
}

export function between(from, to) {
  if (!from) return null;
  return (to ? new Date(to) : new Date()).getTime() - new Date(from).getTime();
}

/** A key/value list. */
export function dl(pairs) {
  return h('dl', { class: 'kv' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', null, k), h('dd', null, v ?? '—')]));
}

/** A table in a scrolling wrapper: columns [{label, cell(row)}]. */
export function table(rows, columns, { empty = 'Nothing here.', caption } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'table-wrap' },
    h('table', null,
      caption ? h('caption', { class: 'sr-only' }, caption) : null,
      h('thead', null, h('tr', null, columns.map((c) => h('th', { scope: 'col', class: c.class }, c.label)))),
      h('tbody', null, rows.map((row) => h('tr', null, columns.map((c) => h('td', { class: c.class, 'data-label': c.label }, c.cell(row))))))));
}

export function json(value) {
  return h('pre', { class: 'json' }, JSON.stringify(value, null, 2));
}

export function section(title, ...children) {
  const id = `s-${title.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
  return h('section', { class: 'card', 'aria-labelledby': id }, h('h2', { id }, title), children);
}

/** A message for an error (an ApiError's detail, or any error's message). */
export function errorBox(err) {
  return h('div', { class: 'alert bad', role: 'alert' }, err && err.message ? err.message : String(err));
}

let toastTimer;
/** A short message at the bottom of the screen. */
export function toast(message, tone = 'good') {
  let el = document.getElementById('toast');
  if (!el) {
    el = h('div', { id: 'toast', role: 'status', 'aria-live': 'polite' });
    document.body.append(el);
  }
  el.className = `toast ${tone} show`;
  el.textContent = message;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = `toast ${tone}`; }, 4000);
}

/** Asks a yes/no question in a modal dialog; resolves to true on yes. */
export function confirmDialog(question, yes = 'Yes') {
  return new Promise((resolve) => {
    const dialog = h('dialog', { class: 'confirm', 'aria-label': question });
    const done = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
    dialog.append(
      h('p', null, question),
      h('div', { class: 'buttons' },
        h('button', { type: 'button', onclick: () => done(false) }, 'No'),
        h('button', { type: 'button', class: 'danger', onclick: () => done(true) }, yes)));
    dialog.addEventListener('cancel', (e) => { e.preventDefault(); done(false); });
    document.body.append(dialog);
    dialog.showModal();
  });
}
