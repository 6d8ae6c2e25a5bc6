// Cortensor portal: copy buttons, tabs, the live usage feed and the playground (and its code panel). Plain JS, no build step.
(function () {
  "use strict";

  function csrfToken() {
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    if (input) return input.value;
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  // On phones the nav is one scrolling row: bring the current page's item into view.
  var current = document.querySelector(".nav [aria-current=page]");
  if (current && current.parentElement.scrollWidth > current.parentElement.clientWidth) {
    current.parentElement.scrollLeft = current.offsetLeft - 16;
  }

  // --- Markup without inline handlers (the Content-Security-Policy refuses them) ---------------------------------
  // <select data-autosubmit> submits its form on change; <a data-history-back> goes back when there is a page to go to.
  document.addEventListener("change", function (event) {
    if (event.target.matches && event.target.matches("select[data-autosubmit]") && event.target.form) event.target.form.submit();
  });
  document.addEventListener("click", function (event) {
    var back = event.target.closest && event.target.closest("a[data-history-back]");
    if (back && window.history.length > 1) {
      event.preventDefault();
      window.history.back();
    }
  });

  // --- Copy buttons: data-copy-target names the element whose text is copied ----------------------
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      var ok = document.execCommand("copy");
      document.body.removeChild(area);
      if (ok) resolve(); else reject(new Error("copy refused"));
    });
  }

  // A screen reader hears what was copied: the button's own text only flips to "Copied".
  var announcer = null;
  function announce(text) {
    if (!announcer) {
      announcer = document.createElement("div");
      announcer.className = "visually-hidden";
      announcer.setAttribute("aria-live", "polite");
      announcer.id = "copy-status";
      document.body.appendChild(announcer);
    }
    announcer.textContent = text;
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-target]");
    if (!button) return;
    var target = document.getElementById(button.getAttribute("data-copy-target"));
    if (!target) return;
    var label = button.textContent;
    copyText(target.textContent.trim()).then(function () {
      announce("Copied " + (button.getAttribute("aria-label") || "").replace(/^Copy /, ""));
      button.textContent = "Copied";
      button.classList.add("is-done");
      setTimeout(function () { button.textContent = label; button.classList.remove("is-done"); }, 1600);
    }, function () {
      var range = document.createRange();
      range.selectNodeContents(target);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      button.textContent = "Press Ctrl+C";
    });
  });

  // --- Tabs: panels with data-tab-label inside [data-tabs]; without JS they simply all show ---------
  // The WAI-ARIA tabs pattern: one tab in the Tab order (the selected one), arrow keys, Home and End move between them.
  var tabsMade = 0;
  document.querySelectorAll("[data-tabs]").forEach(function (container) {
    var panels = Array.prototype.slice.call(container.querySelectorAll(":scope > [data-tab-label]"));
    if (panels.length < 2) return;
    var bar = document.createElement("div");
    bar.className = "tabs-bar";
    bar.setAttribute("role", "tablist");
    tabsMade += 1;
    panels.forEach(function (panel, index) {
      if (!panel.id) panel.id = "tabs-" + tabsMade + "-panel-" + index;
      var tab = document.createElement("button");
      tab.type = "button";
      tab.id = panel.id + "-tab";
      tab.setAttribute("role", "tab");
      tab.setAttribute("aria-controls", panel.id);
      tab.textContent = panel.getAttribute("data-tab-label");
      tab.addEventListener("click", function () { select(index); });
      panel.setAttribute("role", "tabpanel");
      panel.setAttribute("aria-labelledby", tab.id);
      bar.appendChild(tab);
    });
    bar.addEventListener("keydown", function (event) {
      var tabs = Array.prototype.slice.call(bar.children);
      var at = tabs.indexOf(document.activeElement);
      if (at < 0) return;
      var to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (to === undefined) return;
      event.preventDefault();
      to = (to + tabs.length) % tabs.length;
      select(to);
      tabs[to].focus();
    });
    container.insertBefore(bar, panels[0]);
    function select(index) {
      panels.forEach(function (panel, i) { panel.hidden = i !== index; });
      Array.prototype.forEach.call(bar.children, function (tab, i) {
        tab.setAttribute("aria-selected", String(i === index));
        tab.tabIndex = i === index ? 0 : -1;
      });
    }
    select(0);
  });

  // --- Live usage feed --------------------------------------------------------------------------------
  // The page was rendered with a cursor (which rows it holds); the socket opens with it and its first message
  // ("ready") carries what happened since, then live rows follow. A row can come twice (in a catch-up and live, or
  // again after a reconnect): an id already seen is dropped, so each request shows and counts once.
  var latest = document.getElementById("latest");
  if (latest && latest.dataset.liveUrl && "WebSocket" in window) {
    var status = document.getElementById("live-status");
    var MAX_ROWS = 25;
    var MAX_SEEN = 5000;  // ids remembered: far more than a catch-up resends (at most 200)
    var seen = new Set();
    var seenOrder = [];
    Array.prototype.forEach.call(latest.querySelectorAll("tr[data-request-id]"), function (row) {
      remember(row.getAttribute("data-request-id"));
    });
    var cursor = latest.dataset.liveCursor || "";  // replaced by the server's newer ones as the socket goes on
    var incomplete = false;  // a catch-up was cut short: the totals miss some requests until a reload
    var retry = 1000;
    var ended = null;  // the close code that ended the feed for good, once a reconnect confirmed it

    function remember(id) {
      seen.add(id);
      seenOrder.push(id);
      if (seenOrder.length > MAX_SEEN) seen.delete(seenOrder.shift());
    }

    function setStatus(state, text) {
      if (!status) return;
      status.dataset.state = state;
      status.querySelector(".live-label").textContent = text;
    }

    function cell(content, className) {
      var td = document.createElement("td");
      if (className) td.className = className;
      if (content instanceof Node) td.appendChild(content); else td.textContent = content;
      return td;
    }

    function el(tag, className, text) {
      var node = document.createElement(tag);
      if (className) node.className = className;
      if (text !== undefined) node.textContent = text;
      return node;
    }

    // Times and days in the zone the page was rendered in (the user's profile setting), as the server wrote them.
    var zone = latest.dataset.timeZone || "UTC";
    var timeParts = new Intl.DateTimeFormat("en-US", {
      timeZone: zone, month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
    });
    var dayParts = new Intl.DateTimeFormat("en-US", { timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit" });

    function parts(format, iso) {
      var out = {};
      format.formatToParts(new Date(iso)).forEach(function (p) { out[p.type] = p.value; });
      return out;
    }

    function timeLabel(iso) {
      var p = parts(timeParts, iso);
      return p.month + " " + p.day + " " + p.hour + ":" + p.minute + ":" + p.second;
    }

    function dayOf(iso) {  // YYYY-MM-DD in the page's zone: the chart bar a request belongs to
      var p = parts(dayParts, iso);
      return p.year + "-" + p.month + "-" + p.day;
    }

    // Money from integer micro-units, as billing/money.py's format_micros_exact writes it: "$1.50", "$0.000037".
    function money(micros) {
      var abs = Math.abs(micros);
      var fraction = String(abs % 1000000).padStart(6, "0").replace(/0+$/, "");
      while (fraction.length < 2) fraction += "0";
      return (micros < 0 ? "-" : "") + "$" + Math.floor(abs / 1000000).toLocaleString("en-US") + "." + fraction;
    }

    function number(n) { return n.toLocaleString("en-US"); }

    // The page's filters: a live request that does not match is neither listed nor counted.
    var wanted = { model: latest.dataset.filterModel || "", key: latest.dataset.filterKey || "", status: latest.dataset.filterStatus || "" };
    function matches(event) {
      if (wanted.model && event.model !== wanted.model) return false;
      if (wanted.key && String(event.api_key_id) !== wanted.key) return false;
      if (wanted.status && event.status !== wanted.status) return false;
      return true;
    }

    function statusBadge(event) {
      if (event.status === "ok") return el("span", "badge badge-green", String(event.http_status));
      if (event.status === "cancelled") return el("span", "badge badge-gray", "cancelled");
      var badge = el("span", "badge badge-red", event.http_status + (event.error_code ? " · " + event.error_code : ""));
      badge.title = event.error_code || "";
      return badge;
    }

    function addRow(event) {
      if (seen.has(event.request_id)) return;  // already shown and counted: in the page, a catch-up, or live
      remember(event.request_id);
      if (!matches(event)) return;
      var body = latest.tBodies[0];
      var placeholder = body.querySelector(".empty-row");
      if (placeholder) placeholder.remove();
      latest.classList.remove("is-empty");
      var row = document.createElement("tr");
      row.setAttribute("data-request-id", event.request_id);
      row.className = "is-new";
      var modelCell = cell(el("code", "mono", event.model), "nowrap");
      modelCell.appendChild(el("span", "sub", event.route + (event.streamed ? " · stream" : "")));
      row.appendChild(cell(timeLabel(event.created_at), "nowrap"));
      row.appendChild(cell(el("code", "mono small rid", event.request_id)));
      row.appendChild(modelCell);
      row.appendChild(event.key ? cell(event.key.name, "nowrap") : cell(el("span", "muted", "—")));
      row.appendChild(cell(event.end_user ? el("code", "mono small", event.end_user) : el("span", "muted", "—")));
      row.appendChild(cell(statusBadge(event), "nowrap"));
      var tokensCell = cell(number(event.total_tokens || 0), "num nowrap");
      tokensCell.appendChild(el("span", "sub cost", money(event.cost_micros || 0)));
      row.appendChild(tokensCell);
      row.appendChild(cell(event.duration_ms + " ms", "num nowrap"));
      // Each cell names its column, as the page's own rows do, for the one-card-per-row layout on a phone.
      Array.prototype.forEach.call(row.cells, function (td, i) {
        var head = latest.tHead && latest.tHead.rows[0].cells[i];
        if (i > 0 && head) td.setAttribute("data-label", head.textContent);
      });
      body.insertBefore(row, body.firstChild);
      while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
      count(event);
    }

    // --- The totals, the charts and the splits: each request added once, where the server would have counted it.
    function count(event) {
      var failed = event.status === "error" ? 1 : 0;
      var tokens = event.total_tokens || 0;
      var cost = event.cost_micros || 0;
      bump("kpi-requests", 1);
      Array.prototype.forEach.call(document.querySelectorAll(".kpi-requests-echo"), function (node) {
        node.textContent = document.getElementById("kpi-requests").textContent;
      });
      bump("kpi-tokens", tokens);
      bump("kpi-tokens-in", event.prompt_tokens || 0);
      bump("kpi-tokens-out", event.completion_tokens || 0);
      bump("kpi-errors", failed);
      var costNode = document.getElementById("kpi-cost");
      if (costNode && cost) {
        costNode.dataset.micros = String((parseInt(costNode.dataset.micros, 10) || 0) + cost);
        costNode.textContent = money(parseInt(costNode.dataset.micros, 10));
      }
      var day = dayOf(event.created_at);
      Array.prototype.forEach.call(document.querySelectorAll("figure.chart[data-metric]"), function (chart) {
        var byRequests = chart.dataset.metric === "requests";
        addToChart(chart, day, byRequests ? 1 : tokens, byRequests ? failed : 0);
      });
      var totalRequests = parseInt(document.getElementById("kpi-requests").textContent.replace(/,/g, ""), 10) || 0;
      addToSplit("by-model", event.model, function (row) { row.appendChild(cell(el("code", "mono", event.model))); }, event, totalRequests);
      var keyId = event.api_key_id === null || event.api_key_id === undefined ? "" : String(event.api_key_id);
      addToSplit("by-key", keyId, function (row) {
        var label = cell(event.key ? event.key.name : "(deleted key)");
        if (event.key && event.key.masked) {
          label.appendChild(document.createElement("br"));
          label.appendChild(el("code", "mono muted small", event.key.masked));
        }
        row.appendChild(label);
      }, event, totalRequests);
    }

    function bump(id, by) {
      var node = document.getElementById(id);
      if (node && by) node.textContent = number((parseInt(node.textContent.replace(/,/g, ""), 10) || 0) + by);
    }

    // A bar chart as usage/_chart.html draws it: bars in a 0..100 box, each as tall as its value over the peak.
    function addToChart(chart, day, value, failed) {
      var bar = chart.querySelector('g[data-day="' + day + '"]');
      if (!bar || !value) return;  // a day outside the range: not on this page's charts
      bar.dataset.value = String((parseInt(bar.dataset.value, 10) || 0) + value);
      bar.dataset.errors = String((parseInt(bar.dataset.errors, 10) || 0) + failed);
      var bars = chart.querySelectorAll("g[data-day]");
      var peak = 0;
      Array.prototype.forEach.call(bars, function (g) { peak = Math.max(peak, parseInt(g.dataset.value, 10) || 0); });
      var unit = chart.dataset.unit;
      Array.prototype.forEach.call(bars, function (g) {
        var v = parseInt(g.dataset.value, 10) || 0;
        var errors = parseInt(g.dataset.errors, 10) || 0;
        var height = peak ? 100 * v / peak : 0;
        var top = (100 - height).toFixed(3);
        var rect = g.querySelector("rect.bar");
        rect.setAttribute("y", top);
        rect.setAttribute("height", height.toFixed(3));
        var errorRect = g.querySelector("rect.bar-error");
        errorRect.setAttribute("y", top);
        errorRect.setAttribute("height", (peak ? 100 * errors / peak : 0).toFixed(3));
        var title = g.querySelector("title");
        var label = title.textContent.split(":")[0];
        title.textContent = label + ": " + number(v) + " " + unit + (errors ? " (" + number(errors) + " failed)" : "");
      });
      var note = chart.querySelector(".chart-peak-note");
      var peakLabel = chart.querySelector(".chart-peak");
      var empty = chart.querySelector(".chart-empty");
      if (note) { note.hidden = false; note.querySelector(".chart-peak-value").textContent = number(peak); }
      if (peakLabel) { peakLabel.hidden = false; peakLabel.textContent = number(peak); }
      if (empty) empty.remove();
    }

    // A split (by model, by key): the request's group gains it, a new group gets a row; every share is redrawn.
    function addToSplit(id, group, label, event, totalRequests) {
      var table = document.getElementById(id);
      if (!table) return;
      if (table.tagName !== "TABLE") {  // "No requests in this range": the table the server would have drawn
        var wrap = el("div", "table-wrap");
        var fresh = el("table", "table table-compact");
        fresh.id = id;
        var head = fresh.createTHead().insertRow();
        [[id === "by-model" ? "Model" : "Key", ""], ["Requests", "num"], ["Tokens", "num"], ["Cost", "num"], ["Share", "share-col"]].forEach(function (h) {
          head.appendChild(el("th", h[1], h[0]));
        });
        fresh.appendChild(document.createElement("tbody"));
        wrap.appendChild(fresh);
        table.replaceWith(wrap);
        table = fresh;
      }
      var row = Array.prototype.find.call(table.tBodies[0].rows, function (r) { return r.dataset.group === group; });
      if (!row) {
        row = document.createElement("tr");
        row.dataset.group = group;
        label(row);
        var requests = cell("0", "num"); requests.dataset.requests = "0";
        var tokens = cell("0", "num"); tokens.dataset.tokens = "0";
        var cost = cell(money(0), "num"); cost.dataset.cost = "0";
        var share = cell(el("span", "share"), "share-col");
        share.firstChild.appendChild(el("span", "pct-0"));
        [requests, tokens, cost, share].forEach(function (c) { row.appendChild(c); });
        table.tBodies[0].appendChild(row);
      }
      function add(selector, field, by, show) {
        var c = row.querySelector(selector);
        c.dataset[field] = String((parseInt(c.dataset[field], 10) || 0) + by);
        c.textContent = show(parseInt(c.dataset[field], 10));
      }
      add("[data-requests]", "requests", 1, number);
      add("[data-tokens]", "tokens", event.total_tokens || 0, number);
      add("[data-cost]", "cost", event.cost_micros || 0, money);
      Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
        var n = parseInt(r.querySelector("[data-requests]").dataset.requests, 10) || 0;
        var pct = totalRequests ? Math.max(0, Math.min(100, Math.round(100 * n / totalRequests))) : 0;
        var bar = r.querySelector(".share > span");
        if (bar) bar.className = "pct-" + pct;
      });
    }

    function connect() {
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      var url = latest.dataset.liveUrl;
      if (cursor) url += (url.indexOf("?") < 0 ? "?" : "&") + "after=" + encodeURIComponent(cursor);
      var socket = new WebSocket(scheme + location.host + url);
      socket.onmessage = function (message) {
        var data = JSON.parse(message.data);
        if (data.type === "ready") {
          (data.events || []).forEach(addRow);  // oldest first: each goes on top
          if (data.cursor) cursor = data.cursor;
          if (data.truncated) incomplete = true;
          retry = 1000;
          ended = null;
          setStatus("open", incomplete ? "Live · reload for exact totals" : "Live");
        }
        else if (data.type === "cursor") cursor = data.cursor;
        else if (data.type === "request") addRow(data);
      };
      socket.onclose = function (event) {
        // 4400: the cursor was refused; start again from now, knowing that whatever happened meanwhile is not shown.
        if (event.code === 4400) {
          cursor = "";
          incomplete = true;
          setStatus("closed", "Reconnecting…");
          setTimeout(connect, retry);
          return;
        }
        // 4401: the session that opened the feed ended; 4403: no longer a member. One reconnect tells a session
        // that only changed its key (a password change keeps this browser signed in) from one that is gone.
        if (ended === null && (event.code === 4401 || event.code === 4403)) {
          ended = event.code;
          setStatus("closed", "Checking…");
          setTimeout(connect, 250);
          return;
        }
        if (ended !== null) {
          setStatus("closed", ended === 4401 ? "Signed out: reload to sign in" : "No longer a member of this organization");
          return;
        }
        setStatus("closed", "Reconnecting…");
        setTimeout(connect, retry);
        retry = Math.min(retry * 2, 30000);
      };
    }
    connect();
  }

  // --- Playground: POST an OpenAI chat body, read the SSE stream as it arrives ------------------------
  var playground = document.getElementById("playground");
  if (playground) {
    var endpoint = playground.dataset.endpoint;
    var form = document.getElementById("pg-form");
    var prompt = document.getElementById("pg-prompt");
    var transcript = document.getElementById("pg-transcript");
    var sendButton = document.getElementById("pg-send");
    var stopButton = document.getElementById("pg-stop");
    var meta = document.getElementById("pg-meta");
    var history = [];
    var controller = null;

    // What the controls ask for, read the same way for a message sent here and for the code panel's snippets, so a
    // snippet asks for what the playground would. A temperature left empty is not sent (the model's default).
    function requestSettings() {
      var settings = {
        model: document.getElementById("pg-model").value,
        max_tokens: parseInt(document.getElementById("pg-max-tokens").value, 10) || 256,
      };
      var temperature = parseFloat(document.getElementById("pg-temperature").value);
      if (Number.isFinite(temperature)) settings.temperature = temperature;
      return settings;
    }

    function bubble(role, text) {
      var empty = document.getElementById("pg-empty");
      if (empty) empty.remove();
      var node = document.createElement("div");
      node.className = "msg msg-" + role;
      node.textContent = text;
      transcript.appendChild(node);
      transcript.scrollTop = transcript.scrollHeight;
      return node;
    }

    function busy(on) {
      sendButton.disabled = on;
      stopButton.hidden = !on;
      prompt.disabled = on;
    }

    function errorMessage(body, status) {
      try {
        var parsed = JSON.parse(body);
        if (parsed.error && parsed.error.message) return parsed.error.message + (parsed.error.code ? " (" + parsed.error.code + ")" : "");
      } catch (e) { /* not JSON */ }
      return "The request failed with status " + status + ".";
    }

    async function send(text) {
      // This conversation's turns: "New chat" while the answer streams starts a new list, and what the stopped
      // answer had written belongs to the old one, not to the new chat (nor to its code panel).
      var turns = history;
      turns.push({ role: "user", content: text });
      updateCode();
      bubble("user", text);
      var answer = bubble("assistant", "");
      answer.classList.add("is-streaming");
      busy(true);
      meta.textContent = "";
      controller = new AbortController();
      var content = "";
      var requestId = "";
      var usage = null;
      var started = performance.now();
      try {
        var response = await fetch(endpoint, {
          method: "POST",
          credentials: "same-origin",
          signal: controller.signal,
          headers: {
            "Content-Type": "application/json", "X-CSRFToken": csrfToken(), "Accept": "text/event-stream",
            // The organization this page shows: a member removed meanwhile is refused, not charged elsewhere.
            "X-Portal-Organization": playground.dataset.organization || "",
          },
          body: JSON.stringify(Object.assign(requestSettings(), {
            messages: turns,
            stream: true,
            stream_options: { include_usage: true },
          })),
        });
        requestId = response.headers.get("x-request-id") || "";
        if (!response.ok) throw new Error(errorMessage(await response.text(), response.status));
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var buffer = "";
        var done = false;
        while (!done) {
          var chunk = await reader.read();
          if (chunk.done) break;
          buffer += decoder.decode(chunk.value, { stream: true });
          var lines = buffer.split(/\r?\n/);
          buffer = lines.pop();
          for (var i = 0; i < lines.length; i++) {
            var line = lines[i];
            if (line.indexOf("data:") !== 0) continue;
            var data = line.slice(5).trim();
            if (data === "[DONE]") { done = true; break; }
            var event = JSON.parse(data);
            if (event.error) throw new Error(event.error.message || "the stream failed");
            if (event.usage) usage = event.usage;
            if (event.choices && event.choices.length && event.choices[0].delta && event.choices[0].delta.content) {
              content += event.choices[0].delta.content;
              answer.textContent = content;
              transcript.scrollTop = transcript.scrollHeight;
            }
          }
        }
        turns.push({ role: "assistant", content: content });
        var seconds = ((performance.now() - started) / 1000).toFixed(1);
        meta.textContent = (usage ? usage.total_tokens + " tokens · " : "") + seconds + " s" + (requestId ? " · " + requestId : "");
      } catch (err) {
        if (err.name === "AbortError") {
          if (content) turns.push({ role: "assistant", content: content });
          meta.textContent = "Stopped." + (requestId ? " " + requestId : "");
        } else {
          turns.pop();
          if (!content) answer.remove();
          bubble("error", err.message);
          meta.textContent = requestId;
        }
      } finally {
        answer.classList.remove("is-streaming");
        busy(false);
        controller = null;
        updateCode();
        prompt.focus();
      }
    }

    // --- "View code": the conversation as a request to run elsewhere -------------------------------------
    // Every value goes in through JSON.stringify (a JSON string literal is a valid Python one too: the same escapes,
    // and the non-ASCII characters JSON leaves as they are are plain UTF-8 source to Python), the shell body in single
    // quotes, and the result into the page with textContent only: quotes, newlines, `$HOME`, backticks or `</script>` in
    // a prompt stay text everywhere.
    var codePanel = document.getElementById("pg-code");
    var codeToggle = document.getElementById("pg-code-toggle");
    var baseUrl = playground.dataset.baseUrl || location.origin;
    var keyEnv = playground.dataset.keyEnv || "CORTENSOR_API_KEY";
    var EXAMPLE = "Hello!";  // the user turn shown while there is nothing to show yet, so every snippet runs

    function conversation() {
      var messages = history.slice();
      var draft = prompt.value.trim();  // as send() would take it
      if (draft) messages.push({ role: "user", content: draft });
      return messages;
    }

    // A JSON array of messages, one to a line, indented to sit inside a call or a body.
    function messageLines(messages, indent) {
      var pad = " ".repeat(indent);
      return "[\n" + messages.map(function (m) {
        return pad + "    {" + JSON.stringify("role") + ": " + JSON.stringify(m.role) + ", " + JSON.stringify("content") + ": " + JSON.stringify(m.content) + "}";
      }).join(",\n") + "\n" + pad + "]";
    }

    // A JSON object whose `list` field holds the messages (one to a line) and whose other fields are compact scalars.
    function jsonBody(fields, list, messages) {
      var lines = Object.keys(fields).map(function (name) { return "  " + JSON.stringify(name) + ": " + JSON.stringify(fields[name]); });
      lines.splice(1, 0, "  " + JSON.stringify(list) + ": " + messageLines(messages, 2));
      return "{\n" + lines.join(",\n") + "\n}";
    }

    // POSIX single quotes keep everything literal; a quote inside ends them, is escaped, and they start again.
    function shellQuote(text) {
      return "'" + text.replace(/'/g, "'\\''") + "'";
    }

    function shellWord(text) {
      return /^[A-Za-z0-9_.:\/@%+=,-]+$/.test(text) ? text : shellQuote(text);
    }

    function curl(path, headers, body) {
      return ["curl " + shellWord(baseUrl + path)].concat(headers.map(function (h) { return "  -H " + h; }), ["  -d " + shellQuote(body)]).join(" \\\n");
    }

    // Python keyword arguments, one to a line, after `model=`; the messages' own argument name is `list`. The values
    // of `extra` are Python source already.
    function pyCall(call, settings, list, messages, extra) {
      var args = ["    model=" + JSON.stringify(settings.model), "    " + list + "=" + messageLines(messages, 4)];
      Object.keys(extra).forEach(function (name) { args.push("    " + name + "=" + extra[name]); });
      return call + "(\n" + args.join(",\n") + ",\n)";
    }

    function pyValues(values) {
      var source = {};
      Object.keys(values).forEach(function (name) { source[name] = JSON.stringify(values[name]); });
      return source;
    }

    function snippets() {
      var settings = requestSettings();
      var messages = conversation();
      var example = !messages.length;
      if (example) messages = [{ role: "user", content: EXAMPLE }];
      var auth = JSON.stringify("Authorization: Bearer $" + keyEnv);
      var json = JSON.stringify("Content-Type: application/json");
      var env = "os.environ[" + JSON.stringify(keyEnv) + "]";
      var openaiClient = "import os\n\nfrom openai import OpenAI\n\nclient = OpenAI(base_url=" + JSON.stringify(baseUrl + "/v1") + ", api_key=" + env + ")\n\n";
      var sampling = {};
      if (settings.temperature !== undefined) sampling.temperature = settings.temperature;
      // Anthropic's temperature scale ends at 1 (the gateway refuses more there, as Anthropic does).
      var anthropicSampling = {};
      var clamped = settings.temperature !== undefined && settings.temperature > 1;
      if (settings.temperature !== undefined) anthropicSampling.temperature = Math.min(settings.temperature, 1);
      var clampNote = clamped ? "# Anthropic's temperature ends at 1: " + settings.temperature + " is sent as 1.\n" : "";
      // The Anthropic SDK takes no sampling arguments of its own any more; the API still does, so they go in extra_body.
      var anthropicExtra = { max_tokens: JSON.stringify(settings.max_tokens) };
      var extraNote = "";
      if (anthropicSampling.temperature !== undefined) {
        extraNote = "# This SDK takes temperature through extra_body.\n";
        anthropicExtra.extra_body = "{" + JSON.stringify("temperature") + ": " + JSON.stringify(anthropicSampling.temperature) + "}";
      }

      var chatFields = Object.assign({ model: settings.model, max_tokens: settings.max_tokens }, sampling);
      var responsesFields = Object.assign({ model: settings.model, max_output_tokens: settings.max_tokens }, sampling);
      var messagesFields = Object.assign({ model: settings.model, max_tokens: settings.max_tokens }, anthropicSampling);
      return {
        example: example,
        chat: {
          python: openaiClient + pyCall("completion = client.chat.completions.create", settings, "messages", messages,
            pyValues(Object.assign({ max_tokens: settings.max_tokens }, sampling))) + "\nprint(completion.choices[0].message.content)",
          curl: curl("/v1/chat/completions", [auth, json], jsonBody(chatFields, "messages", messages)),
        },
        responses: {
          python: openaiClient + pyCall("response = client.responses.create", settings, "input", messages,
            pyValues(Object.assign({ max_output_tokens: settings.max_tokens }, sampling))) + "\nprint(response.output_text)",
          curl: curl("/v1/responses", [auth, json], jsonBody(responsesFields, "input", messages)),
        },
        messages: {
          python: "import os\n\nfrom anthropic import Anthropic\n\nclient = Anthropic(base_url=" + JSON.stringify(baseUrl) + ", api_key=" + env + ")\n\n" +
            clampNote + extraNote + pyCall("message = client.messages.create", settings, "messages", messages, anthropicExtra) +
            "\nprint(message.content[0].text)",
          curl: clampNote + curl("/v1/messages", [JSON.stringify("x-api-key: $" + keyEnv), JSON.stringify("anthropic-version: 2023-06-01"), json],
            jsonBody(messagesFields, "messages", messages)),
        },
      };
    }

    function updateCode() {
      if (!codePanel || codePanel.hidden) return;  // rebuilt when it opens
      var code = snippets();
      ["chat", "responses", "messages"].forEach(function (api) {
        ["python", "curl"].forEach(function (language) {
          var block = document.querySelector("#pg-code-" + api + "-" + language + " code");
          if (block && block.textContent !== code[api][language]) block.textContent = code[api][language];
        });
      });
      document.getElementById("pg-code-note").textContent = code.example ? "Until you write a message, an example stands in for it." : "";
    }

    if (codePanel && codeToggle) {
      codeToggle.addEventListener("click", function () {
        codePanel.hidden = !codePanel.hidden;
        codeToggle.setAttribute("aria-expanded", String(!codePanel.hidden));
        codeToggle.textContent = codePanel.hidden ? "View code" : "Hide code";
        updateCode();
      });
      ["pg-model", "pg-max-tokens", "pg-temperature", "pg-prompt"].forEach(function (id) {
        document.getElementById(id).addEventListener("input", updateCode);
      });
      document.getElementById("pg-model").addEventListener("change", updateCode);
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var text = prompt.value.trim();
      if (!text || controller) return;
      prompt.value = "";
      send(text);
    });
    prompt.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    stopButton.addEventListener("click", function () { if (controller) controller.abort(); });
    document.getElementById("pg-clear").addEventListener("click", function () {
      if (controller) controller.abort();
      history = [];
      updateCode();
      transcript.innerHTML = '<p class="transcript-empty muted" id="pg-empty">Ask anything to start. Answers stream in as the model writes them.</p>';
      meta.textContent = "";
    });
  }
})();

