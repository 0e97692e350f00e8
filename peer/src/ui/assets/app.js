// The control UI's page script. Names come from other peers: they are only
// ever put into the page with textContent, never as HTML.
"use strict";

const TOKEN = document.querySelector('meta[name="p2p-token"]').content;
// How long typing must pause before a search is sent.
const SEARCH_DEBOUNCE_MS = 250;
// Polling: fast while a download runs, slow otherwise.
const POLL_ACTIVE_MS = 700;
const POLL_IDLE_MS = 4000;
const SHARED_POLL_MS = 5000;

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child != null) node.append(child);
  }
  return node;
}

// The rule of p2p_proto::units::human_size, so the page and the terminal
// show a size alike: bytes below 1 KiB, else one decimal in binary units
// (tests/e2e/ui_browser.rs compares the two).
function human(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1023.95 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${oneDecimal(value)} ${units[unit]}`;
}

// Rust's `{:.1}` rounds an exact tie to the even digit, toFixed rounds it
// up. Of the values bytes / 1024^k, only odd quarters (x.25, x.75) are
// exact ties at one decimal; value * 4 and value * 10 are exact for them.
function oneDecimal(value) {
  const quarters = value * 4;
  if (Number.isInteger(quarters) && quarters % 2 === 1) {
    const low = Math.floor(value * 10);
    return ((low % 2 === 0 ? low : low + 1) / 10).toFixed(1);
  }
  return value.toFixed(1);
}

function duration(seconds) {
  if (seconds == null) return "";
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${seconds % 60}s`;
  return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
}

