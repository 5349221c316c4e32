// genreid operator page. Talks to the JSON API of the server that serves it, with fetch() only.
// Person ids and cameras are user text: they reach the page through textContent and attributes, never as HTML.
// The API key only ever travels in the X-API-Key header (never in a URL); images that need it are fetched and
// shown through blob: URLs.

const API = new URL("../", document.baseURI); // the page lives at <root>/ui/
const KEY_STORAGE = "genreid-api-key";
const PAGE_SIZE = 24;

const state = {
  key: sessionStorage.getItem(KEY_STORAGE),
  keyAsked: false,
  threshold: null, // the model's match_threshold from GET /health
  galleryOffset: 0,
  galleryPerson: "",
  search: 0, // the latest search: an earlier, slower answer must not replace its results
};
const objectUrls = new Map(); // view -> blob: URLs to release when the view is drawn again
const rowFiles = new WeakMap(); // enrol row -> its File

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, detail) {
    super(status ? `${status}: ${detail}` : detail);
    this.status = status;
  }
}

/** One API call; non-2xx answers become ApiError with the API's one-sentence detail. A 401 asks for the key. */
async function api(path, { method = "GET", params = [], form } = {}) {
  const url = new URL(path, API);
  for (const [name, value] of params) url.searchParams.append(name, value);
  const headers = new Headers();
  if (state.key) headers.set("X-API-Key", state.key);
  let response;
  try {
    response = await fetch(url, { method, headers, body: form });
  } catch (error) {
    throw new ApiError(0, `the server did not answer (${error.message})`);
  }
  if (response.ok) return response;
  let detail = response.statusText;
  try {
    const answer = await response.json();
    detail = typeof answer.detail === "string" ? answer.detail : JSON.stringify(answer.detail);
  } catch {
    // not JSON: keep the status text
  }
  if (response.status === 401 || response.status === 403) askForKey();
  throw new ApiError(response.status, detail);
}

/** An element with text content, attributes and listeners; children are nodes or strings (text, never HTML). */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children);
  return node;
}

function count(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

function say(view, message, kind = "info") {
  const status = $(`${view}-status`);
  status.textContent = message;
  status.dataset.kind = kind;
}

const HINTS = {
  401: " Enter the API key above, then try again.",
  403: " Enter a key with that role above, then try again.",
};

/** An error as the operator reads it: the API's sentence, and what to do about a 401 or 403. */
function explain(error) {
  const stop = /[.!?]$/.test(error.message) ? "" : ".";
  return `${error.message}${stop}${HINTS[error.status] ?? ""}`;
}

function failed(view, error) {
  say(view, explain(error), "error");
}

function trackUrl(view, url) {
  if (!objectUrls.has(view)) objectUrls.set(view, []);
  objectUrls.get(view).push(url);
  return url;
}

function releaseUrls(view) {
  for (const url of objectUrls.get(view) ?? []) URL.revokeObjectURL(url);
  objectUrls.delete(view);
}

// ---- API key -------------------------------------------------------------------------------------------------

function askForKey() {
  $("key-panel").hidden = false;
  if (!state.keyAsked) {
    state.keyAsked = true;
    $("key-input").focus();
  }
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("key-input").value;
  sessionStorage.setItem(KEY_STORAGE, state.key);
  $("key-input").value = "";
  $("key-panel").hidden = true;
  showView();
});

// ---- shared pieces -------------------------------------------------------------------------------------------

function cameraText(camera) {
  return camera ?? "unknown";
}

function describe(entry) {
  if (entry.person_id === undefined) return `entry ${entry.entry_id}`;
  return `person ${entry.person_id}, camera ${cameraText(entry.camera)}, entry ${entry.entry_id}`;
}

/** The stored crop of an entry as a blob: URL, or null when it has none. */
async function cropUrl(view, entryId) {
  try {
    const response = await api(`gallery/entries/${entryId}/crop`);
    return trackUrl(view, URL.createObjectURL(await response.blob()));
  } catch (error) {
    if (error.status === 404) return null;
    throw error;
  }
}

