// The gateway's public REST API, called with the user's key: the console has no private routes.
const KEY = "tuneloop.console.key";

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(v) { v ? sessionStorage.setItem(KEY, v) : sessionStorage.removeItem(KEY); },
  onUnauthorized: () => {},
};

/** An API error: the gateway's envelope {"error": {message, type, param, code, details?}}. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.type = error.type || "error";
    this.code = error.code || `http_${status}`;
    this.param = error.param ?? null;
    this.details = error.details ?? null;
    this.requestId = error.request_id ?? null;
  }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${session.key || ""}`, ...extra };
}

async function failure(resp) {
  const text = await resp.text();
  let err = null;
  try { err = JSON.parse(text).error; } catch { /* not JSON */ }
  if (!err || typeof err !== "object") {
    err = { message: text.slice(0, 300) || resp.statusText, type: "http_error", code: `http_${resp.status}` };
  }
  if (resp.status === 401) session.onUnauthorized();
  return new ApiError(resp.status, err);
}

async function send(path, { method = "GET", json, form, signal, accept } = {}) {
  const extra = {};
  let body;
  if (json !== undefined) { extra["content-type"] = "application/json"; body = JSON.stringify(json); }
  else if (form) body = form;
  if (accept) extra.accept = accept;
  try {
    return await fetch(path, { method, headers: headers(extra), body, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, { message: `network error: ${e.message}`, type: "network_error", code: "network_error" });
  }
}

/** JSON request; resolves to the parsed body, rejects with ApiError. */
export async function api(path, opts = {}) {
  const resp = await send(path, opts);
  if (!resp.ok) throw await failure(resp);
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

/**
 * Server-sent events over fetch (EventSource cannot send an Authorization header).
 * Yields {id, event, data} with ``data`` parsed as JSON when it is JSON.
 */
export async function* sse(path, { json, signal, lastEventId } = {}) {
  const extra = { accept: "text/event-stream" };
  if (lastEventId != null) extra["last-event-id"] = String(lastEventId);
  let resp;
  try {
    resp = await fetch(path, {
      method: json === undefined ? "GET" : "POST",
      headers: headers(json === undefined ? extra : { ...extra, "content-type": "application/json" }),
      body: json === undefined ? undefined : JSON.stringify(json), signal,
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, { message: `network error: ${e.message}`, type: "network_error", code: "network_error" });
  }
  if (!resp.ok) throw await failure(resp);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let ev = { id: null, event: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let nl;
    while ((nl = buf.search(/\r?\n/)) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + (buf[nl] === "\r" ? 2 : 1));
      if (line === "") {
        if (ev.data.length) {
          const raw = ev.data.join("\n");
          let data = raw;
          try { data = JSON.parse(raw); } catch { /* plain text, e.g. [DONE] */ }
          yield { id: ev.id, event: ev.event, data };
        }
        ev = { id: null, event: "message", data: [] };
      } else if (!line.startsWith(":")) {
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
        if (field === "data") ev.data.push(val);
        else if (field === "event") ev.event = val;
        else if (field === "id") ev.id = val;
      }
    }
  }
}
