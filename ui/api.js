// The API client: every call carries the tab's token (kept in sessionStorage);
// a 401 asks for a token again and repeats the call.

const KEY = 'executord.token';

/** An error answer of the API, with its problem+json body. */
export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
  get fieldErrors() {
    return Array.isArray(this.problem.errors) ? this.problem.errors : [];
  }
}

let prompting = null;
let asker = async () => { throw new Error('no token prompt'); };

/** Sets the function that asks the user for a token (returns a promise). */
export function onTokenNeeded(fn) { asker = fn; }

export function token() { return sessionStorage.getItem(KEY); }
export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value); else sessionStorage.removeItem(KEY);
}

/** Asks for a token once, however many calls need it at the same time. */
export function askToken(reason) {
  if (!prompting) {
    prompting = asker(reason).finally(() => { prompting = null; });
  }
  return prompting;
}

export function authHeaders() {
  const t = token();
  return t ? { authorization: `Bearer ${t}` } : {};
}

/**
 * Calls `/api/v1{path}`. Resolves to the JSON body (null when empty); rejects
 * with ApiError on an error status. A 401 asks for a token and tries again.
 */
export async function api(path, { method = 'GET', body, signal } = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = { accept: 'application/json', ...authHeaders() };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(`/api/v1${path}`, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = { detail: text }; }
    }
    if (res.status === 401 && attempt < 5) {
      setToken(null);
      await askToken(data && data.detail);
      continue;
    }
    if (!res.ok) throw new ApiError(res.status, data);
    return data;
  }
}

/** Like api(), but resolves to undefined when the route does not exist (404 from the router). */
export async function optional(path, options) {
  try {
    return await api(path, options);
  } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 405) && /no such route|does not take/.test(e.message)) return undefined;
    throw e;
  }
}

/** Who the caller is; in open mode no token is asked for. */
export async function whoami() {
  return api('/whoami');
}