function placeholder(label, text = "no crop") {
  return el("div", { className: "placeholder", role: "img", "aria-label": label, text });
}

/** A thumbnail of an entry's stored crop; a placeholder when there is none (has_crop false, or a 404). */
function thumbnail(view, entry) {
  const label = `Crop of ${describe(entry)}`;
  const none = () => placeholder(`No stored crop for ${describe(entry)}`);
  if (entry.has_crop === false) return el("div", { className: "thumb" }, none());
  const holder = el("div", { className: "thumb loading" }, placeholder(`Loading ${label}`, "loading"));
  cropUrl(view, entry.entry_id)
    .then((url) => holder.replaceChildren(url ? el("img", { src: url, alt: label, width: 64, height: 128 }) : none()))
    .catch((error) => holder.replaceChildren(placeholder(`${label}: ${error.message}`, "not loaded")))
    .finally(() => holder.classList.remove("loading"));
  return holder;
}

function picture(src, alt, caption) {
  return el("figure", {}, el("img", { src, alt, width: 64, height: 128 }), el("figcaption", { text: caption }));
}

function facts(rows) {
  return el("dl", { className: "facts" },
    ...rows.map(([name, value]) => el("div", {}, el("dt", { text: name }), el("dd", { text: String(value) }))));
}

function entryFacts(entry, extra = []) {
  const rows = [...extra, ["Person", entry.person_id], ["Camera", cameraText(entry.camera)]];
  if (entry.seen_at) rows.push(["Seen", entry.seen_at]);
  rows.push(["Entry", entry.entry_id]);
  return facts(rows);
}

function useAsIdentity(entry) {
  chooseIdentity("entry");
  $("transfer-entry").value = entry.entry_id;
  location.hash = "#transfer";
}

function entryActions(entry, ...more) {
  return el("div", { className: "actions" },
    el("button", { type: "button", text: "Search from this entry", onclick: () => searchFromEntry(entry) }),
    el("button", { type: "button", text: "Use as transfer identity", onclick: () => useAsIdentity(entry) }),
    ...more);
}

function pngBlobUrl(view, base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return trackUrl(view, URL.createObjectURL(new Blob([bytes], { type: "image/png" })));
}

/** Wire a drop zone to its file input: a dropped file lands in the input as if picked. */
function dropZone(zone) {
  const input = $(zone.dataset.input);
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    input.files = event.dataTransfer.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  });
}

function cameraList(text) {
  return text.split(",").map((c) => c.trim()).filter((c) => c !== "");
}

function isoTime(localValue) {
  return new Date(localValue).toISOString().replace(/\.\d{3}Z$/, "Z");
}

// ---- search --------------------------------------------------------------------------------------------------

function searchParams(withPreview) {
  const params = [["k", $("search-k").value || "10"], ["include_noise", "false"]];
  if ($("search-rerank").value) params.push(["rerank", $("search-rerank").value]);
  if (withPreview) params.push(["noise_preview", "true"]);
  for (const camera of cameraList($("search-cameras").value)) params.push(["camera", camera]);
  for (const camera of cameraList($("search-exclude").value)) params.push(["exclude_camera", camera]);
  if ($("search-after").value) params.push(["seen_after", isoTime($("search-after").value)]);
  if ($("search-before").value) params.push(["seen_before", isoTime($("search-before").value)]);
  return params;
}

/** Where a list ranked by code distance crosses the match threshold: before the first match above it; -1 for no
 * line (no threshold). A re-ranked list is not in code-distance order, so it gets no line: the badges tell. */
function thresholdIndex(matches) {
  if (state.threshold === null || matches.some((m) => m.within_match_threshold === null)) return -1;
  const above = matches.findIndex((m) => !m.within_match_threshold);
  return above === -1 ? matches.length : above;
}

