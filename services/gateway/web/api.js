// REST calls and the few values kept in localStorage.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Storage can throw (disabled cookies, private modes); the app still works
// for the life of the tab without it.
export const storage = {
  get(key) {
    try { return localStorage.getItem(key); } catch { return null; }
  },
  set(key, value) {
    try { localStorage.setItem(key, value); } catch { /* kept in memory only */ }
  },
  remove(key) {
    try { localStorage.removeItem(key); } catch { /* nothing to clear */ }
  },
};

const TOKEN_KEY = 'natter.token';
let token = storage.get(TOKEN_KEY);
let onUnauthorized = () => {};

export const session = {
  get token() { return token; },
  save(value) { token = value; storage.set(TOKEN_KEY, value); },
  clear() { token = null; storage.remove(TOKEN_KEY); },
  // Called when an authenticated request answers 401: the token is dead.
  onUnauthorized(fn) { onUnauthorized = fn; },
};

async function request(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const authed = Boolean(token) && (!path.startsWith('/api/auth/') || path === '/api/auth/logout');
  const used = token;
  if (authed) headers.Authorization = `Bearer ${used}`;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch {
    throw new ApiError(0, 'network', 'Cannot reach the server.');
  }
  let json = null;
  if (res.status !== 204) {
    try { json = await res.json(); } catch { /* empty or not JSON */ }
  }
  if (!res.ok) {
    const err = json && json.error;
    const error = new ApiError(res.status, err?.code || `http_${res.status}`,
      err?.message || res.statusText || `Request failed (${res.status})`);
    // Only if the token that failed is still ours (not one logged out meanwhile).
    if (res.status === 401 && authed && token === used && path !== '/api/auth/logout') onUnauthorized(error);
    throw error;
  }
  return json;
}

export const api = {
  get: (path) => request('GET', path),
  post: (path, body) => request('POST', path, body),
  del: (path) => request('DELETE', path),
};

// 32 hex digits from the CSPRNG; crypto.randomUUID needs a secure context,
// getRandomValues does not (cross-machine testing runs over plain http).
export function randomHex(bytes = 16) {
  const buf = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(buf, (b) => b.toString(16).padStart(2, '0')).join('');
}
