// The JSON API, as the console calls it. The admin token lives in sessionStorage only.

const TOKEN = 'foldhost-admin-token';

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** Calls `path`; resolves with the parsed JSON body, rejects with an ApiError. */
export async function call(path, { method = 'GET', body, admin = false, raw } = {}) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (raw !== undefined) headers['content-type'] = 'application/wasm';
  if (admin) {
    const token = adminToken();
    if (!token) throw new ApiError(401, { error: 'no admin token given' });
    headers.authorization = `Bearer ${token}`;
  }
  const response = await fetch(path, {
    method, headers, body: raw !== undefined ? raw : body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json;
  try { json = text ? JSON.parse(text) : null; } catch { json = text; }
  if (!response.ok) {
    if (admin && response.status === 401) sessionStorage.removeItem(TOKEN);
    throw new ApiError(response.status, json);
  }
  return json;
}

/** The admin token for this tab, asked for once. */
export function adminToken() {
  let token = sessionStorage.getItem(TOKEN);
  if (!token) {
    token = prompt('Admin token (kept for this tab only)') || '';
    if (token) sessionStorage.setItem(TOKEN, token);
  }
  showTokenState();
  return token;
}

export function showTokenState() {
  const el = document.getElementById('token-state');
  if (el) el.textContent = sessionStorage.getItem(TOKEN) ? 'admin token set for this tab' : '';
}

export const enc = encodeURIComponent;