/** The verdict is on the code distance (within_match_threshold), whatever orders the list. */
function verdict(match) {
  if (match.within_match_threshold === true) return ["within", "within the match threshold"];
  if (match.within_match_threshold === false) return ["above", "above the match threshold"];
  return ["unknown", "no match threshold"];
}

function matchTile(match, rank) {
  const [kind, text] = verdict(match);
  const scores = [["Rank", rank], ["Distance", match.distance.toFixed(3)]];
  const reranked = match.rerank_distance ?? null; // null: not re-ranked, or past the K that re-ranking reorders
  if (reranked !== null) scores.push(["Re-ranked", reranked.toFixed(3)]);
  return el("li", { className: `tile ${kind}`, "data-entry-id": match.entry_id, "data-distance": match.distance },
    thumbnail("search", match),
    entryFacts(match, scores),
    el("p", { className: "verdict", text }),
    entryActions(match));
}

function thresholdMarker() {
  const text = "entries above this line are within the match threshold " +
    `(code distance ≤ ${state.threshold.toFixed(3)})`;
  return el("li", { className: "threshold", role: "separator", "aria-label": text, text });
}

/** The ranked tiles; by code distance with the threshold line, re-ranked with a note saying what the badges mean. */
function showMatches({ matches, ranked_by: rankedBy }) {
  const reranked = rankedBy === "rerank_distance";
  const items = matches.map((match, i) => matchTile(match, i + 1));
  const cut = reranked ? -1 : thresholdIndex(matches);
  if (cut >= 0) items.splice(cut, 0, thresholdMarker());
  $("search-order").hidden = !(reranked && matches.length);
  $("search-results").replaceChildren(...items);
}

async function runSearch(form, queryRow, label) {
  const run = ++state.search;
  releaseUrls("search");
  $("search-query").replaceChildren(...queryRow);
  $("search-results").replaceChildren();
  $("search-order").hidden = true;
  say("search", `Searching with ${label}…`);
  try {
    const withPreview = form.has("file") && $("search-preview").checked;
    const answer = await (await api("query", { method: "POST", params: searchParams(withPreview), form })).json();
    if (run !== state.search) return;
    showMatches(answer);
    const found = answer.matches.length;
    say("search", found ? `${count(found, "match", "matches")} for ${label}, best first.`
      : "No gallery entry passes the filters.", "ok");
    if (withPreview) await showReconstruction(form.get("file"), answer.noise_preview, run);
  } catch (error) {
    if (run === state.search) failed("search", error);
  }
}

/** The paper's figure 6 beside the query: the crop, its noise, and the crop regenerated from both halves. */
async function showReconstruction(file, noisePreview, run) {
  const row = $("search-query");
  if (noisePreview) {
    row.append(picture(pngBlobUrl("search", noisePreview), "Noise extracted from the query crop", "noise"));
  }
  const form = new FormData();
  form.append("identity", file);
  form.append("pose", file);
  const response = await api("transfer", { method: "POST", params: [["scale", "2"]], form });
  const url = trackUrl("search", URL.createObjectURL(await response.blob()));
  if (run !== state.search) return;
  row.append(picture(url, "The query crop regenerated from its identity code and noise", "regenerated"));
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const file = $("search-file").files[0];
  if (!file) {
    say("search", "Pick a query crop first.", "error");
    return;
  }
  const form = new FormData();
  form.append("file", file);
  releaseUrls("search-file"); // apart from "search", which runSearch releases after this URL is made
  const url = trackUrl("search-file", URL.createObjectURL(file));
  runSearch(form, [picture(url, `Query crop ${file.name}`, "query")], `the crop ${file.name}`);
});

function searchFromEntry(entry) {
  location.hash = "#search";
  const form = new FormData();
  form.append("entry_id", String(entry.entry_id));
  const query = el("figure", {}, thumbnail("search", entry), el("figcaption", { text: `entry ${entry.entry_id}` }));
  runSearch(form, [query], `entry ${entry.entry_id} (person ${entry.person_id})`);
}

