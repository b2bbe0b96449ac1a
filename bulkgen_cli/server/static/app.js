// The bulkgen dashboard: plain DOM, no framework, nothing fetched from elsewhere.
//
// Everything that comes from the store or the service is text: nodes are built with
// textContent (el() below), never innerHTML, so a topic such as <img onerror=...> shows as typed.
//
// The token lives in this tab's sessionStorage and goes out only in an Authorization header.
// The live stream is read with fetch() and a stream parser rather than EventSource: EventSource
// cannot send headers, and a token in the URL would land in access logs, proxies and history.
"use strict";

(function () {
  const TOKEN_KEY = "bulkgen.token";
  const STATE_WORDS = {
    queued: "Waiting to start", processing: "In progress", paused: "Paused",
    completed: "Finished", cancelled: "Cancelled",
  };
  const STATE_NOTES = {
    queued: "Waiting in the queue: it starts when the jobs before it are done.",
    processing: "Articles are being written one after another.",
    paused: "Paused: no new article starts until you resume it. An article that was being written is finished and kept.",
    completed: "Every article has been handled.",
    cancelled: "Cancelled: articles not written by then will not be written. Finished ones are kept.",
  };
  const ITEM_WORDS = {
    queued: "Waiting", processing: "Being written", completed: "Done", failed: "Failed", cancelled: "Cancelled",
  };
  // The state rules (docs/guide.md, "The state rules"): which buttons do something in which state.
  const ACTIONS = [
    { action: "pause", label: "Pause", help: "Stop starting new articles; resume later." },
    { action: "resume", label: "Resume", help: "Carry on where it stopped." },
    { action: "retry-failed", label: "Retry failed articles", help: "Write the failed articles again." },
    { action: "cancel", label: "Cancel job", help: "Stop for good; finished articles are kept.", danger: true },
  ];
  const DONE_MESSAGES = {
    pause: "Paused. No new article starts; one being written is finished and kept.",
    resume: "Resumed: back in the queue at its old place.",
    cancel: "Cancelled. Finished articles are kept.",
    "retry-failed": "The failed articles are queued again.",
  };
  const MAX_JOBS = 50;
  const RECONNECT_MAX_MS = 30000;

  const $ = (id) => document.getElementById(id);
  const state = {
    token: null, admin: false, jobs: new Map(), lastEventId: null, stream: null,
    retryMs: 2000, loaded: false, pendingCancel: null,
  };

  // -- DOM helpers: text only ----------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  // -- the API ------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && (problem.detail || problem.title)) || `the server answered ${status}`);
      this.status = status;
      this.problem = problem || {};
    }
  }

  async function api(path, options) {
    if (!state.token) throw new ApiError(401, null); // signed out meanwhile (a late timer): ask nothing
    const opts = options || {};
    const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, opts.headers || {});
    const response = await fetch(path, Object.assign({}, opts, { headers, cache: "no-store" }));
    if (response.status === 401) {
      signOut("This token is not accepted any more (unknown or revoked). Sign in with a valid one.");
      throw new ApiError(401, null);
    }
    if (!response.ok) {
      let problem = null;
      try { problem = await response.json(); } catch (e) { problem = null; }
      throw new ApiError(response.status, problem);
    }
    return response;
  }

  async function apiJson(path, options) {
    return (await api(path, options)).json();
  }

  // -- signing in and out -------------------------------------------------------------------------

  async function signIn(token, remember) {
    state.token = token;
    let me;
    try {
      const response = await fetch("/api/me", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
      if (response.status === 401) sessionStorage.removeItem(TOKEN_KEY);
      if (response.status === 401) return showSignIn("This token is not valid (unknown or revoked). Check it and try again.");
      if (!response.ok) return showSignIn(`The server could not check the token (it answered ${response.status}). Try again shortly.`);
      me = await response.json();
    } catch (e) {
      return showSignIn("The server cannot be reached. Check that bulkgen serve is running, then try again.");
    }
    if (remember) sessionStorage.setItem(TOKEN_KEY, token);
    state.admin = Boolean(me.admin);
    setText($("who"), me.admin ? `Signed in as ${me.user} (sees every user's jobs)` : `Signed in as ${me.user}`);
    $("sign-in").hidden = true;
    $("session").hidden = false;
    $("token").value = "";
    route();
    follow();
  }

  function showSignIn(message) {
    state.token = null;
    $("sign-in").hidden = false;
    $("app").hidden = true;
    $("article").hidden = true;
    $("session").hidden = true;
    setText($("sign-in-error"), message || "");
    $("sign-in-error").className = message && message.startsWith("Signed out") ? "message" : "message error";
    $("token").focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (state.stream) state.stream.abort();
    state.stream = null;
    state.jobs.clear();
    state.lastEventId = null;
    state.loaded = false;
    $("jobs").replaceChildren();
    setText($("upload-result"), "");
    showSignIn(message);
  }

  // -- the live stream ----------------------------------------------------------------------------

  function setLive(on, text) {
    const live = $("live");
    live.className = on ? "live on" : "live off";
    setText(live, text);
  }

  async function follow() {
    const controller = new AbortController();
    state.stream = controller;
    while (!controller.signal.aborted) {
      try {
        await readStream(controller);
      } catch (e) {
        if (controller.signal.aborted) return;
      }
      if (controller.signal.aborted) return;
      setLive(false, "Connection lost: reconnecting…");
      await new Promise((resolve) => setTimeout(resolve, state.retryMs));
      state.retryMs = Math.min(state.retryMs * 2, RECONNECT_MAX_MS);
    }
  }

  async function readStream(controller) {
    const headers = { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" };
    if (state.lastEventId !== null) headers["Last-Event-ID"] = state.lastEventId;
    const response = await fetch("/api/events", { headers, signal: controller.signal, cache: "no-store" });
    if (response.status === 401) {
      signOut("This token is not accepted any more (unknown or revoked). Sign in with a valid one.");
      return;
    }
    if (!response.ok || !response.body) throw new Error(`events: ${response.status}`);
    state.retryMs = 2000;
    setLive(true, "Live updates on");
    // Without a position in the stream (no event seen yet) only a fresh read can catch up.
    if (!state.loaded || state.lastEventId === null) loadJobs();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = sseParser(onEvent);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      parser(value);
    }
  }

  // The text/event-stream format: fields per line, an event per blank line, ":" comments.
  function sseParser(dispatch) {
    let buffer = "";
    let fields = { data: [] };
    return function (chunk) {
      buffer += chunk;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (fields.data.length) dispatch(fields.event || "message", fields.data.join("\n"), fields.id);
          fields = { data: [] };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (name === "data") fields.data.push(value);
        else if (name === "event") fields.event = value;
        else if (name === "id") fields.id = value;
        else if (name === "retry" && /^\d+$/.test(value)) state.retryMs = Number(value);
      }
    };
  }

  function onEvent(name, text, id) {
    if (id !== undefined) state.lastEventId = id;
    // The server no longer keeps the events since our last one (its retention window): read the jobs again.
    if (name === "reset") {
      loadJobs();
      return;
    }
    let data;
    try { data = JSON.parse(text); } catch (e) { return; }
    const job = state.jobs.get(data.bulk_job_id);
    if (!job) {
      loadJob(data.bulk_job_id);
      return;
    }
    if (data.progress) applyProgress(job, data.progress);
    if (name.startsWith("bulk.")) job.bulk.status = data.status;
    if (data.item && job.items) {
      const item = job.items.find((i) => i.id === data.item.id);
      if (item) Object.assign(item, { status: data.item.status, error: data.item.error });
    }
    render(job);
    refreshSoon(job);
  }

  function applyProgress(job, progress) {
    job.progress = progress;
    Object.assign(job.bulk, {
      total_items: progress.total, completed_items: progress.completed,
      failed_items: progress.failed, cancelled_items: progress.cancelled,
    });
  }

  // The event carries the counts; the job's estimate and error summary are read again, at most
  // every half second per job.
  function refreshSoon(job) {
    if (job.refreshTimer) return;
    job.refreshTimer = setTimeout(() => {
      job.refreshTimer = null;
      loadJob(job.bulk.id);
    }, 500);
  }

  // -- loading jobs -------------------------------------------------------------------------------

  async function loadJobs() {
    state.loaded = true;
    try {
      const bulks = await apiJson(`/api/bulk-generate?limit=${MAX_JOBS}`);
      $("jobs-error").hidden = true;
      for (const bulk of bulks) upsert({ bulk_job: bulk, progress: progressOf(bulk), jobs: null });
      await Promise.all(bulks.map((bulk) => loadJob(bulk.id)));
    } catch (e) {
      if (e.status === 401) return;
      state.loaded = false;
      $("jobs-error").hidden = false;
      setText($("jobs-error"), `Your jobs could not be loaded: ${e.message} Reload the page to try again.`);
    } finally {
      $("jobs-loading").hidden = true;
      showEmpty();
    }
  }

  async function loadJob(id) {
    try {
      const doc = await apiJson(`/api/bulk-generate/${encodeURIComponent(id)}`);
      upsert(doc);
    } catch (e) {
      // A job that vanished or a passing failure: the next event or reload shows it again.
    }
  }

  function progressOf(bulk) {
    const done = bulk.completed_items + bulk.failed_items + bulk.cancelled_items;
    return {
      total: bulk.total_items, completed: bulk.completed_items, failed: bulk.failed_items,
      cancelled: bulk.cancelled_items, remaining: bulk.total_items - done,
      percentage: bulk.total_items ? Math.floor((done * 100) / bulk.total_items) : 100,
    };
  }

  function upsert(doc) {
    let job = state.jobs.get(doc.bulk_job.id);
    if (!job) {
      job = { bulk: doc.bulk_job, progress: doc.progress, items: null, view: buildCard(doc.bulk_job) };
      state.jobs.set(job.bulk.id, job);
      place(job);
    }
    job.bulk = doc.bulk_job;
    job.progress = doc.progress;
    if (doc.jobs) job.items = doc.jobs;
    render(job);
    showEmpty();
    return job;
  }

  // Newest first, by the time each job was created.
  function place(job) {
    const list = $("jobs");
    const after = [...state.jobs.values()]
      .filter((other) => other !== job && other.view.card.isConnected && other.bulk.created_at < job.bulk.created_at)
      .sort((a, b) => (a.bulk.created_at < b.bulk.created_at ? 1 : -1))[0];
    list.insertBefore(job.view.card, after ? after.view.card : null);
  }

  function showEmpty() {
    $("jobs-empty").hidden = state.jobs.size > 0 || !state.loaded;
  }

  // -- a job's card -------------------------------------------------------------------------------

  function buildCard(bulk) {
    const titleId = `job-${bulk.id}-title`;
    const v = {};
    v.name = el("h3", { id: titleId });
    v.badge = el("span", { className: "badge" });
    v.bar = el("progress", { max: 1, value: 0 });
    v.summary = el("p", { className: "summary" });
    v.now = el("p", { className: "now" });
    v.note = el("p", { className: "note" });
    v.errorList = el("ul");
    v.errors = el("div", { className: "errors" }, el("p", { text: "What went wrong:" }), v.errorList);
    v.buttons = {};
    const actions = el("div", { className: "actions", role: "group", "aria-label": "What to do with this job" });
    for (const spec of ACTIONS) {
      const button = el("button", { type: "button", className: spec.danger ? "danger" : null, title: spec.help,
                                    onclick: () => act(bulk.id, spec.action) }, spec.label);
      v.buttons[spec.action] = button;
      actions.append(button);
    }
    v.result = el("p", { className: "message", role: "status" });
    v.itemsSummary = el("summary");
    v.rows = new Map();
    v.tbody = el("tbody");
    // On a narrow screen the table scrolls sideways inside its box; the page itself never does.
    v.details = el("details", { className: "items" }, v.itemsSummary, el("div", { className: "table-scroll" },
      el("table", {},
        el("caption", { className: "visually-hidden", text: "The articles of this job" }),
        el("thead", {}, el("tr", {}, ...["#", "Article", "State", "Tries", "Problem", ""].map(
          (h) => el("th", { scope: "col", text: h })))),
        v.tbody)));
    v.meta = el("p", { className: "meta" });
    v.card = el("li", { className: "job" }, el("article", { "aria-labelledby": titleId },
      el("div", { className: "job-head" }, v.name, v.badge), v.bar, v.summary, v.now, v.note, v.errors,
      actions, v.result, v.details, v.meta));
    return v;
  }

  function render(job) {
    const { bulk, progress, view: v } = job;
    const status = bulk.status;
    const troubled = status === "completed" && progress.failed > 0;
    v.card.className = `job state-${status}${troubled ? " troubled" : ""}`;
    setText(v.name, bulk.name);
    setText(v.badge, troubled ? `Finished, ${progress.failed} failed` : STATE_WORDS[status] || status);
    // The bar fills with the articles written; the failed share shows red on the track after it, so a
    // job that ended with failures (or was cancelled) never reads as a full bar.
    v.bar.max = Math.max(progress.total, 1);
    v.bar.value = progress.completed;
    const share = (n) => `${((100 * n) / Math.max(progress.total, 1)).toFixed(2)}%`;
    v.bar.style.setProperty("--failed-from", share(progress.completed));
    v.bar.style.setProperty("--failed-to", share(progress.completed + progress.failed));
    v.bar.setAttribute("aria-label", `${bulk.name}: ${progress.completed} of ${progress.total} articles written` +
      (progress.failed ? `, ${progress.failed} failed` : ""));
    setText(v.summary, summaryLine(bulk, progress));
    renderNow(job);
    setText(v.note, noteFor(bulk, progress));
    renderErrors(job);
    for (const spec of ACTIONS) v.buttons[spec.action].disabled = !allowed(spec.action, bulk, progress);
    renderItems(job);
    setText(v.meta, metaLine(bulk));
  }

  // The failed articles, each with a plain reason first and the service's own words in a details
  // element; before the articles are read, the job's error_summary as it is.
  function renderErrors(job) {
    const { bulk, view: v } = job;
    const failed = (job.items || []).filter((i) => i.status === "failed");
    let lines;
    if (job.items) {
      lines = failed.slice(0, 20).map((item) => el("li", {}, `#${item.queue_position} “${labelOf(item)}”: `,
        ...reasonNodes(item.error)));
      if (failed.length > 20) lines.push(el("li", { text: `… and ${failed.length - 20} more failed articles` }));
    } else {
      lines = (bulk.error_summary || []).map((e) => el("li", { text: e }));
    }
    v.errorList.replaceChildren(...lines);
    v.errors.hidden = !lines.length;
  }

  function reasonNodes(error) {
    if (!error) return [];
    const sentence = plainReason(error);
    if (sentence === error) return [sentence];
    return [sentence, " ", el("details", { className: "raw" }, el("summary", { text: "What the service said" }),
      el("code", { text: error }))];
  }

  // An item's error as a sentence for a reader (the raw text stays available beside it).
  function plainReason(error) {
    const raw = error.replace(/\s*\(gave up after (\d+) tries\)$/, "");
    const gaveUp = raw !== error ? ` (gave up after ${/(\d+) tries\)$/.exec(error)[1]} tries)` : "";
    let match = /^HTTP (\d{3})(?: \([^)]*\))?: ([\s\S]*)$/.exec(raw);
    if (match) {
      const code = Number(match[1]);
      const reason = serviceReason(match[2]);
      if (code === 429) return `The writing service kept asking to slow down${gaveUp}: ${reason}`;
      if (code >= 500 || code === 408) return `The writing service had a problem of its own${gaveUp}: ${reason}`;
      return `The writing service refused this article: ${reason}`;
    }
    if ((match = /^the service refused it: ([\s\S]*)$/.exec(raw))) {
      return `The writing service refused this article: ${match[1]}`;
    }
    if (raw.startsWith("quality: ")) return `The quality check turned this article down: ${raw.slice(9)}`;
    if (/^cannot connect to /.test(raw)) return `The writing service could not be reached${gaveUp}.`;
    if (/^no reply within /.test(raw)) return `The writing service did not answer in time${gaveUp}.`;
    if (/^connection failed/.test(raw)) return `The connection to the writing service failed${gaveUp}.`;
    if (/^HTTP \d{3} reply /.test(raw)) return "The writing service sent a reply bulkgen cannot read.";
    if (raw === "the service replied success but sent no content") return "The writing service sent an empty article.";
    return error;
  }

  // The reason inside a service's reply: its JSON `error` (or `message`, `detail`), else the text.
  function serviceReason(body) {
    try {
      const doc = JSON.parse(body);
      const said = doc && (doc.error || doc.message || doc.detail);
      if (typeof said === "string" && said.trim()) return said.trim();
    } catch (e) { /* not JSON: the text itself */ }
    return body.trim() || "no reason given";
  }

  function summaryLine(bulk, p) {
    const parts = [`${p.completed} of ${p.total} articles done`];
    if (p.failed) parts.push(`${p.failed} failed`);
    if (p.cancelled) parts.push(`${p.cancelled} cancelled`);
    if (p.remaining) parts.push(`${p.remaining} to go`);
    const eta = etaWords(bulk);
    if (eta) parts.push(eta);
    return parts.join(" · ");
  }

  function etaWords(bulk) {
    if (bulk.status === "paused") return "no time estimate while paused";
    if (bulk.status !== "processing" && bulk.status !== "queued") return null;
    if (!bulk.estimated_completion) return bulk.status === "processing" ? "working out the time left" : null;
    const minutes = (Date.parse(bulk.estimated_completion) - Date.now()) / 60000;
    if (minutes < 1) return "less than a minute left";
    if (minutes < 90) return `about ${Math.round(minutes)} min left`;
    return `about ${Math.floor(minutes / 60)} h ${Math.round(minutes % 60)} min left`;
  }

  function renderNow(job) {
    const current = (job.items || []).find((i) => i.status === "processing");
    job.view.now.hidden = !current;
    if (current) setText(job.view.now, `Now writing: #${current.queue_position} “${labelOf(current)}”`);
  }

  function noteFor(bulk, p) {
    if (bulk.status === "queued" && bulk.not_before && Date.parse(bulk.not_before) > Date.now()) {
      return `Scheduled: nothing starts before ${new Date(bulk.not_before).toLocaleString()}.`;
    }
    if (bulk.status === "completed" && p.failed) {
      return `${plural(p.failed, "article")} could not be written (reasons below). “Retry failed articles” tries them again.`;
    }
    return STATE_NOTES[bulk.status] || "";
  }

  function allowed(action, bulk, p) {
    switch (action) {
      case "pause": return bulk.status === "queued" || bulk.status === "processing";
      case "resume": return bulk.status === "paused";
      case "cancel": return ["queued", "processing", "paused"].includes(bulk.status);
      case "retry-failed": return bulk.status === "completed" && p.failed > 0;
      default: return false;
    }
  }

  function metaLine(bulk) {
    const when = bulk.created_at ? new Date(bulk.created_at).toLocaleString() : "";
    const who = state.admin ? ` by ${bulk.userId}` : "";
    return `Submitted ${when}${who} · ${bulk.mode} articles · job ${bulk.id}`;
  }

  function labelOf(item) {
    const value = item.topic ?? item.trend ?? item.source_text ?? item.source_url ?? item.keywords;
    const text = Array.isArray(value) ? value.join(", ") : String(value ?? `Article ${item.queue_position}`);
    return text.length > 140 ? `${text.slice(0, 139)}…` : text;
  }

  // -- a job's articles ---------------------------------------------------------------------------

  function renderItems(job) {
    const v = job.view;
    const items = job.items || [];
    const failed = items.filter((i) => i.status === "failed").length;
    setText(v.itemsSummary, items.length
      ? `Show the ${items.length} articles${failed ? ` (${failed} with a problem)` : ""}`
      : "Articles: loading…");
    for (const item of items) {
      let row = v.rows.get(item.id);
      if (!row) {
        row = buildRow(item);
        v.rows.set(item.id, row);
        v.tbody.append(row.tr);
      }
      updateRow(row, item);
    }
  }

  function buildRow(item) {
    const row = {
      state: el("span", { className: "state" }), tries: el("td"), error: el("td", { className: "error-text" }), errorText: null,
      link: el("a", { href: `#/article/${encodeURIComponent(item.id)}` }),
    };
    row.linkCell = el("td", {}, row.link);
    row.tr = el("tr", {}, el("td", { text: String(item.queue_position) }), el("td", { text: labelOf(item) }),
      el("td", {}, row.state), row.tries, row.error, row.linkCell);
    return row;
  }

  function updateRow(row, item) {
    row.tr.className = `item-${item.status}`;
    setText(row.state, ITEM_WORDS[item.status] || item.status);
    row.state.className = `state state-${item.status}`;
    setText(row.tries, item.attempts ? String(item.attempts) : "");
    if (row.errorText !== (item.error || "")) {
      row.errorText = item.error || "";
      row.error.replaceChildren(...reasonNodes(item.error));
    }
    row.link.hidden = item.status !== "completed";
    setText(row.link, "Read the article");
    row.link.setAttribute("aria-label", `Read article ${item.queue_position}: ${labelOf(item)}`);
  }

  // -- the buttons --------------------------------------------------------------------------------

  async function act(bulkId, action) {
    const job = state.jobs.get(bulkId);
    if (!job) return;
    if (action === "cancel" && !(await confirmCancel(job))) return;
    const v = job.view;
    v.result.className = "message";
    setText(v.result, "Working…");
    try {
      const answer = await apiJson(`/api/bulk-generate/${encodeURIComponent(bulkId)}/${action}`, { method: "POST" });
      Object.assign(job.bulk, answer.bulk_job);
      applyProgress(job, answer.progress);
      setText(v.result, answer.changed ? DONE_MESSAGES[action] : `Nothing to do: the job is already ${STATE_WORDS[answer.bulk_job.status].toLowerCase()}.`);
      render(job);
      refreshSoon(job);
    } catch (e) {
      v.result.className = "message error";
      setText(v.result, `Could not ${action.replace("-", " ")}: ${e.message}`);
      refreshSoon(job);
    }
  }

  function confirmCancel(job) {
    const dialog = $("confirm-cancel");
    const left = job.progress.remaining;
    setText($("confirm-title"), `Cancel “${job.bulk.name}”?`);
    setText($("confirm-text"), `${plural(left, "article")} not written yet will not be written. ` +
      "Articles already finished are kept. This cannot be undone.");
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "cancel"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  // -- uploading a file ---------------------------------------------------------------------------

  let idempotencyKey = null;

  function newKey() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function upload(event) {
    event.preventDefault();
    const input = $("file");
    const out = $("upload-result");
    const file = input.files && input.files[0];
    if (!file) return uploadMessage("Choose a file first: a YAML or CSV file of 10 to 50 articles.", true);
    const body = new FormData();
    body.append("file", file, file.name);
    const name = $("job-name").value.trim();
    if (name) body.append("name", name);
    const button = $("upload-button");
    button.disabled = true;
    out.replaceChildren(el("p", { className: "message", text: `Checking ${file.name}…` }));
    try {
      const answer = await apiJson("/api/bulk-generate", {
        method: "POST", body, headers: { "Idempotency-Key": idempotencyKey || (idempotencyKey = newKey()) } });
      const job = await loadJob(answer.bulk_job_id).then(() => state.jobs.get(answer.bulk_job_id));
      const label = job ? `“${job.bulk.name}”` : "the job";
      uploadMessage(`Queued ${label}: ${plural(answer.total_items, "article")}. Follow it below.`, false);
      $("upload-form").reset();
      idempotencyKey = null;
    } catch (e) {
      if (e.status !== 401) showProblems(file.name, e);
    } finally {
      button.disabled = false;
    }
  }

  function uploadMessage(text, isError) {
    $("file").setAttribute("aria-invalid", isError ? "true" : "false");
    $("upload-result").replaceChildren(el("p", { className: isError ? "message error" : "message ok", text }));
  }

  function showProblems(fileName, error) {
    const problems = error.problem.problems || [];
    if (!problems.length) return uploadMessage(`${fileName} was not queued: ${error.message}`, true);
    uploadMessage(`${fileName} was not queued: it has ${plural(problems.length, "problem")}. ` +
      "Nothing was stored. Fix them and upload the file again.", true);
    const csv = /\.csv$/i.test(fileName);
    const list = el("ul", { className: "problems" }, ...problems.map((p) => el("li", {},
      el("span", { className: "where", text: whereOf(p, csv) }), " ", p.message)));
    $("upload-result").append(list);
  }

  // As the CLI locates a problem: "Item 3 (line 14), field “word_cout”:"; a CSV's items are rows.
  function whereOf(problem, csv) {
    const parts = [];
    if (problem.item !== null && problem.item !== undefined) {
      parts.push(`${csv ? "Row" : "Item"} ${problem.item}${problem.line ? ` (line ${problem.line})` : ""}`);
    } else if (problem.line) {
      parts.push(`Line ${problem.line}`);
    }
    if (problem.row !== null && problem.row !== undefined) parts.push(`values row ${problem.row}`);
    if (problem.column) parts.push(`column “${problem.column}”`);
    if (problem.field) parts.push(`field “${problem.field}”`);
    return parts.length ? `${parts.join(", ")}:` : "The file:";
  }

  // -- reading an article -------------------------------------------------------------------------

  const ARTICLE_ROUTE = /^#\/article\/([^/]+)$/;

  function route() {
    if (!state.token) return;
    const match = ARTICLE_ROUTE.exec(location.hash);
    $("app").hidden = Boolean(match);
    $("article").hidden = !match;
    if (match) showArticle(decodeURIComponent(match[1]));
  }

  // One item with its text (GET /api/items/{id}, as `bulkgen show ITEM --json`).
  async function showArticle(itemId) {
    setText($("article-title"), "Article");
    setText($("article-meta"), "");
    $("article-body").hidden = true;
    $("article-error").hidden = true;
    try {
      const record = await apiJson(`/api/items/${encodeURIComponent(itemId)}`);
      setText($("article-title"), (record.front_matter && record.front_matter.title) || labelOf(record));
      setText($("article-meta"), `Article ${record.queue_position} of “${record.bulk_job_name}”` +
        (record.status === "completed" ? "" : ` · ${ITEM_WORDS[record.status] || record.status}`));
      if (record.text === null || record.text === undefined) throw new Error("it has not been written.");
      const blocks = markdownBlocks(record.text);
      // The text usually opens with its title, which the page already shows as the heading.
      if (blocks.length && /^H\d$/.test(blocks[0].tagName) && blocks[0].textContent === $("article-title").textContent) blocks.shift();
      $("article-text").replaceChildren(...blocks);
      setText($("article-front"), Object.entries(record.front_matter || {})
        .map(([key, value]) => `${key}: ${typeof value === "string" ? value : JSON.stringify(value)}`).join("\n"));
      $("article-download").onclick = () => download(record.text, `${record.queue_position}-${record.short_id}.md`);
      $("article-body").hidden = false;
      $("article-title").focus();
    } catch (e) {
      if (e.status === 401) return;
      $("article-error").hidden = false;
      setText($("article-error"), `This article cannot be shown: ${e.message}`);
    }
  }

  // The article's Markdown as a few kinds of blocks (headings, list items, paragraphs), each built
  // with textContent: the text is shown, never interpreted as HTML.
  function markdownBlocks(text) {
    const blocks = [];
    for (const chunk of text.replace(/\r\n?/g, "\n").split(/\n{2,}/)) {
      const heading = /^(#{1,6})\s+(.*)$/s.exec(chunk.trim());
      if (heading) {
        blocks.push(el(`h${Math.min(heading[1].length + 2, 6)}`, { text: heading[2] }));
      } else if (/^\s*[-*] /.test(chunk)) {
        blocks.push(el("ul", {}, ...chunk.split(/\n(?=\s*[-*] )/).map((line) => el("li", { text: line.replace(/^\s*[-*] /, "") }))));
      } else if (chunk.trim()) {
        blocks.push(el("p", { text: chunk.trim() }));
      }
    }
    return blocks;
  }

  function download(text, name) {
    const url = URL.createObjectURL(new Blob([text], { type: "text/markdown" }));
    const a = el("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  // -- start --------------------------------------------------------------------------------------

  function start() {
    $("sign-in-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (!token) return showSignIn("Paste your access token first.");
      signIn(token, true);
    });
    $("sign-out").addEventListener("click", () => signOut("Signed out. This tab no longer keeps your token."));
    $("upload-form").addEventListener("submit", upload);
    $("file").addEventListener("change", () => { idempotencyKey = newKey(); });
    $("article-title").setAttribute("tabindex", "-1");
    window.addEventListener("hashchange", route);
    // Times and estimates move on even when nothing happens.
    setInterval(() => state.jobs.forEach(render), 15000);
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved, false);
    else showSignIn("");
  }

  document.addEventListener("DOMContentLoaded", start);
})();
