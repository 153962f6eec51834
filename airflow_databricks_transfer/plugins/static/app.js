/* Transfer tab (index.html) and Transfers page (transfers.html) of airflow-databricks-transfer.
 *
 * Plain script, no build step. Runs inside Airflow's iframe (same origin), so fetch() sends the
 * user's session cookie; no token is read or kept here. The tab polls every 2 s while the task
 * instance may still run and stops when it ends; the page refreshes every 5 s.
 */
(function () {
  "use strict";

  var POLL_MS = 2000;
  var LIST_MS = 5000;
  var $ = function (id) { return document.getElementById(id); };

  // ------------------------------------------------------------------ theme
  // Follow Airflow's theme when the parent page shows it (next-themes puts "dark"/"light" on <html>);
  // otherwise the CSS follows prefers-color-scheme.
  function applyTheme() {
    var theme = null;
    try {
      var cls = window.parent.document.documentElement.classList;
      theme = cls.contains("dark") ? "dark" : cls.contains("light") ? "light" : null;
    } catch (e) { /* not same-origin: keep the OS preference */ }
    if (!theme) {
      try {
        var stored = window.localStorage.getItem("theme");
        if (stored === "dark" || stored === "light") theme = stored;
      } catch (e) { /* storage blocked */ }
    }
    if (theme) document.documentElement.setAttribute("data-theme", theme);
    else document.documentElement.removeAttribute("data-theme");
  }
  applyTheme();
  try {
    if (window.parent !== window) {
      new MutationObserver(function () { applyTheme(); if (lastPayload) drawMap(lastPayload.map); })
        .observe(window.parent.document.documentElement, { attributes: true, attributeFilter: ["class"] });
    }
  } catch (e) { /* not same-origin */ }

  // ------------------------------------------------------------------ formatting
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    var units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    var i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
  }
  function rate(bps) { return bps === null || bps === undefined ? "–" : bytes(bps) + "/s"; }
  function duration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    if (h) return h + " h " + m + " min";
    if (m) return m + " min " + sec + " s";
    return sec + " s";
  }
  function when(epoch) {
    if (epoch === null || epoch === undefined) return "–";
    var d = new Date(epoch * 1000);
    return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }
  function num(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString(); }
  function text(el, value) { if (el) el.textContent = value === null || value === undefined ? "–" : String(value); }
  function cell(tr, value, cls) {
    var td = document.createElement("td");
    if (value instanceof Node) td.appendChild(value); else td.textContent = value === null || value === undefined ? "–" : String(value);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }
  function stateBadge(state) {
    var span = document.createElement("span");
    span.className = "pill";
    span.setAttribute("data-state", state || "");
    span.textContent = state || "–";
    return span;
  }
  function message(msg) {
    var el = $("message");
    el.hidden = !msg;
    el.textContent = msg || "";
  }
  function apiUrl(path, params) {
    var url = new URL("../api/" + path, window.location.href);
    Object.keys(params || {}).forEach(function (k) { url.searchParams.set(k, params[k]); });
    return url;
  }
  function getJson(url) {
    return fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (resp) {
        if (resp.status === 401) throw new Error("Not signed in (401): sign in to Airflow again.");
        if (resp.status === 403) throw new Error("You may not read this DAG's task instances and XComs (403).");
        if (resp.status === 404) throw new Error("No such task instance (404).");
        if (!resp.ok) throw new Error("The transfer API answered " + resp.status + ".");
        return resp.json();
      });
  }

  // ------------------------------------------------------------------ the map
  function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

  function decodeBits(b64) {
    var raw = atob(b64 || "");
    var out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }

  /* One canvas, one cell per unit (never thousands of DOM nodes). Bit i of the bitmap is unit
   * first + i; in-flight units are unit numbers in the same base. */
  function drawMap(map) {
    var canvas = $("map");
    if (!canvas || !map) return;
    var count = map.count || 0;
    var width = Math.max(200, canvas.parentElement.clientWidth || 800);
    var colors = { done: cssVar("--done"), inflight: cssVar("--inflight"), todo: cssVar("--todo") };
    var dpr = window.devicePixelRatio || 1;
    var ctx = canvas.getContext("2d");
    canvas.setAttribute("data-count", String(count));
    canvas.setAttribute("data-done", String(map.done_count || 0));
    canvas.setAttribute("data-inflight", String(map.inflight_count || 0));
    canvas.setAttribute("data-encoding", map.encoding);
    if (map.encoding !== "bitmap" || count === 0) {
      // units without identity (files, batches): one bar of done / in flight / not started
      var h = 22;
      canvas.width = width * dpr; canvas.height = h * dpr; canvas.style.height = h + "px";
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      var total = Math.max(count, 1);
      var done = Math.min(map.done_count || 0, total), fl = Math.min(map.inflight_count || 0, total - done);
      ctx.fillStyle = colors.todo; ctx.fillRect(0, 0, width, h);
      ctx.fillStyle = colors.done; ctx.fillRect(0, 0, width * done / total, h);
      ctx.fillStyle = colors.inflight; ctx.fillRect(width * done / total, 0, width * fl / total, h);
      text($("map-note"), count ? num(done) + " of " + num(count) + " done, " + num(map.inflight_count || 0) + " in flight" : "");
      return;
    }
    var gap = count > 2000 ? 1 : 2;
    var maxHeight = 560;
    var size = Math.floor(Math.sqrt((width * maxHeight) / count));
    size = Math.max(3, Math.min(22, size));
    var cols = Math.max(1, Math.floor(width / size));
    var rows = Math.ceil(count / cols);
    var height = rows * size;
    canvas.width = width * dpr; canvas.height = height * dpr; canvas.style.height = height + "px";
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    var bits = decodeBits(map.done);
    var inflight = {};
    (map.inflight || []).forEach(function (n) { inflight[n - map.first] = true; });
    var inner = Math.max(1, size - gap);
    for (var i = 0; i < count; i++) {
      var isDone = (bits[i >> 3] >> (i & 7)) & 1;
      ctx.fillStyle = isDone ? colors.done : inflight[i] ? colors.inflight : colors.todo;
      ctx.fillRect((i % cols) * size, Math.floor(i / cols) * size, inner, inner);
    }
    var base = map.first === 0 ? "numbered from 0" : "numbered from 1";
    text($("map-note"), num(map.done_count) + " of " + num(count) + " done, " + num(map.inflight_count || 0) +
      " in flight (" + base + ", left to right, top to bottom)");
  }

  // ------------------------------------------------------------------ the tab
  var lastPayload = null;
  var timer = null;

  function renderTransfer(p) {
    lastPayload = p;
    var ti = p.ti || {};
    var title = (p.kind || "Transfer") + (ti.map_index >= 0 ? " [" + ti.map_index + "]" : "");
    text($("title"), title);
    text($("source"), p.source);
    text($("destination"), p.destination);
    var st = $("state");
    st.textContent = ti.state || "none";
    st.setAttribute("data-state", ti.state || "");
    text($("try"), "try " + (ti.try_number || 0) + " of " + ((ti.max_tries || 0) + 1));
    message(p.found ? "" : "No transfer recorded for this task instance yet (is it an airflow-databricks-transfer operator?).");

    var pct = p.bytes_total ? (100 * (p.bytes_done || 0)) / p.bytes_total : p.map && p.map.count ? (100 * p.map.done_count) / p.map.count : null;
    text($("bytes"), bytes(p.bytes_done) + " of " + bytes(p.bytes_total));
    text($("percent"), pct === null ? "" : pct.toFixed(1) + " %");
    $("bar").style.width = (pct === null ? 0 : Math.min(100, pct)) + "%";
    var unitName = (p.unit || "unit") + "s";
    text($("units"), p.map ? num(p.map.done_count) + " / " + num(p.map.count) + " " + unitName : "–");
    text($("inflight"), p.map ? num(p.map.inflight_count || 0) + " in flight" : "");
    text($("rate"), rate(p.rate_bps));
    text($("phase"), p.phase ? "phase: " + p.phase : "");
    text($("eta"), p.poll ? duration(p.eta_s) : "–");
    text($("parallelism"), p.parallelism ? "parallelism " + p.parallelism : "");
    drawMap(p.map);
    renderTries(p.tries || []);
    renderResult(p.result);
    $("error-section").hidden = !p.last_error;
    var failed = (p.tries || []).filter(function (t) { return t.error; }).pop();
    text($("error-title"), failed ? "Last error (try " + failed.try_number + ")" : "Last error");
    text($("error"), p.last_error || "");
  }

  function renderTries(tries) {
    var body = $("tries").tBodies[0];
    body.textContent = "";
    tries.slice().reverse().forEach(function (t) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-try", String(t.try_number));
      tr.setAttribute("data-state", t.state || "");
      tr.className = "try-row";
      cell(tr, t.try_number, "num");
      var badge = stateBadge(t.state);
      if (t.closed_by === "airflow") badge.title = "the try could not record its end; state and end from Airflow";
      cell(tr, badge);
      cell(tr, when(t.started_at));
      cell(tr, when(t.ended_at));
      var resumed = t.resumed_units === null || t.resumed_units === undefined ? "–" : num(t.resumed_units) + " (" + bytes(t.resumed_bytes) + ")";
      cell(tr, resumed, "num resumed");
      var sent = t.sent_units === null || t.sent_units === undefined ? "–" : num(t.sent_units) + " (" + bytes(t.sent_bytes) + ")";
      cell(tr, sent, "num sent");
      cell(tr, t.discarded || "–", "err");
      cell(tr, t.error || (t.recorded === false ? "(no record: ended before the transfer started)" : "–"), "err");
      body.appendChild(tr);
    });
  }

  function renderResult(result) {
    var section = $("result-section");
    section.hidden = !result;
    if (!result) return;
    var body = $("result").tBodies[0];
    body.textContent = "";
    Object.keys(result).forEach(function (k) {
      var v = result[k];
      if (typeof v === "number" && /(^|_)bytes($|_)/.test(k)) v = num(v) + " (" + bytes(v) + ")";
      else if (k === "mib_per_s") v = Number(v).toFixed(1) + " MiB/s";
      else if (k === "seconds") v = duration(v) + " (" + Number(v).toFixed(2) + " s)";
      else if (v !== null && typeof v === "object") v = JSON.stringify(v);
      var tr = document.createElement("tr");
      cell(tr, k);
      cell(tr, v, "mono");
      body.appendChild(tr);
    });
  }

  function pollTransfer() {
    var q = new URLSearchParams(window.location.search);
    var params = { dag_id: q.get("dag_id") || "", run_id: q.get("run_id") || "", task_id: q.get("task_id") || "",
      map_index: q.get("map_index") || "-1" };
    getJson(apiUrl("transfer", params)).then(function (p) {
      renderTransfer(p);
      text($("live"), p.poll ? "live, updated " + new Date().toLocaleTimeString() : "finished: not refreshing");
      if (p.poll) timer = setTimeout(pollTransfer, POLL_MS);
    }).catch(function (err) {
      message(err.message);
      text($("live"), "");
      // a transient error while the task runs: try again, slower
      if (!lastPayload || lastPayload.poll) timer = setTimeout(pollTransfer, POLL_MS * 3);
    });
  }

  // ------------------------------------------------------------------ the Transfers page
  function tabHref(tab) { return new URL("../../" + tab, window.location.href).toString(); }

  function renderList(data) {
    text($("hours"), data.hours);
    var body = $("transfers").tBodies[0];
    body.textContent = "";
    (data.transfers || []).forEach(function (t) {
      var ti = t.ti || {};
      var tr = document.createElement("tr");
      tr.className = "transfer-row";
      var a = document.createElement("a");
      a.href = tabHref(t.tab);
      a.target = "_top";
      a.textContent = ti.dag_id + " / " + ti.task_id + (ti.map_index >= 0 ? " [" + ti.map_index + "]" : "");
      var where = document.createElement("div");
      where.appendChild(a);
      var run = document.createElement("div");
      run.className = "muted mono";
      run.textContent = ti.run_id;
      where.appendChild(run);
      cell(tr, where);
      cell(tr, stateBadge(ti.state));
      cell(tr, t.kind);
      cell(tr, (t.source || "–") + " → " + (t.destination || "–"), "mono");
      var prog = document.createElement("span");
      var mini = document.createElement("span");
      mini.className = "minibar";
      var fill = document.createElement("span");
      fill.style.width = (t.percent || 0) + "%";
      mini.appendChild(fill);
      prog.appendChild(mini);
      prog.appendChild(document.createTextNode((t.percent === null || t.percent === undefined ? "–" : t.percent + " %") +
        " · " + bytes(t.bytes_done) + " of " + bytes(t.bytes_total)));
      cell(tr, prog);
      cell(tr, rate(t.rate_bps), "num");
      cell(tr, duration(t.eta_s), "num");
      cell(tr, t.tries, "num");
      cell(tr, t.last_error || "", "err");
      body.appendChild(tr);
    });
    $("empty").hidden = (data.transfers || []).length > 0;
  }

  function pollList() {
    var hours = new URLSearchParams(window.location.search).get("hours") || "24";
    getJson(apiUrl("transfers", { hours: hours })).then(function (data) {
      message("");
      renderList(data);
      text($("live"), "updated " + new Date().toLocaleTimeString());
    }).catch(function (err) { message(err.message); })
      .then(function () { setTimeout(pollList, LIST_MS); });
  }

  window.addEventListener("resize", function () { if (lastPayload) drawMap(lastPayload.map); });
  if (document.body.getAttribute("data-page") === "transfers") pollList(); else pollTransfer();
})();