// ---- enrol ---------------------------------------------------------------------------------------------------

function enrolRow(file) {
  const url = trackUrl("enrol", URL.createObjectURL(file));
  const person = el("input", { className: "person", "aria-label": `Person id for ${file.name}`, required: true,
    value: $("enrol-person-all").value });
  const camera = el("input", { className: "camera", "aria-label": `Camera for ${file.name}`,
    value: $("enrol-camera-all").value });
  const row = el("li", { className: "row" },
    el("img", { src: url, alt: `Crop ${file.name}`, width: 32, height: 64 }),
    el("span", { className: "name", text: file.name }),
    el("label", {}, "Person id ", person),
    el("label", {}, "Camera ", camera),
    el("output", { className: "result", "aria-live": "polite" }));
  rowFiles.set(row, file);
  return row;
}

$("enrol-files").addEventListener("change", () => {
  releaseUrls("enrol");
  $("enrol-rows").replaceChildren(...[...$("enrol-files").files].map(enrolRow));
  $("enrol-progress").hidden = true;
  say("enrol", "");
});

$("enrol-fill").addEventListener("click", () => {
  for (const row of $("enrol-rows").children) {
    if ($("enrol-person-all").value) row.querySelector(".person").value = $("enrol-person-all").value;
    if ($("enrol-camera-all").value) row.querySelector(".camera").value = $("enrol-camera-all").value;
  }
});

async function enrolOne(row) {
  const result = row.querySelector(".result");
  const personId = row.querySelector(".person").value;
  if (!personId.trim()) throw new Error("a person id is needed");
  const form = new FormData();
  form.append("files", rowFiles.get(row));
  form.append("person_id", personId);
  form.append("camera", row.querySelector(".camera").value);
  result.textContent = "sending…";
  const answer = await (await api("gallery", { method: "POST", form })).json();
  return answer.entries[0];
}

$("enrol-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const rows = [...$("enrol-rows").children].filter((row) => row.dataset.state !== "done");
  if (!rows.length) {
    say("enrol", "Pick crops to enrol first.", "error");
    return;
  }
  const progress = $("enrol-progress");
  Object.assign(progress, { hidden: false, max: rows.length, value: 0 });
  let done = 0;
  for (const row of rows) {
    const result = row.querySelector(".result");
    try {
      const entry = await enrolOne(row);
      row.dataset.state = "done";
      result.textContent = `enrolled as entry ${entry.entry_id}`;
      done += 1;
    } catch (error) {
      row.dataset.state = "error";
      result.textContent = explain(error);
    }
    progress.value += 1;
    say("enrol", `${progress.value} of ${rows.length} sent…`);
  }
  const errors = rows.length - done;
  say("enrol", `${done} of ${rows.length} crops enrolled${errors ? `; ${errors} refused, see beside each file` : ""}.`,
    errors ? "error" : "ok");
  refreshServer();
});

// ---- gallery -------------------------------------------------------------------------------------------------

let confirmation = null; // resolves the question the dialog shows now

function settle(ok) {
  const resolve = confirmation;
  confirmation = null;
  resolve?.(ok);
}

function confirmDelete(message) {
  settle(false);
  $("confirm-message").textContent = message;
  $("confirm").showModal();
  return new Promise((resolve) => { confirmation = resolve; });
}

for (const [button, ok] of [["confirm-cancel", false], ["confirm-ok", true]]) {
  $(button).addEventListener("click", () => {
    settle(ok);
    $("confirm").close();
  });
}
// Escape. The close event comes a task later: one that finds the dialog open again is an earlier showing's.
$("confirm").addEventListener("close", () => {
  if (!$("confirm").open) settle(false);
});

async function remove(path, question, done) {
  if (!(await confirmDelete(await question))) return;
  try {
    const answer = await (await api(path, { method: "DELETE" })).json();
    await loadGallery();
    say("gallery", `${done}: ${count(answer.removed, "entry", "entries")} removed.`, "ok");
    $("gallery-title").focus(); // the pressed button is gone with the redrawn list
    refreshServer();
  } catch (error) {
    failed("gallery", error);
  }
}

