/* Touchpoint Tracker browser SDK: sends Segment-format touchpoints to the collector's /v1/batch.
   Loaded by the snippet in README.md, which queues calls made before this file arrives. */
(function (w, d) {
  "use strict";
  var stub = w.tracker;
  if (stub && stub.loaded) return;

  var VERSION = "0.1.0";
  var P = "tt_"; // storage key prefix
  var nav = w.navigator;
  var loc = w.location;
  var hist = w.history;
  var cfg = {
    flushAt: 20, // messages that trigger a send at once
    flushInterval: 1000, // ms a message may wait for others
    maxQueue: 500, // stored messages; the oldest are dropped past it
    maxBatchBytes: 60000, // keepalive and beacon bodies are limited to 64 KB
    retryBase: 1000,
    retryMax: 60000,
    autoPage: true,
    pageLoad: true,
    errors: true,
    rageClicks: true,
    rageCount: 3, // clicks on one element ...
    rageMs: 1000, // ... within this many ms
    channel: "web",
    consentRequired: false
  };
  var ready = false;
  var consent; // "1" granted, "0" refused, undefined pending
  var memory = memoryStore();
  var disk = diskStore();
  var store = memory;
  var state = {}; // anonymousId, userId, traits
  var inflight = {}; // messageId -> keepalive? while a request carries it
  var sending = false;
  var attempt = 0;
  var timer = null;
  var due = 0; // when the timer fires
  var notBefore = 0; // no request before this time (backoff, Retry-After)
  var rejected = 0;
  var callTime = 0; // time of a call queued by the snippet, while replaying it
  var lastUrl = "";
  var referrer = d.referrer;
  var errorsSent = 0;

  function memoryStore() {
    var data = {};
    return {
      getItem: function (k) { return k in data ? data[k] : null; },
      setItem: function (k, v) { data[k] = String(v); },
      removeItem: function (k) { delete data[k]; }
    };
  }

  function diskStore() {
    // localStorage when the browser allows it, else sessionStorage, else this page's memory.
    var names = ["localStorage", "sessionStorage"];
    for (var i = 0; i < names.length; i++) {
      try {
        var s = w[names[i]];
        s.setItem(P + "t", "1");
        s.removeItem(P + "t");
        return s;
      } catch (e) { /* blocked: try the next one */ }
    }
    return memory;
  }

  function get(k, s) {
    try { return JSON.parse((s || store).getItem(P + k)); } catch (e) { return null; }
  }

  function set(k, v, s) {
    try {
      (s || store).setItem(P + k, JSON.stringify(v));
      return true;
    } catch (e) {
      return false; // quota exceeded or storage gone
    }
  }

  function uuid() {
    var b = w.crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    var s = "";
    for (var i = 0; i < 16; i++) {
      s += (b[i] + 256).toString(16).slice(1) + (i == 3 || i == 5 || i == 7 || i == 9 ? "-" : "");
    }
    return s;
  }

  function iso(t) { return new Date(t || Date.now()).toISOString(); }

  function assign(to) {
    for (var i = 1; i < arguments.length; i++) {
      var from = arguments[i] || {};
      for (var k in from) if (Object.prototype.hasOwnProperty.call(from, k)) to[k] = from[k];
    }
    return to;
  }

  // Queue: stored as one array, read and written whole so that tabs sharing it do not clobber
  // each other's messages.
  function queue() { return get("q") || []; }

  function save(q) {
    var over = q.length - cfg.maxQueue;
    if (over > 0) dropOldest(q, over);
    while (!set("q", q) && q.length) dropOldest(q, Math.ceil(q.length / 2));
  }

  function dropOldest(q, n) {
    q.splice(0, n);
    set("drop", (get("drop") || 0) + n);
  }

  function remove(ids) {
    save(queue().filter(function (m) { return !ids[m.messageId]; }));
  }

  function loadState() {
    state = {
      anonymousId: get("aid") || uuid(),
      userId: get("uid"),
      traits: get("traits") || {}
    };
    saveState();
  }

  function saveState() {
    set("aid", state.anonymousId);
    set("uid", state.userId);
    set("traits", state.traits);
  }

  function page() {
    return {
      path: loc.pathname,
      referrer: referrer,
      search: loc.search,
      title: d.title,
      url: loc.href
    };
  }

  function message(type, fields) {
    if (consent === "0") return;
    var m = assign({
      type: type,
      messageId: uuid(),
      anonymousId: state.anonymousId,
      timestamp: iso(callTime),
      channel: cfg.channel,
      context: {
        page: page(),
        userAgent: nav.userAgent,
        locale: nav.language,
        library: { name: "touchpoint-tracker.js", version: VERSION }
      }
    }, fields);
    if (state.userId && !m.userId) m.userId = state.userId;
    var q = queue();
    q.push(m);
    save(q);
    schedule(q.length >= cfg.flushAt ? 0 : cfg.flushInterval);
  }

  function schedule(ms) {
    var now = Date.now();
    var at = Math.max(now + ms, notBefore);
    if (timer !== null) {
      if (due <= at) return;
      clearTimeout(timer);
    }
    due = at;
    timer = setTimeout(function () {
      timer = null;
      flush();
    }, at - now);
  }

  function batch() {
    var out = [];
    var bytes = 0;
    var q = queue();
    for (var i = 0; i < q.length && out.length < 100; i++) {
      var m = q[i];
      if (inflight[m.messageId]) continue;
      var size = JSON.stringify(m).length;
      if (out.length && bytes + size > cfg.maxBatchBytes) break;
      out.push(m);
      bytes += size;
    }
    return out;
  }

  function body(msgs) {
    var now = iso();
    var dropped = get("drop");
    msgs = msgs.map(function (m) { return assign({}, m, { sentAt: now }); });
    if (dropped) msgs[0].context = assign({}, msgs[0].context, { dropped: dropped });
    return JSON.stringify({ batch: msgs, sentAt: now, writeKey: cfg.writeKey });
  }

  function idsOf(msgs) {
    var ids = {};
    msgs.forEach(function (m) { ids[m.messageId] = true; });
    return ids;
  }

  // text/plain keeps the request CORS-simple (no preflight) and is what sendBeacon sends.
  function flush(hiding) {
    if (!ready || consent !== "1") return;
    if (hiding) {
      // The page may be going away: what is under way with keepalive, and what the browser
      // takes now, is delivered after unload; the next page must not send it again.
      if (!nav.onLine) return;
      remove(inflight);
    }
    if (Date.now() < notBefore) return hiding || schedule(0);
    var msgs = batch();
    if (!msgs.length || (sending && !hiding)) return;
    var text = body(msgs);
    var ids = idsOf(msgs);
    if (hiding) {
      if (nav.sendBeacon && nav.sendBeacon(cfg.url, text)) {
        set("drop", 0);
        remove(ids);
        return flush(true);
      }
    }
    sending = true;
    var small = text.length < cfg.maxBatchBytes;
    for (var id in ids) inflight[id] = small;
    w.fetch(cfg.url, {
      method: "POST",
      headers: { "Content-Type": "text/plain" },
      body: text,
      keepalive: small,
      credentials: "omit"
    }).then(function (r) {
      done(msgs, ids, r.status, r.headers.get("Retry-After"));
    }, function () {
      done(msgs, ids, 0, null);
    });
    if (hiding) flush(true);
  }

  function done(msgs, ids, status, retryAfter) {
    sending = false;
    for (var id in ids) delete inflight[id];
    var ok = status >= 200 && status < 300;
    if (ok || (status >= 400 && status < 500 && status != 429)) {
      // Accepted, or refused for good (bad key, origin, body): never send these again.
      if (ok) set("drop", 0);
      else rejected += msgs.length;
      attempt = 0;
      notBefore = 0;
      remove(ids);
      if (queue().length) schedule(0);
      return;
    }
    // Not delivered: keep them (again, if they were handed off at page hide) and retry later.
    var q = queue();
    var stored = idsOf(q);
    save(msgs.filter(function (m) { return !stored[m.messageId]; }).concat(q));
    var wait = Math.min(cfg.retryMax, cfg.retryBase * Math.pow(2, attempt++));
    wait = wait / 2 + Math.random() * wait / 2;
    var seconds = parseInt(retryAfter, 10);
    if ((status == 429 || status == 503) && seconds >= 0) {
      wait = Math.max(wait, seconds * 1000 + Math.random() * 500);
    }
    notBefore = Date.now() + wait;
    schedule(0);
  }

  // Consent: before it is given (when required) messages wait in this page's memory only.
  function setConsent(granted) {
    if (granted) {
      if (store === memory && disk !== memory) {
        var q = queue();
        store = disk;
        saveState();
        save(queue().concat(q));
      }
      consent = "1";
      set("consent", "1", disk);
      schedule(0);
    } else {
      consent = "0";
      ["q", "aid", "uid", "traits", "drop"].forEach(function (k) {
        disk.removeItem(P + k);
        memory.removeItem(P + k);
      });
      store = memory;
      loadState();
      set("consent", "0", disk);
    }
  }

  function pageView(name, properties) {
    if (lastUrl && lastUrl != loc.href) referrer = lastUrl;
    message("page", {
      name: name || d.title,
      properties: assign(page(), properties)
    });
    lastUrl = loc.href;
  }

  // Automatic page views for single-page apps: a new path or query string is a new page.
  function watchHistory() {
    var here = function () { return loc.pathname + loc.search; };
    var last = here();
    var changed = function () {
      if (here() != last) {
        last = here();
        pageView();
      }
    };
    ["pushState", "replaceState"].forEach(function (name) {
      var original = hist[name];
      hist[name] = function () {
        var result = original.apply(this, arguments);
        changed();
        return result;
      };
    });
    w.addEventListener("popstate", changed);
  }

  function watchLoad() {
    var report = function () {
      setTimeout(function () {
        var t = w.performance && performance.getEntriesByType("navigation")[0];
        if (!t) return;
        api.track("Page Loaded", {
          load_ms: Math.round(t.loadEventEnd || t.duration),
          ttfb_ms: Math.round(t.responseStart),
          dom_ms: Math.round(t.domContentLoadedEventEnd),
          path: loc.pathname
        });
      }, 0);
    };
    if (d.readyState == "complete") report();
    else w.addEventListener("load", report);
  }

  function watchErrors() {
    var send = function (kind, error, extra) {
      if (errorsSent++ >= 20) return;
      api.track("Error Shown", assign({
        kind: kind,
        message: String((error && error.message) || error).slice(0, 500),
        path: loc.pathname
      }, extra));
    };
    w.addEventListener("error", function (e) {
      send("error", e.error || e.message, { source: e.filename, line: e.lineno, column: e.colno });
    });
    w.addEventListener("unhandledrejection", function (e) {
      send("unhandledrejection", e.reason);
    });
  }

  function selector(el) {
    var parts = [];
    for (var i = 0; el && el.tagName && i < 4; i++, el = el.parentElement) {
      var part = el.tagName.toLowerCase();
      if (el.id) {
        parts.unshift(part + "#" + el.id);
        break;
      }
      if (typeof el.className == "string" && el.className.trim()) {
        part += "." + el.className.trim().split(/\s+/).join(".");
      }
      parts.unshift(part);
    }
    return parts.join(" > ");
  }

  function watchRageClicks() {
    var target = null;
    var times = [];
    d.addEventListener("click", function (e) {
      var now = Date.now();
      if (e.target !== target) {
        target = e.target;
        times = [];
      }
      times = times.filter(function (t) { return now - t < cfg.rageMs; });
      times.push(now);
      if (times.length == cfg.rageCount) {
        api.track("Rage Click", {
          selector: selector(target),
          text: (target.innerText || "").slice(0, 100),
          clicks: times.length,
          path: loc.pathname
        });
      }
    }, true);
  }

  function onHide() { flush(true); }

  var api = {
    loaded: true,
    init: function (url, writeKey, options) {
      if (ready) return;
      assign(cfg, options, { url: url.replace(/\/$/, "") + "/v1/batch", writeKey: writeKey });
      consent = get("consent", disk) || (cfg.consentRequired ? undefined : "1");
      store = consent === "1" ? disk : memory;
      loadState();
      ready = true;
      d.addEventListener("visibilitychange", function () {
        if (d.visibilityState == "hidden") onHide();
      });
      w.addEventListener("pagehide", onHide);
      w.addEventListener("online", function () {
        attempt = 0;
        notBefore = 0;
        schedule(0);
      });
      watchHistory();
      if (cfg.errors) watchErrors();
      if (cfg.rageClicks) watchRageClicks();
      if (cfg.autoPage) pageView();
      if (cfg.pageLoad) watchLoad();
      schedule(0); // what earlier pages left unsent
    },
    page: pageView,
    track: function (event, properties) {
      message("track", { event: event, properties: properties || {} });
    },
    identify: function (userId, traits) {
      if (userId) state.userId = String(userId);
      state.traits = assign(state.traits, traits);
      saveState();
      message("identify", { userId: state.userId, traits: assign({}, traits) });
    },
    alias: function (userId, previousId) {
      message("alias", {
        userId: String(userId),
        previousId: previousId || state.userId || state.anonymousId
      });
    },
    consent: setConsent,
    reset: function () {
      state = { anonymousId: uuid(), userId: null, traits: {} };
      saveState();
    },
    formStep: function (form, step, total, properties) {
      var name = typeof form == "string" ? form : form.getAttribute("name") || form.id || "form";
      api.track("Form Step Viewed", assign({
        form: name,
        step: step,
        total: total,
        progress: total ? Math.round((step / total) * 100) : null
      }, properties));
    },
    flush: function () { schedule(0); },
    user: function () { return assign({}, state); },
    stats: function () {
      return { queued: queue().length, dropped: get("drop") || 0, rejected: rejected };
    }
  };

  w.tracker = api;
  // Replay what the page asked for before this file loaded: init first, then in order.
  var calls = (stub && stub.q) || [];
  calls.sort(function (a, b) { return (b[0] == "init") - (a[0] == "init"); });
  calls.forEach(function (call) {
    callTime = call[2];
    try { api[call[0]].apply(api, call[1]); } catch (e) { /* a bad call must not stop the rest */ }
  });
  callTime = 0;
})(window, document);
