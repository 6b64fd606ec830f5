// Live updates: one shared Server-Sent Events stream (read with fetch, so it
// can carry the Authorization header), or, where the server has no stream,
// polling every 2 s. Pages call watch() with a refresh function.

import { authHeaders, askToken } from './api.js';

const listeners = new Set();
const statusListeners = new Set();
let mode = 'connecting'; // 'stream' | 'poll' | 'connecting'
let started = false;

export function liveMode() { return mode; }
export function onLiveMode(fn) { statusListeners.add(fn); fn(mode); }

function setMode(next) {
  if (mode === next) return;
  mode = next;
  for (const fn of statusListeners) fn(mode);
}

function dispatch(event) {
  for (const fn of listeners) {
    try { fn(event); } catch (e) { console.warn(e); }
  }
}

/** Parses one SSE block ("event: …\ndata: …") into {type, data, id}. */
export function parseBlock(block) {
  let type = 'message';
  let id = null;
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') type = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id') id = value;
  }
  if (!data.length) return null;
  let parsed = data.join('\n');
  try { parsed = JSON.parse(parsed); } catch { /* not JSON: keep the text */ }
  return { type, id, data: parsed };
}

async function stream() {
  let delay = 1000;
  let lastId = null;
  for (;;) {
    try {
      const headers = { accept: 'text/event-stream', ...authHeaders() };
      if (lastId) headers['last-event-id'] = lastId;
      const res = await fetch('/api/v1/events/stream', { headers, cache: 'no-store' });
      if (res.status === 404) { setMode('poll'); return; } // no stream on this server
      if (res.status === 401) { setMode('poll'); await askToken(); continue; }
      if (!res.ok || !res.body) throw new Error(`stream answered ${res.status}`);
      setMode('stream');
      delay = 1000;
      dispatch({ type: 'stream.connected', data: {} });
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, '\n');
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const event = parseBlock(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (event) {
            if (event.id) lastId = event.id;
            dispatch(event);
          }
        }
      }
      throw new Error('stream ended');
    } catch (e) {
      setMode('poll');
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 30000);
    }
  }
}

function start() {
  if (started) return;
  started = true;
  stream();
}

/**
 * Calls refresh() now and again: on each stream event that match(event)
 * accepts, and every 2 s while there is no stream (every second while busy()
 * says the thing shown is changing, and every 20 s anyway), until signal aborts.
 */
export function watch(signal, refresh, { match = () => true, busy = () => false } = {}) {
  start();
  let timer = null;
  let running = false;
  let again = false;
  const schedule = (ms) => {
    clearTimeout(timer);
    if (signal.aborted) return;
    if (ms === undefined) ms = busy() ? 1000 : mode === 'stream' ? 20000 : 2000;
    timer = setTimeout(run, ms);
  };
  async function run() {
    if (signal.aborted) return;
    if (running) { again = true; return; }
    running = true;
    try {
      await refresh();
    } catch (e) {
      if (e.name !== 'AbortError') console.warn('refresh failed', e);
    } finally {
      running = false;
    }
    if (again) { again = false; schedule(100); } else schedule();
  }
  const listener = (event) => {
    if (event.type === 'stream.connected' || match(event)) schedule(150);
  };
  listeners.add(listener);
  signal.addEventListener('abort', () => { clearTimeout(timer); listeners.delete(listener); });
  schedule();
}