/** Whether DELETE /gallery/persons/{person_id} can name this person: URLs fold a "." or ".." segment away, even
 * percent-encoded (an encoded "/" is fine: it splits no segment, and the route takes the rest of the path). */
function addressable(personId) {
  return personId !== "." && personId !== "..";
}

/** "Delete every entry of person X (n entries)?": the listing's total for that person says how many go. */
async function personQuestion(personId) {
  const question = `Delete every entry of person ${personId}`;
  try {
    const params = [["person_id", personId], ["limit", "1"]];
    const { total } = await (await api("gallery/entries", { params })).json();
    return `${question} (${count(total, "entry", "entries")})?`;
  } catch {
    return `${question}?`;
  }
}

function galleryCard(entry) {
  const removeEntry = () => remove(`gallery/entries/${entry.entry_id}`,
    `Delete entry ${entry.entry_id} of person ${entry.person_id}?`, `Entry ${entry.entry_id} deleted`);
  const removePerson = () => (addressable(entry.person_id)
    ? remove(`gallery/persons/${encodeURIComponent(entry.person_id)}`, personQuestion(entry.person_id),
      `Person ${entry.person_id} deleted`)
    : say("gallery", `The API cannot delete person ${entry.person_id} at once (its id cannot be part of a URL ` +
      "path): delete its entries one by one.", "error"));
  return el("li", { className: "tile", "data-entry-id": entry.entry_id },
    thumbnail("gallery", entry),
    entryFacts(entry),
    entryActions(entry,
      el("button", { type: "button", className: "danger", text: "Delete entry", onclick: removeEntry }),
      el("button", { type: "button", className: "danger", text: "Delete person", onclick: removePerson })));
}

async function loadGallery() {
  const params = [["offset", state.galleryOffset], ["limit", PAGE_SIZE]];
  if (state.galleryPerson) params.push(["person_id", state.galleryPerson]);
  say("gallery", "Loading…");
  try {
    const [page, counts] = await Promise.all([
      api("gallery/entries", { params }).then((r) => r.json()),
      api("gallery").then((r) => r.json()),
    ]);
    if (!page.entries.length && page.offset > 0) {
      state.galleryOffset = Math.max(0, Math.floor((page.total - 1) / PAGE_SIZE) * PAGE_SIZE);
      return loadGallery();
    }
    releaseUrls("gallery");
    const persons = count(counts.persons, "person", "persons");
    $("gallery-counts").textContent = `The gallery holds ${count(counts.entries, "entry", "entries")} of ${persons}.`;
    $("gallery-entries").replaceChildren(...page.entries.map(galleryCard));
    const first = page.entries.length ? page.offset + 1 : 0;
    const filter = state.galleryPerson ? ` for person ${state.galleryPerson}` : "";
    $("gallery-range").textContent = `${first}–${page.offset + page.entries.length} of ${page.total}${filter}`;
    $("gallery-prev").disabled = page.offset === 0;
    $("gallery-next").disabled = page.offset + page.entries.length >= page.total;
    say("gallery", "");
  } catch (error) {
    failed("gallery", error);
  }
}

$("gallery-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.galleryPerson = $("gallery-person").value;
  state.galleryOffset = 0;
  loadGallery();
});

$("gallery-clear").addEventListener("click", () => {
  $("gallery-person").value = "";
  state.galleryPerson = "";
  state.galleryOffset = 0;
  loadGallery();
});

$("gallery-prev").addEventListener("click", () => {
  state.galleryOffset = Math.max(0, state.galleryOffset - PAGE_SIZE);
  loadGallery();
});

$("gallery-next").addEventListener("click", () => {
  state.galleryOffset += PAGE_SIZE;
  loadGallery();
});

// ---- transfer ------------------------------------------------------------------------------------------------

