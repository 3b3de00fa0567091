// Shared by the service's pages: API calls with the key the user typed, and small DOM builders that only ever set
// text (never HTML), so names and values from a manifest cannot inject markup.
"use strict";

const KEY = "vae-api-key";

function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

function headers(extra) {
  const key = apiKey();
  return Object.assign(key ? { Authorization: "Bearer " + key } : {}, extra || {});
}

class ApiError extends Error {
  constructor(status, kind, detail) {
    super(`${status} ${kind}: ${detail}`);
    this.status = status;
    this.kind = kind;
    this.detail = detail;
  }
}

async function fail(response) {
  let kind = response.statusText, detail = "";
  try {
    const body = await response.json();
    kind = body.error || kind;
    detail = body.detail || "";
  } catch (_) { /* not JSON */ }
  throw new ApiError(response.status, kind, detail);
}

// GET (no body) or POST (body) a JSON endpoint; throws ApiError with the service's own error sentence.
async function api(path, body) {
  const init = body === undefined
    ? { headers: headers() }
    : { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) };
  const response = await fetch(path, init);
  if (!response.ok) await fail(response);
  return response.json();
}

// A file behind the API key, as an object URL an <img> can show.
async function blobUrl(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) await fail(response);
  return URL.createObjectURL(await response.blob());
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

// Append a table row of cells (strings, numbers or nodes); `numeric` lists the columns aligned right.
function row(tbody, cells, numeric) {
  const tr = document.createElement("tr");
  cells.forEach((cell, i) => {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell); else td.textContent = cell === null || cell === undefined ? "–" : String(cell);
    if (numeric && numeric.includes(i)) td.className = "num";
    tr.append(td);
  });
  tbody.append(tr);
  return tr;
}

function fmt(v, digits) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(digits === undefined ? 3 : digits);
  return v.toFixed(digits === undefined ? (a >= 100 ? 1 : 3) : digits);
}

function showError(node, err) {
  node.textContent = "";
  const box = el("div", err instanceof ApiError ? err.message : String(err), "error");
  if (err instanceof ApiError && err.status === 401) box.textContent += "\nType the service's API key above, then reload.";
  node.append(box);
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("api-key");
  if (!input) return;
  input.value = apiKey();
  input.form?.addEventListener("submit", (event) => event.preventDefault()); // Enter sets the key, no reload
  input.addEventListener("change", () => {
    sessionStorage.setItem(KEY, input.value.trim());
    location.reload();
  });
});