async function api(method, path, body) {
  const options = { method, headers: { "X-P2P-Token": TOKEN } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data = {};
  try { data = await response.json(); } catch (e) { data = {}; }
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

// ---- search ----
let searchTimer = null;
let searchSeq = 0;

function scheduleSearch() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(runSearch, SEARCH_DEBOUNCE_MS);
}

async function runSearch() {
  const text = $("q").value.trim();
  const seq = ++searchSeq;
  const list = $("results");
  if (!text) {
    list.replaceChildren();
    $("search-note").textContent = "";
    return;
  }
  $("search-note").textContent = "Searching…";
  try {
    const data = await api("GET", `/api/find?q=${encodeURIComponent(text)}`);
    if (seq !== searchSeq) return; // a newer search is under way
    renderResults(data.results);
  } catch (e) {
    if (seq !== searchSeq) return;
    list.replaceChildren();
    $("search-note").textContent = `Search failed: ${e.message}`;
  }
}

function renderResults(results) {
  const list = $("results");
  $("search-note").textContent = results.length === 0
    ? "No file on the network matches."
    : `${results.length} result${results.length === 1 ? "" : "s"}`;
  list.replaceChildren(...results.map((hit) => {
    const sources = `${hit.sources} source${hit.sources === 1 ? "" : "s"}`;
    const button = el("button", {
      type: "button", class: "primary",
      "aria-label": `Download ${hit.name}`,
      onclick: () => startDownload(hit, button),
    }, "Download");
    return el("li", { class: "item result" },
      el("div", { class: "main" },
        el("span", { class: "name", text: hit.name }),
        el("span", { class: "meta" },
          el("span", { text: human(hit.size) }),
          el("span", { text: sources }),
          el("code", { title: hit.sha256, text: hit.sha256.slice(0, 12) }))),
      el("div", { class: "actions" }, button));
  }));
}

async function startDownload(hit, button) {
  button.disabled = true;
  try {
    await api("POST", "/api/downloads", { name: hit.name, sha256: hit.sha256 });
    $("search-note").textContent = `Started ${hit.name}: see Downloads`;
  } catch (e) {
    $("search-note").textContent = `Cannot download ${hit.name}: ${e.message}`;
  } finally {
    button.disabled = false;
  }
  pollDownloads();
}

// ---- downloads ----
let pollTimer = null;
const rows = new Map();

const STATE_TEXT = {
  queued: "queued", running: "downloading", verified: "verified",
  failed: "failed", cancelled: "cancelled",
};

function downloadRow(job) {
  const row = el("li", { class: "item download", "data-id": String(job.id) });
  row.nameEl = el("span", { class: "name" });
  row.badge = el("span", { class: "badge" });
  row.bar = el("progress", { max: "1", value: "0", "aria-label": `Progress of ${job.name}` });
  row.facts = el("span", { class: "meta facts" });
  row.message = el("p", { class: "message" });
  row.notes = el("ul", { class: "notes" });
  row.cancel = el("button", { type: "button", "aria-label": `Cancel ${job.name}`,
    onclick: () => act(job.id, "cancel") }, "Cancel");
  row.retry = el("button", { type: "button", "aria-label": `Retry ${job.name}`,
    onclick: () => act(job.id, "retry") }, "Retry");
  row.view = el("a", { class: "button", target: "_blank", rel: "noopener" }, "View");
  row.append(
    el("div", { class: "main" },
      el("div", { class: "title" }, row.nameEl, row.badge),
      row.bar, row.facts, row.message, row.notes),
    el("div", { class: "actions" }, row.cancel, row.retry, row.view));
  return row;
}

function updateRow(row, job) {
  // Screen readers hear when a download ends, not every progress tick.
  if (row.dataset.state && row.dataset.state !== job.state &&
      (job.state === "verified" || job.state === "failed")) {
    $("announce").textContent = `${job.name}: ${job.state}`;
  }
  row.nameEl.textContent = job.name;
  row.badge.textContent = STATE_TEXT[job.state] || job.state;
  row.badge.className = `badge ${job.state}`;
  row.dataset.state = job.state;
  if (job.total > 0) {
    row.bar.max = job.total;
    row.bar.value = Math.min(job.done, job.total);
  } else {
    row.bar.removeAttribute("value"); // indeterminate until the size is known
  }
  row.bar.hidden = job.state !== "running" && job.state !== "queued";
  const facts = [];
  const running = job.state === "running";
  const stopped = job.state === "cancelled" || job.state === "failed";
  if (job.total > 0) {
    if (running) facts.push(`${human(job.done)} of ${human(job.total)}`);
    // What a retry resumes from.
    else if (stopped && job.done > 0 && job.done < job.total) facts.push(`${human(job.done)} of ${human(job.total)} fetched`);
    else facts.push(human(job.total));
  }
  if (running && job.rate > 0) facts.push(`${human(job.rate)}/s`);
  if (running && job.sources) facts.push(job.sources);
  if (running && job.eta_seconds != null) facts.push(`ETA ${duration(job.eta_seconds)}`);
  if (running && job.total === 0) facts.push("asking the registry for sources…");
  row.facts.textContent = facts.join(" · ");
  row.message.textContent = job.message;
  row.message.className = `message ${job.state}`;
  row.notes.replaceChildren(...job.notes.map((n) => el("li", { text: n })));
  row.cancel.hidden = !(job.state === "queued" || job.state === "running");
  row.retry.hidden = !((job.state === "failed" || job.state === "cancelled") && !job.running);
  row.view.hidden = job.state !== "verified";
  row.view.href = `/view/downloads/${encodeURIComponent(job.name)}`;
  row.view.setAttribute("aria-label", `View ${job.name}`);
}

function renderDownloads(jobs) {
  const list = $("downloads");
  $("downloads-empty").hidden = jobs.length > 0;
  const seen = new Set();
  let previous = null;
  for (const job of jobs) {
    seen.add(job.id);
    let row = rows.get(job.id);
    if (!row) { row = downloadRow(job); rows.set(job.id, row); }
    updateRow(row, job);
    // Keep the order (newest first) without recreating rows, so focus stays.
    const expected = previous ? previous.nextSibling : list.firstChild;
    if (expected !== row) list.insertBefore(row, expected);
    previous = row;
  }
  for (const [id, row] of rows) {
    if (!seen.has(id)) { row.remove(); rows.delete(id); }
  }
  return jobs.some((j) => j.state === "queued" || j.state === "running");
}

async function act(id, action) {
  try {
    await api("POST", `/api/downloads/${id}/${action}`);
  } catch (e) {
    $("status").textContent = `Cannot ${action} download ${id}: ${e.message}`;
  }
  pollDownloads();
}

let wasActive = false;

async function pollDownloads() {
  clearTimeout(pollTimer);
  let active = false;
  try {
    const data = await api("GET", "/api/downloads");
    active = renderDownloads(data.downloads);
    if (wasActive && !active) loadShared();
    wasActive = active;
  } catch (e) {
    $("status").textContent = `The peer does not answer: ${e.message}`;
  }
  pollTimer = setTimeout(pollDownloads, active ? POLL_ACTIVE_MS : POLL_IDLE_MS);
}

// ---- shared folder ----
async function loadShared() {
  try {
    const data = await api("GET", "/api/shared");
    $("status").textContent =
      `Registry ${data.registry} · sharing on port ${data.port} · ` +
      `${data.shared.length} shared file${data.shared.length === 1 ? "" : "s"}`;
    $("shared-note").textContent = data.shared.length === 0 ? "The shared folder is empty." : "";
    $("shared").replaceChildren(...data.shared.map((f) =>
      el("li", { class: "item" },
        el("div", { class: "main" },
          el("span", { class: "name", text: f.name }),
          el("span", { class: "meta" },
            el("span", { text: human(f.size) }),
            el("span", { class: `badge ${f.state.replace(" ", "-")}`, text: f.state }))),
        el("div", { class: "actions" },
          el("a", { class: "button", href: f.view, target: "_blank", rel: "noopener",
            "aria-label": `View ${f.name}` }, "View")))));
    $("downloaded-note").textContent = data.downloaded.length === 0 ? "Nothing downloaded yet." : "";
    $("downloaded").replaceChildren(...data.downloaded.map((f) =>
      el("li", { class: "item" },
        el("div", { class: "main" },
          el("span", { class: "name", text: f.name }),
          el("span", { class: "meta" }, el("span", { text: human(f.size) }))),
        el("div", { class: "actions" },
          el("a", { class: "button", href: f.view, target: "_blank", rel: "noopener",
            "aria-label": `View ${f.name}` }, "View")))));
  } catch (e) {
    $("shared-note").textContent = `Cannot list the shared folder: ${e.message}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("q").addEventListener("input", scheduleSearch);
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
  pollDownloads();
  loadShared();
  setInterval(loadShared, SHARED_POLL_MS);
});