function chooseIdentity(kind) {
  document.querySelector(`input[name="identity"][value="${kind}"]`).checked = true;
}

$("transfer-entry").addEventListener("input", () => chooseIdentity("entry"));
$("transfer-identity").addEventListener("change", () => chooseIdentity("crop"));

$("transfer-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  releaseUrls("transfer");
  const byEntry = document.querySelector('input[name="identity"]:checked').value === "entry";
  const pose = $("transfer-pose").files[0];
  const identityFile = $("transfer-identity").files[0];
  const entryId = $("transfer-entry").value;
  if (!pose || (byEntry ? !entryId : !identityFile)) {
    say("transfer", `Pick ${byEntry ? "an entry id" : "an identity crop"} and a pose crop first.`, "error");
    return;
  }
  const form = new FormData();
  if (byEntry) form.append("identity_entry_id", entryId);
  else form.append("identity", identityFile);
  form.append("pose", pose);
  const identity = byEntry
    ? el("figure", {}, thumbnail("transfer", { entry_id: entryId }),
      el("figcaption", { text: `identity: entry ${entryId}` }))
    : picture(trackUrl("transfer", URL.createObjectURL(identityFile)), `Identity crop ${identityFile.name}`,
      "identity");
  const poseFigure = picture(trackUrl("transfer", URL.createObjectURL(pose)), `Pose crop ${pose.name}`, "pose");
  $("transfer-result").replaceChildren(identity, poseFigure);
  say("transfer", "Rendering…");
  try {
    const params = [["scale", $("transfer-scale").value || "1"]];
    const response = await api("transfer", { method: "POST", params, form });
    const url = trackUrl("transfer", URL.createObjectURL(await response.blob()));
    const who = byEntry ? `the person of entry ${entryId}` : `the person of ${identityFile.name}`;
    const result = el("figure", { className: "rendered" },
      el("img", { id: "transfer-image", src: url, alt: `${who} rendered in the pose of ${pose.name}` }),
      el("figcaption", { text: "rendered" }));
    $("transfer-result").append(result);
    say("transfer", `Rendered ${who} in the pose of ${pose.name}.`, "ok");
  } catch (error) {
    failed("transfer", error);
  }
});

// ---- views and start-up --------------------------------------------------------------------------------------

const VIEWS = ["search", "enrol", "gallery", "transfer"];

function showView() {
  const name = VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "search";
  for (const view of VIEWS) $(view).hidden = view !== name;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.getAttribute("href") === `#${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (name === "gallery") loadGallery();
  return name;
}

/** A rate as a percentage with at most one decimal: 0.0382 -> "3.8", 0.52 -> "52", 1 -> "100". */
function percent(rate) {
  return String(Number((100 * rate).toFixed(1)));
}

/** The match threshold, and what it means per query at the gallery's size when the model measured that. */
function thresholdText(health) {
  if (state.threshold === null) return "no match threshold";
  const text = `match threshold ${state.threshold.toFixed(3)}`;
  const estimate = health.false_match_rate_at_gallery_size;
  if (!estimate) return text;
  return `${text}: a stranger's best match passes it in about ${percent(estimate.rate)}% of queries at this ` +
    "gallery size";
}

/** The header line: what the server runs and where the match threshold sits (GET /health needs no key). */
async function refreshServer() {
  try {
    const health = await (await api("health")).json();
    state.threshold = health.match_threshold ?? null;
    const threshold = thresholdText(health);
    $("server").textContent = `${count(health.index_size, "entry", "entries")}, ` +
      `${count(health.persons, "person", "persons")}; ${threshold}; ` +
      `${health.providers[0] ?? "no provider"}`;
  } catch (error) {
    $("server").textContent = `Server status unknown: ${error.message}`;
  }
}

window.addEventListener("hashchange", () => {
  const name = showView();
  $(`${name}-title`).focus();
});
document.querySelectorAll(".drop").forEach(dropZone);
await refreshServer();
showView();
document.body.dataset.ready = "true";
