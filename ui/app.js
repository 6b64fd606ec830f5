// The console: token handling, the caller's role, and routing by URL.

import { api, ApiError, onTokenNeeded, setToken, token, whoami } from './api.js';
import { h, clear, errorBox } from './dom.js';
import { onLiveMode } from './live.js';
import { overviewPage } from './pages/overview.js';
import { resourcesPage, operationsPage } from './pages/resources.js';
import { resourcePage } from './pages/resource.js';
import { operationPage } from './pages/operation.js';
import { createPage, actionPage, updatePage } from './pages/forms.js';
import { jobsPage } from './pages/jobs.js';

const main = document.getElementById('main');
const session = { me: null, kinds: null };

/** The kinds, fetched once per visit. */
session.getKinds = async () => {
  if (!session.kinds) session.kinds = (await api('/kinds')).items;
  return session.kinds;
};
session.canWrite = () => Boolean(session.me) && session.me.role !== 'viewer';

const routes = [
  [/^\/ui\/?$/, overviewPage, 'Overview'],
  [/^\/ui\/resources\/?$/, resourcesPage, 'Resources'],
  [/^\/ui\/resources\/([^/]+)\/?$/, resourcePage, 'Resource'],
  [/^\/ui\/resources\/([^/]+)\/edit$/, updatePage, 'Edit resource'],
  [/^\/ui\/resources\/([^/]+)\/actions\/([^/]+)$/, actionPage, 'Run an action'],
  [/^\/ui\/operations\/?$/, operationsPage, 'Operations'],
  [/^\/ui\/operations\/([^/]+)\/?$/, operationPage, 'Operation'],
  [/^\/ui\/kinds\/([^/]+)\/new$/, createPage, 'New resource'],
  [/^\/ui\/jobs\/?$/, jobsPage, 'Jobs'],
];

let current = null; // the AbortController of the page shown

function notFound(ctx) {
  clear(ctx.main, h('h1', null, 'Not found'), h('p', null, 'No page of the console has this address. ', h('a', { href: '/ui' }, 'Go to the overview'), '.'));
}

/** Goes to `url` inside the console (pushes history unless `replace`). */
export function navigate(url, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', url); else history.pushState(null, '', url);
  render();
}

async function render() {
  if (current) current.abort();
  const controller = new AbortController();
  current = controller;
  const path = location.pathname;
  let page = notFound;
  let title = 'Not found';
  let params = [];
  for (const [pattern, fn, name] of routes) {
    const m = path.match(pattern);
    if (m) { page = fn; title = name; params = m.slice(1).map(decodeURIComponent); break; }
  }
  document.title = `${title} · executord`;
  for (const a of document.querySelectorAll('header nav a')) {
    const href = a.getAttribute('href');
    const active = href === '/ui' ? path === '/ui' || path === '/ui/' : path.startsWith(href);
    if (active) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  clear(main, h('p', { class: 'muted' }, 'Loading…'));
  try {
    await page({ main, params, query: new URLSearchParams(location.search), signal: controller.signal, session, navigate });
  } catch (e) {
    if (controller.signal.aborted || e.name === 'AbortError') return;
    const problem = e instanceof ApiError && e.status === 404
      ? h('p', null, e.message)
      : errorBox(e);
    clear(main, h('h1', null, title), problem);
  }
}

// Links inside the console change the page without a reload.
document.addEventListener('click', (e) => {
  if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const a = e.target.closest('a[href]');
  if (!a || a.target || a.hasAttribute('download')) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith('/ui')) return;
  e.preventDefault();
  if (url.pathname + url.search !== location.pathname + location.search) navigate(url.pathname + url.search);
  main.focus({ preventScroll: true });
  window.scrollTo(0, 0);
});
window.addEventListener('popstate', render);

// The token prompt: a modal dialog, checked against /whoami before it closes.
const dialog = document.getElementById('token-dialog');
const form = document.getElementById('token-form');
const input = document.getElementById('token-input');
const error = document.getElementById('token-error');
onTokenNeeded((reason) => new Promise((resolve) => {
  error.textContent = token() === null && reason && !/needs/.test(reason) ? reason : '';
  input.value = '';
  dialog.addEventListener('cancel', (e) => e.preventDefault());
  const submit = async (e) => {
    e.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    const res = await fetch('/api/v1/whoami', { headers: { authorization: `Bearer ${value}` } });
    if (res.status !== 200) {
      error.textContent = res.status === 401 ? 'This token is unknown or revoked.' : `The service answered ${res.status}.`;
      input.select();
      return;
    }
    setToken(value);
    session.me = await res.json();
    showWho();
    form.removeEventListener('submit', submit);
    dialog.close();
    resolve();
  };
  form.addEventListener('submit', submit);
  if (!dialog.open) dialog.showModal();
  input.focus();
}));

function showWho() {
  const who = document.getElementById('who');
  const me = session.me;
  if (!me) { clear(who); return; }
  const parts = me.open
    ? [h('span', { class: 'role admin' }, 'open'), ' no token needed']
    : [h('span', { class: `role ${me.role}` }, me.role), ' ', me.tenant, me.token_name ? ` · ${me.token_name}` : ''];
  clear(who, h('span', { class: 'live-dot', id: 'live-dot', title: 'Live updates' }), ...parts,
    me.open ? null : h('button', { type: 'button', class: 'link', onclick: signOut }, 'Sign out'));
  onLiveMode(paintLive);
}

function paintLive(mode) {
  const dot = document.getElementById('live-dot');
  if (!dot) return;
  dot.className = `live-dot ${mode}`;
  dot.title = mode === 'stream' ? 'Live: event stream' : mode === 'poll' ? 'Live: polling every 2 s' : 'Connecting…';
  dot.setAttribute('aria-label', dot.title);
  dot.setAttribute('role', 'img');
}

function signOut() {
  setToken(null);
  session.me = null;
  location.reload();
}

async function start() {
  // Whoami without a token answers 200 only while the service runs open;
  // with a stored token, 401 brings the prompt (api() handles it).
  session.me = await whoami();
  showWho();
  await render();
}

start().catch((e) => clear(main, h('h1', null, 'executord'), errorBox(e)));
