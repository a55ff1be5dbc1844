// Perseus network page: cards per exchange, uptime and state timelines, and the activity feed.
//
// Everything comes from the authenticated JSON API (/api/network/...) with the key the user typed
// once (kept in localStorage). Changes are pushed: the page reads /api/network/events (Server-Sent
// Events) with fetch, because EventSource cannot send the Authorization header and the key must not
// go into a URL. A pushed transition shows at once; polling (every 5 s, ?refresh=) still brings what
// writes no event: heartbeat ages, standbys coming and going, a released or expired status key. When
// the stream drops the page polls at once and reconnects with a growing delay. Ages and "running for" are judged on the server's clock: each answer
// carries serverTime, and the page only adds the time elapsed since that answer arrived, measured
// with the browser's monotonic clock, so a browser whose wall clock is wrong still shows the truth.
// All text is set with textContent: nothing from the API is ever parsed as HTML.
"use strict";

(() => {
  const KEY_STORAGE = "perseus.apiKey";
  const query = new URLSearchParams(location.search);
  // ?refresh=SECONDS (0.5..3600) overrides the 5 s polling interval, e.g. for a wall display or tests.
  const REFRESH_MS = Math.min(3600000, Math.max(500, (Number(query.get("refresh")) || 5) * 1000));
  const STREAM_RETRY_MAX_MS = 30000;
  const HISTORY_MS = 30000; // uptime and timeline change slowly: re-read every 30 s or on a state change
  const PAGE_SIZE = 50;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const ui = {
    banner: $("banner"),
    keyPanel: $("key-panel"),
    keyForm: $("key-form"),
    keyInput: $("key-input"),
    changeKey: $("change-key"),
    network: $("network"),
    cards: $("cards"),
    onlineCount: $("online-count"),
    connection: $("connection"),
    updated: $("updated"),
    feed: $("feed"),
    feedStatus: $("feed-status"),
    loadMore: $("load-more"),
    filterExchange: $("filter-exchange"),
    filterEvent: $("filter-event"),
  };

  const state = {
    key: localStorage.getItem(KEY_STORAGE),
    board: null, // last /instances answer
    receivedAt: 0, // performance.now() when it arrived
    timer: null,
    history: new Map(), // exchangeId -> {uptime, timeline, fetchedAt, state}
    historyAvailable: true,
    historyBusy: false,
    feed: { entries: [], nextCursor: null, filters: null, serverTime: null, receivedAt: 0, busy: false },
    // The push stream: its abort handle, whether it is up, the reconnect delay, the last entry per exchange.
    live: { controller: null, up: false, retryMs: 1000, retryTimer: null, pushed: new Map(), pushedAt: new Map() },
    polls: 0, // successful /instances reads so far
    caller: null, // the key's {name, scope, exchanges} (/api/key): which controls a card shows
    // Exchanges with the failsafe on (/api/network/failsafe, read from Temporal, not Redis):
    // lower-cased name -> {failsafe, line}. Polled with the board, and also while the board cannot
    // be read (a Redis outage is when a holder holds on promises).
    failsafe: new Map(),
    failsafeAvailable: true,
    failsafeBusy: false,
  };

  // --- small helpers ------------------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    return node;
  }

  /** The server's clock now: its last serverTime plus the monotonic time since that answer. */
  function serverNow(serverTime = state.board?.serverTime, receivedAt = state.receivedAt) {
    return Date.parse(serverTime) + (performance.now() - receivedAt);
  }

  function duration(seconds) {
    const s = Math.floor(Math.max(0, seconds));
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m`;
    return "<1m";
  }

  function age(seconds) {
    return seconds < 120 ? `${Math.round(seconds)}s ago` : `${duration(seconds)} ago`;
  }

  /** Livermore's feed times: just now, Xm ago, Xh ago, else the local date and time. */
  function ago(ms, now) {
    const s = (now - ms) / 1000;
    if (s < 60) return "just now";
    if (s < 3600) return `${Math.floor(s / 60)}m ago`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
    return new Date(ms).toLocaleString();
  }

  function when(iso, now) {
    const ms = Date.parse(iso);
    return Number.isNaN(ms) ? "unknown" : ago(ms, now);
  }

  /** Heartbeat colour, judged against the instance's own interval exactly as the server does
   *  (perseus/network.py): late past 1.5 intervals, stale (red) past 2, the renew deadline, when
   *  the holder has stopped its connector. The server's own verdict wins when it sent one. */
  function heartbeatClass(ageS, intervalMs, verdict) {
    if (verdict === "fresh" || verdict === "late" || verdict === "stale") return `hb-${verdict}`;
    const interval = intervalMs > 0 ? intervalMs / 1000 : 15;
    if (ageS > 2 * interval) return "hb-stale";
    if (ageS > 1.5 * interval) return "hb-late";
    return "hb-fresh";
  }

  // --- the API ------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body, message) {
      super(message || body?.error || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, params = {}) {
    const url = new URL(path, location.origin);
    for (const [name, value] of Object.entries(params)) {
      if (value !== null && value !== undefined && value !== "") url.searchParams.append(name, value);
    }
    let response;
    try {
      response = await fetch(url, {
        headers: { Authorization: `Bearer ${state.key}`, Accept: "application/json" },
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, null, "the API did not answer");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  // --- connection state, banner, key --------------------------------------------------------------

  function setConnection(kind, text) {
    ui.connection.className = `pill conn-${kind}`;
    ui.connection.textContent = text;
  }

  function showBanner(kind, text) {
    ui.banner.className = `banner ${kind}`;
    ui.banner.textContent = text;
    ui.banner.hidden = false;
  }

  function hideBanner() {
    ui.banner.hidden = true;
    ui.banner.textContent = "";
  }

  function askForKey() {
    ui.keyPanel.hidden = false;
    ui.keyInput.value = "";
    ui.keyInput.focus();
  }

  function rejectKey(err) {
    clearTimeout(state.timer);
    closeStream();
    localStorage.removeItem(KEY_STORAGE);
    state.key = null;
    state.caller = null;
    state.board = null;
    state.history.clear();
    state.feed = { ...state.feed, entries: [], nextCursor: null, filters: null };
    ui.network.hidden = true;
    ui.cards.replaceChildren();
    ui.feed.replaceChildren();
    ui.onlineCount.textContent = "–";
    ui.changeKey.hidden = true;
    setConnection("offline", "key rejected");
    showBanner("error", `API key rejected (${err.status}): ${err.message}. Enter a valid key.`);
    askForKey();
  }

  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = ui.keyInput.value.trim();
    if (!key) return;
    state.key = key;
    state.caller = null;
    localStorage.setItem(KEY_STORAGE, key);
    closeStream(); // a stream opened with the previous key

    ui.keyPanel.hidden = true;
    hideBanner();
    setConnection("waiting", "connecting…");
    refresh();
  });

  ui.changeKey.addEventListener("click", askForKey);

  // --- the refresh loop ---------------------------------------------------------------------------

  async function refresh() {
    clearTimeout(state.timer);
    if (!state.key) {
      setConnection("waiting", "no API key");
      askForKey();
      return;
    }
    try {
      const asked = performance.now();
      if (!state.caller) state.caller = await api("/api/key");
      const board = keepNewerPushes(await api("/api/network/instances"), asked);
      state.board = board;
      state.receivedAt = performance.now();
      ui.network.hidden = false;
      ui.network.classList.remove("stale");
      ui.changeKey.hidden = false;
      hideBanner();
      showLiveness();
      state.polls += 1;
      document.body.dataset.polls = String(state.polls); // tests tell polls from pushes by this
      renderBoard();
      refreshFailsafe();
      await refreshFeed(false);
      refreshHistory();
      openStream();
    } catch (err) {
      if (!(err instanceof ApiError)) {
        console.error(err);
        showBanner("error", `The page failed to show the answer: ${err.message}`);
        state.timer = setTimeout(refresh, REFRESH_MS);
        return;
      }
      if (err.status === 401 || err.status === 403) {
        rejectKey(err);
        return;
      }
      ui.network.classList.add("stale");
      if (err.status === 503) refreshFailsafe(); // Redis or PostgreSQL away: Temporal may still say who holds
      setConnection("offline", "API offline");
      const what = err.status === 0 ? "API offline" : `API error ${err.status}: ${err.message}`;
      const since = state.board ? ` Showing data from ${age((performance.now() - state.receivedAt) / 1000)}.` : "";
      showBanner("offline", `${what} — retrying every ${REFRESH_MS / 1000}s…${since}`);
    }
    state.timer = setTimeout(refresh, REFRESH_MS);
  }

  function showLiveness() {
    document.body.dataset.live = state.live.up ? "push" : "polling";
    setConnection("live", state.live.up ? "live · push" : `live · every ${REFRESH_MS / 1000}s`);
  }

  // --- the push stream (Server-Sent Events over fetch) ---------------------------------------------

  function closeStream() {
    clearTimeout(state.live.retryTimer);
    const controller = state.live.controller;
    state.live.controller = null;
    state.live.up = false;
    if (controller) controller.abort();
  }

  async function openStream() {
    const live = state.live;
    if (!state.key || live.controller) return;
    clearTimeout(live.retryTimer);
    const controller = new AbortController();
    live.controller = controller;
    try {
      const response = await fetch("/api/network/events", {
        headers: { Authorization: `Bearer ${state.key}`, Accept: "text/event-stream" },
        cache: "no-store",
        signal: controller.signal,
      });
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          onMessage(block);
        }
      }
    } catch (err) {
      // Aborted by us, or the connection dropped: either way the stream is down (handled below).
    }
    if (live.controller !== controller) return; // closed on purpose, or replaced by a newer stream
    live.controller = null;
    const wasUp = live.up;
    live.up = false;
    if (!state.key) return;
    // Fall back to polling at once, and try the stream again later (1 s, doubling to 30 s).
    if (wasUp && state.board && ui.connection.classList.contains("conn-live")) showLiveness();
    clearTimeout(state.timer);
    state.timer = setTimeout(refresh, wasUp ? 0 : REFRESH_MS);
    live.retryTimer = setTimeout(openStream, live.retryMs);
    live.retryMs = Math.min(STREAM_RETRY_MAX_MS, live.retryMs * 2);
  }

  function onMessage(block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
    }
    if (event === "hello") {
      state.live.up = true;
      state.live.retryMs = 1000;
      if (state.board) showLiveness();
      // Catch up on whatever happened while the stream was down.
      clearTimeout(state.timer);
      state.timer = setTimeout(refresh, 0);
    } else if (event === "network" && data.length) {
      try {
        applyPush(JSON.parse(data.join("\n")));
      } catch (err) {
        console.error("bad push message", err);
      }
    }
  }

  /**
   * A poll's answer was read by the server some time after `asked`; a push that arrived since may
   * be newer than it (a transition pushed while the poll was on its way). Such exchanges keep their
   * pushed item, so a slow poll never turns a card back to an older state; the next poll brings
   * what the push did not (a fresher heartbeat, say).
   */
  function keepNewerPushes(board, asked) {
    const current = new Map((state.board?.instances || []).map((i) => [i.exchangeId, i]));
    const newer = (id) => (state.live.pushedAt.get(id) ?? -Infinity) > asked && current.has(id);
    const instances = (board.instances || []).map((i) => (newer(i.exchangeId) ? current.get(i.exchangeId) : i));
    for (const [id, inst] of current) {
      if (newer(id) && !instances.some((i) => i.exchangeId === id)) instances.push(inst);
    }
    return { ...board, instances };
  }

  /** One pushed event: the exchange's fresh item replaces its card, the entry joins the feed. */
  function applyPush(message) {
    if (!state.board) return;
    const entry = message.entry || {};
    const inst = message.instance;
    if (inst) {
      const at = state.board.instances.findIndex((i) => i.exchangeId === inst.exchangeId);
      if (at >= 0) state.board.instances[at] = inst;
      else state.board.instances.push(inst);
      state.live.pushed.set(inst.exchangeId, entry.id);
      state.live.pushedAt.set(inst.exchangeId, performance.now());
    }
    if (message.serverTime) {
      state.board.serverTime = message.serverTime;
      state.receivedAt = performance.now();
    }
    renderBoard();
    const f = filters();
    const name = (entry.exchangeName || "").toLowerCase();
    if (entry.id && (!f.exchange || f.exchange === name) && (!f.event || f.event === entry.event)) {
      const feed = state.feed;
      if (!feed.entries.some((e) => entryKey(e) === entryKey(entry))) {
        feed.entries = [entry].concat(feed.entries).sort(newestFirst);
        renderFeed();
      }
    }
    refreshHistory();
  }

  setInterval(() => {
    if (state.board && !ui.network.hidden) {
      const since = age((performance.now() - state.receivedAt) / 1000);
      const clock = new Date(serverNow()).toISOString().slice(11, 19);
      ui.updated.textContent = `updated ${since} · server time ${clock} UTC`;
    }
  }, 1000);

  // --- cards --------------------------------------------------------------------------------------

  function renderBoard() {
    const instances = state.board.instances || [];
    // Up means served: the holder is active. A claim held in any other state runs no connector.
    const up = instances.filter((i) => i.up).length;
    const online = instances.filter((i) => i.online).length;
    ui.onlineCount.textContent = `${up} of ${instances.length} up, ${online} online`;
    ui.cards.replaceChildren(...instances.map(card));
    fillExchangeFilter(instances);
  }

  function fact(label, value, attrs = {}) {
    return [el("dt", { text: label }), el("dd", attrs, value ?? "N/A")];
  }

  /** The card's state: the record's state, else "offline" (it ran before) or "not-running" (never). */
  function cardStateOf(inst) {
    if (inst.online && inst.status) return inst.status.connectionState;
    return inst.health === "not_running" ? "not-running" : "offline";
  }

  function card(inst) {
    const status = inst.status;
    const cardState = cardStateOf(inst);
    const node = el("article", {
      class: "card",
      "data-exchange": inst.exchangeName,
      "data-exchange-id": inst.exchangeId,
      "data-state": cardState,
      "data-health": inst.health || null,
      "data-paused": inst.paused ? "true" : null,
      // Which pushed entry this card last came from (absent: from a poll). Tests read it.
      "data-pushed": state.live.pushed.get(inst.exchangeId) || null,
    });
    const head = el(
      "div",
      { class: "card-head" },
      el("h2", {}, inst.displayName || inst.exchangeName, el("span", { class: "name", text: inst.exchangeName })),
      el("span", { class: `badge badge-${cardState}`, "data-role": "badge", text: cardState.replace("-", " ") }),
    );
    node.append(head);
    if (inst.online && status) {
      onlineDetails(node, head, inst, status);
    } else {
      offlineDetails(node, inst);
    }
    historyDetails(node, inst);
    const failsafe = failsafeNote(inst);
    if (failsafe) node.append(failsafe);
    if (inst.paused) node.append(pausedNote(inst));
    node.append(standbyList(inst.standbys || [], inst.paused));
    const actions = cardActions(inst, cardState);
    if (actions) node.append(actions);
    return node;
  }

  // --- actions (an operate or admin key only) -----------------------------------------------------

  /** Whether the key may command this exchange: the server decides again on every POST. */
  function mayCommand(inst) {
    const c = state.caller;
    if (!c || (c.scope !== "operate" && c.scope !== "admin")) return false;
    return c.scope === "admin" || !c.exchanges.length || c.exchanges.includes(inst.exchangeName);
  }

  function cardActions(inst, cardState) {
    if (!mayCommand(inst) || !inst.online || !inst.status) return null;
    const name = inst.exchangeName;
    const host = inst.status.hostname;
    const buttons = [];
    if (["active", "starting", "warming"].includes(cardState)) {
      buttons.push(action("stop", `Stop`, `Stop ${name} on ${host}?`, "commands", { command: "stop", wait: false }));
      for (const s of inst.standbys || []) {
        // The target by its Perseus host (what `perseus handoff --to` takes), and its machine if it differs.
        const target = s.hostname && s.hostname !== s.host ? `${s.host} (${s.hostname})` : s.host;
        buttons.push(action("handoff", `Hand off to ${s.host}`,
          `Hand ${name} over from ${host} to ${target}?`, "handoff", { to: s.host, wait: false }, s.host));
      }
    } else if (cardState === "idle" || cardState === "stopped") {
      buttons.push(action("start", "Start", `Start ${name} on ${host}?`, "commands", { command: "start", wait: false }));
    }
    if (!buttons.length) return null;
    return el("div", { class: "actions", "data-role": "actions" }, buttons);

    function action(kind, label, question, route, body, target) {
      const button = el("button", { type: "button", "data-action": kind, "data-target": target || null, text: label });
      button.addEventListener("click", async () => {
        // The confirmation names the exchange and the host: a misclick must not stop production.
        if (!window.confirm(question)) return;
        button.disabled = true;
        try {
          await post(`/api/network/exchanges/${encodeURIComponent(inst.exchangeId)}/${route}`, body);
          showBanner("info", `${question.replace(/\?$/, "")}: sent; the card follows the live stream.`);
        } catch (err) {
          showBanner("error", `${label} refused (${err.status}): ${err.message}`);
        } finally {
          button.disabled = false;
        }
      });
      return button;
    }
  }

  async function post(path, body) {
    let response;
    try {
      response = await fetch(path, {
        method: "POST",
        headers: { Authorization: `Bearer ${state.key}`, Accept: "application/json", "Content-Type": "application/json" },
        body: JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, null, "the API did not answer");
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch (err) {
      answer = null;
    }
    if (!response.ok) throw new ApiError(response.status, answer);
    return answer;
  }

  /** The failsafe's line: one quiet "failsafe on", or what the holder holds on during a Redis outage. */
  function failsafeNote(inst) {
    const item = state.failsafe.get(String(inst.exchangeName).toLowerCase());
    if (!item) return null;
    const f = item.failsafe;
    const roster = `${f.enrolled} in the roster`;
    if (!f.holding) {
      return el("p", { class: "failsafe", "data-role": "failsafe", "data-holding": "false", title: roster, text: "failsafe on" });
    }
    const left = typeof f.horizonS === "number" ? `; may act for ${f.horizonS.toFixed(1)} s more as last reported` : "";
    return el("p", { class: "failsafe holding", "data-role": "failsafe", "data-holding": "true", title: `${roster}${left}`, text: item.line });
  }

  // Failsafe lines: with every poll (the server reads Temporal at most every couple of seconds for
  // all its pages), re-rendering the cards only when a line changed.
  async function refreshFailsafe() {
    if (!state.failsafeAvailable || state.failsafeBusy) return;
    state.failsafeBusy = true;
    try {
      const answer = await api("/api/network/failsafe");
      if (!answer.answered) return; // Temporal did not answer: keep the last lines
      const lines = new Map((answer.exchanges || []).map((e) => [String(e.exchangeName).toLowerCase(), e]));
      const shown = JSON.stringify([...state.failsafe.entries()].map(([n, e]) => [n, e.line]));
      const fresh = JSON.stringify([...lines.entries()].map(([n, e]) => [n, e.line]));
      state.failsafe = lines;
      if (shown !== fresh && state.board) renderBoard();
    } catch (err) {
      // A server without the route: the cards go without the line; anything else: the next poll.
      if (err instanceof ApiError && err.status === 404) state.failsafeAvailable = false;
    } finally {
      state.failsafeBusy = false;
    }
  }

  /** Maintenance mode: nobody takes the exchange over by themselves until the deadline or a resume. */
  function pausedNote(inst) {
    const until = inst.pausedUntil ? `until ${inst.pausedUntil.replace("T", " ").slice(0, 19)} UTC` : "until resumed";
    const by = inst.pausedBy ? ` by ${inst.pausedBy}` : "";
    return el("p", { class: "paused", "data-role": "paused", text: `Paused ${until}${by}: no automatic failover` });
  }

  /** The exchange's standbys, highest priority first; "no standby" says failover has nowhere to go. */
  function standbyList(standbys, paused) {
    if (!standbys.length) {
      return el("p", { class: "standbys none", "data-role": "standbys", text: "no standby" });
    }
    return el(
      "ul",
      { class: "standbys", "data-role": "standbys" },
      standbys.map((s) =>
        el(
          "li",
          { "data-host": s.host, "data-field": "standby", title: `instance ${s.instanceId}` },
          el("b", { text: s.hostname || s.host }),
          s.ipAddress ? ` (${s.ipAddress})` : "",
          ` · priority ${s.priority}`,
          s.warm ? (s.warmReady ? " · warm" : " · warm (not ready)") : "",
          paused ? " · paused" : "",
          " · ",
          el("span", { class: heartbeatClass(s.heartbeatAgeS, 0, s.heartbeat), text: age(s.heartbeatAgeS) }),
        ),
      ),
    );
  }

  function onlineDetails(node, head, inst, status) {
    const ageS =
      typeof inst.heartbeatAgeS === "number"
        ? inst.heartbeatAgeS
        : Math.max(0, (Date.parse(state.board.serverTime) - Date.parse(status.lastHeartbeat)) / 1000);
    const hbClass = heartbeatClass(ageS, status.heartbeatIntervalMs, inst.heartbeat);
    node.dataset.heartbeat = hbClass.slice(3);
    if (hbClass !== "hb-fresh") {
      head.insertBefore(
        el("span", { class: `tag-late ${hbClass === "hb-stale" ? "stale" : ""}`, text: "late" }),
        head.lastChild,
      );
    }
    let running = "N/A";
    if (status.connectedAt) {
      const seconds = (serverNow() - Date.parse(status.connectedAt)) / 1000;
      if (seconds >= 0) running = duration(seconds);
    }
    node.append(
      el(
        "dl",
        { class: "facts" },
        fact("Host", status.hostname, { "data-field": "hostname" }),
        fact("IP", status.ipAddress, { "data-field": "ip" }),
        fact("Admin", status.adminDisplayName ?? status.adminEmail, { "data-field": "admin" }),
        fact("Symbols", `${status.symbolCount} symbols`, { "data-field": "symbols" }),
        fact("Heartbeat", age(ageS), { "data-field": "heartbeat", class: hbClass, title: status.lastHeartbeat }),
        fact("Running for", running, { "data-field": "running" }),
        fact("Epoch", String(status.epoch), { "data-field": "epoch" }),
        fact("Since", when(status.lastStateChange, serverNow()), { title: status.lastStateChange }),
      ),
    );
    if (status.lastError) {
      node.append(
        el("p", { class: "last-error", "data-field": "last-error", title: status.lastErrorAt || "" },
          `Last error: ${status.lastError}`,
          status.lastErrorAt ? ` (${when(status.lastErrorAt, serverNow())})` : ""),
      );
    }
  }

  function offlineDetails(node, inst) {
    const known = inst.lastKnown;
    if (inst.offlineReason) {
      // Something is there but unreadable (a malformed record): worth showing.
      node.append(el("p", { class: "offline-note", "data-field": "offline-reason", text: inst.offlineReason }));
    }
    if (!known) {
      if (!inst.offlineReason) {
        node.append(el("p", { class: "neutral-note", "data-field": "last-seen", text: "Not running · never ran (nothing in the activity log)" }));
      }
      return;
    }
    node.append(
      el("p", { class: "offline-note", "data-field": "last-seen" },
        `No active connection · last seen ${when(known.at, serverNow())}`),
      el(
        "dl",
        { class: "facts last-known", "data-role": "last-known" },
        fact("Host", known.hostname, { "data-field": "hostname" }),
        fact("IP", known.ip, { "data-field": "ip" }),
        fact("Last state", known.state, { "data-field": "last-state" }),
        fact("Last event", known.event.replace("_", " "), { "data-field": "last-event", title: known.at }),
        fact("Admin", known.adminEmail, { "data-field": "admin" }),
      ),
    );
    if (known.lastError) {
      node.append(
        el("p", { class: "last-error", "data-field": "last-error", title: known.lastErrorAt || "" },
          `Last error: ${known.lastError}`,
          known.lastErrorAt ? ` (${when(known.lastErrorAt, serverNow())})` : ""),
      );
    }
  }

  function historyDetails(node, inst) {
    const h = state.history.get(inst.exchangeId);
    if (!h) return;
    if (h.uptime && Array.isArray(h.uptime.windows)) {
      node.append(
        el(
          "div",
          { class: "uptime", "data-role": "uptime" },
          el("span", { class: "muted", text: "Uptime" }),
          h.uptime.windows.map((w) =>
            el("span", { title: `active ${duration(w.activeS)} of ${w.window}; the log covers ${w.knownPct}% of it` },
              `${w.window} `, el("b", { text: w.knownPct > 0 ? `${Number(w.activePct).toFixed(1)}%` : "—" })),
          ),
        ),
      );
    }
    if (h.timeline && Array.isArray(h.timeline.intervals)) node.append(...timeline(h.timeline));
  }

  function timeline(t) {
    const start = Date.parse(t.start);
    const end = Date.parse(t.end);
    const span = Math.max(1, end - start);
    const picture = svg("svg", {
      class: "timeline",
      viewBox: "0 0 1000 18",
      preserveAspectRatio: "none",
      role: "img",
      "aria-label": `State timeline, last ${t.window}`,
      "data-role": "timeline",
    });
    for (const iv of t.intervals) {
      const a = Math.max(start, Date.parse(iv.start));
      const b = Math.min(end, Date.parse(iv.end));
      if (!(b > a)) continue;
      // A state held for seconds in a 24 h window still gets a sliver (about 3 px) so it can be seen;
      // later (newer) segments are drawn over earlier ones, so the current state shows at the right.
      const width = Math.max(iv.state === "unknown" ? 0.5 : 10, ((b - a) / span) * 1000);
      const rect = svg("rect", {
        class: `seg-${iv.state}`,
        x: Math.min(((a - start) / span) * 1000, 1000 - width),
        y: 0,
        width,
        height: 18,
        "data-state": iv.state,
      });
      const title = svg("title");
      title.textContent = `${iv.state} · ${new Date(a).toLocaleString()} → ${new Date(b).toLocaleString()} (${duration(iv.durationS)})`;
      rect.append(title);
      picture.append(rect);
    }
    const axis = el("div", { class: "timeline-axis" }, el("span", { text: `${t.window} ago` }), el("span", { text: "now" }));
    return [picture, axis];
  }

  // Uptime and timeline for each exchange: every 30 s, and at once when its state changed.
  async function refreshHistory() {
    if (!state.historyAvailable || state.historyBusy || !state.board) return;
    state.historyBusy = true;
    try {
      const now = performance.now();
      const due = state.board.instances.filter((inst) => {
        const h = state.history.get(inst.exchangeId);
        const current = cardStateOf(inst);
        return !h || now - h.fetchedAt > HISTORY_MS || h.state !== current;
      });
      await Promise.all(
        due.map(async (inst) => {
          const id = inst.exchangeId;
          const current = cardStateOf(inst);
          const [uptime, tl] = await Promise.all([
            api(`/api/network/exchanges/${id}/uptime`),
            api(`/api/network/exchanges/${id}/timeline`, { window: "24h" }),
          ]);
          state.history.set(id, { uptime, timeline: tl, fetchedAt: performance.now(), state: current });
        }),
      );
      if (due.length && state.board) renderBoard();
    } catch (err) {
      // A server without the uptime/timeline routes: the cards simply go without them.
      if (err instanceof ApiError && err.status === 404 && !err.body?.known) state.historyAvailable = false;
    } finally {
      state.historyBusy = false;
    }
  }

  // --- the activity feed --------------------------------------------------------------------------

  function fillExchangeFilter(instances) {
    const select = ui.filterExchange;
    const chosen = select.value;
    const wanted = instances.map((i) => i.exchangeName).join(",");
    if (select.dataset.names === wanted) return;
    select.dataset.names = wanted;
    select.replaceChildren(
      el("option", { value: "", text: "All exchanges" }),
      ...instances.map((i) => el("option", { value: i.exchangeName, text: i.displayName || i.exchangeName })),
    );
    select.value = chosen;
  }

  function filters() {
    return { exchange: ui.filterExchange.value, event: ui.filterEvent.value };
  }

  const entryKey = (e) => `${e.id}@${(e.exchangeName || "").toLowerCase()}`;

  function streamId(e) {
    const [ms, seq] = String(e.id).split("-").map(Number);
    return [ms || 0, seq || 0];
  }

  function newestFirst(a, b) {
    const [am, as] = streamId(a);
    const [bm, bs] = streamId(b);
    return bm - am || bs - as || entryKey(a).localeCompare(entryKey(b));
  }

  async function readFeed(cursor) {
    const f = filters();
    return api("/api/network/activity", { count: PAGE_SIZE, exchange: f.exchange, event: f.event, cursor });
  }

  /** Newest page, merged on top of what is loaded (older pages stay as the user loaded them). */
  async function refreshFeed(reset) {
    const feed = state.feed;
    const key = JSON.stringify(filters());
    if (reset || feed.filters !== key) {
      feed.entries = [];
      feed.nextCursor = null;
      feed.filters = key;
    }
    const page = await readFeed(null);
    if (feed.filters !== key) return; // the filters changed while we were reading
    const loaded = new Set(feed.entries.map(entryKey));
    const fresh = page.entries.filter((e) => !loaded.has(entryKey(e)));
    if (!feed.entries.length || (fresh.length === page.entries.length && page.entries.length >= PAGE_SIZE)) {
      // First page, or more new entries than a page: start again from the newest page.
      feed.entries = page.entries.slice();
      feed.nextCursor = page.nextCursor;
    } else {
      feed.entries = fresh.concat(feed.entries).sort(newestFirst);
    }
    feed.serverTime = page.serverTime;
    feed.receivedAt = performance.now();
    renderFeed();
  }

  async function loadMore() {
    const feed = state.feed;
    if (!feed.nextCursor || feed.busy) return;
    feed.busy = true;
    ui.loadMore.disabled = true;
    try {
      const key = feed.filters;
      const page = await readFeed(feed.nextCursor);
      if (feed.filters !== key) return;
      const loaded = new Set(feed.entries.map(entryKey));
      feed.entries = feed.entries.concat(page.entries.filter((e) => !loaded.has(entryKey(e))));
      feed.nextCursor = page.nextCursor;
      renderFeed();
    } catch (err) {
      if (err instanceof ApiError && (err.status === 401 || err.status === 403)) rejectKey(err);
      else ui.feedStatus.textContent = `Could not load more: ${err.message}`;
    } finally {
      feed.busy = false;
      ui.loadMore.disabled = false;
    }
  }

  function displayName(exchangeName) {
    const inst = state.board?.instances.find((i) => i.exchangeName === exchangeName);
    return inst?.displayName || exchangeName || "?";
  }

  const ICONS = {
    state_transition: "✓",
    error: "⚠",
    claim_conflict: "⛔",
    instance_lost: "✕",
    standby_registered: "+",
    promoted: "↑",
    handoff: "⇄",
    paused: "⏸",
    resumed: "▶",
  };

  function describe(e) {
    const name = displayName(e.exchangeName);
    switch (e.event) {
      case "state_transition":
        return `${name}: ${e.fromState} → ${e.toState}`;
      case "error":
        return `${name}: ${e.error || "error"}`;
      case "claim_conflict":
        return `${name}: claim refused${e.detail ? ` — ${e.detail}` : ""}`;
      case "instance_lost":
        return `${name}: instance lost${e.detail ? ` — ${e.detail}` : ""}`;
      case "command_refused":
        return `${name}: ${e.command || "command"} refused — ${e.reason || ""}`;
      default:
        return `${name}: ${String(e.event).replace("_", " ")}${e.detail ? ` — ${e.detail}` : ""}`;
    }
  }

  function renderFeed() {
    const feed = state.feed;
    const now = serverNow(feed.serverTime, feed.receivedAt);
    const scroll = ui.feed.scrollTop;
    ui.feed.replaceChildren(
      ...feed.entries.map((e) => {
        // The actor (who asked for the command that caused it) comes first: the audit's question.
        const who = [e.actor ? `by ${e.actor}` : null, e.adminEmail || null, e.hostname ? `${e.hostname}${e.ip ? ` (${e.ip})` : ""}` : null,
          e.epoch ? `epoch ${e.epoch}` : null].filter(Boolean).join(" · ");
        return el(
          "li",
          { class: `ev-${e.event}`, "data-id": entryKey(e), "data-event": e.event },
          el("span", { class: "icon", "aria-hidden": "true", text: ICONS[e.event] || "•" }),
          el("span", { class: "what", text: describe(e) }),
          el("time", { class: "when", datetime: e.timestamp, title: e.timestamp, text: ago(streamId(e)[0], now) }),
          el("span", { class: "who", text: who }),
        );
      }),
    );
    ui.feed.scrollTop = scroll;
    // Which filters the list shows (tests and scripts wait on these).
    const shown = JSON.parse(feed.filters || "{}");
    ui.feed.dataset.exchange = shown.exchange || "";
    ui.feed.dataset.event = shown.event || "";
    ui.loadMore.hidden = !feed.nextCursor;
    ui.feedStatus.textContent = feed.entries.length
      ? `${feed.entries.length} entries${feed.nextCursor ? "" : " · the end of the log"}`
      : feed.nextCursor ? "No matching entries on this page — load more to look further back." : "No activity yet.";
  }

  ui.loadMore.addEventListener("click", loadMore);
  for (const select of [ui.filterExchange, ui.filterEvent]) {
    select.addEventListener("change", () => {
      refreshFeed(true).catch((err) => {
        if (err instanceof ApiError && (err.status === 401 || err.status === 403)) rejectKey(err);
        else ui.feedStatus.textContent = `Could not read the activity log: ${err.message}`;
      });
    });
  }

  refresh();
})();
