// The JSON API, as the console calls it. The admin token lives in sessionStorage only.

const TOKEN = 'foldhost-admin-token';

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

/**
 * Calls `path`; resolves with the body's text as sent, rejects with an ApiError (or an
 * AbortError once `signal` aborts). Read event data and states from this text (json.js):
 * JSON.parse rounds large numbers and reorders keys.
 */
export async function callText(path, { method = 'GET', body, json, admin = false, raw, signal } = {}) {
  const headers = {};
  // `json`: a JSON body's text, sent as it is; `body`: a value, sent as JSON.
  if (json === undefined && body !== undefined) json = JSON.stringify(body);
  if (json !== undefined) headers['content-type'] = 'application/json';
  if (raw !== undefined) headers['content-type'] = 'application/wasm';
  if (admin) {
    const token = adminToken();
    if (!token) throw new ApiError(401, { error: 'no admin token given' });
    headers.authorization = `Bearer ${token}`;
  }
  const response = await fetch(path, {
    method, headers, signal, body: raw !== undefined ? raw : json,
  });
  const text = await response.text();
  if (!response.ok) {
    if (admin && response.status === 401) sessionStorage.removeItem(TOKEN);
    throw new ApiError(response.status, parsed(text));
  }
  return text;
}

/** Calls `path`; resolves with the parsed JSON body, rejects with an ApiError. */
export async function call(path, options) {
  return parsed(await callText(path, options));
}

function parsed(text) {
  try { return text ? JSON.parse(text) : null; } catch { return text; }
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