// --- The first-run checklist: "waiting for your first request…" ticks itself over the usage feed ----------------
(function () {
  var step = document.getElementById("step-request");
  if (!step || !step.dataset.liveUrl || !("WebSocket" in window)) return;
  var cursor = step.dataset.liveCursor || "";
  var retry = 1000;
  var done = false;

  function tick(event) {
    if (done) return;
    done = true;
    step.classList.add("is-done", "is-new");
    var state = step.querySelector(".step-state");
    if (state) state.textContent = "done";
    var status = document.getElementById("first-request-status");
    status.textContent = "";
    status.appendChild(document.createTextNode("We saw "));
    var id = document.createElement("code");
    id.className = "mono";
    id.textContent = event.request_id;
    status.appendChild(id);
    status.appendChild(document.createTextNode(" (" + event.model + " · " + event.route + ", " + event.http_status + ")" +
      (event.key ? " with “" + event.key.name + "”" : "") + ": your first request. Next steps below."));
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var url = step.dataset.liveUrl + (cursor ? "&after=" + encodeURIComponent(cursor) : "");
    var socket = new WebSocket(scheme + location.host + url);
    socket.onmessage = function (message) {
      var data = JSON.parse(message.data);
      if (data.type === "ready") {
        retry = 1000;
        if (data.cursor) cursor = data.cursor;
        var events = (data.events || []).filter(function (e) { return e.key; });
        if (events.length) tick(events[0]);
      } else if (data.type === "cursor") cursor = data.cursor;
      else if (data.type === "request" && data.key) tick(data);
      if (done) socket.close();
    };
    socket.onclose = function (event) {
      if (done || event.code === 4401 || event.code === 4403) return;
      if (event.code === 4400) cursor = "";
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    };
  }
  connect();
})();
