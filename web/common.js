// Helpers shared by the three kefu pages. Plain browser JavaScript, no
// framework and nothing fetched from the internet.
"use strict";

const kefu = (() => {
  /** Creates an element: el("div", {class: "x", onclick: f}, child, "text"). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  /** The page's WebSocket address: same host, ws or wss to match http or https. */
  function wsUrl() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    return `${proto}//${location.host}/ws`;
  }

  function pad2(n) {
    return String(n).padStart(2, "0");
  }

  /** "14:03:07" for a Unix-ms timestamp (browser's time zone). */
  function clockTime(ms) {
    const d = new Date(ms);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  /** Reads a JSON value from sessionStorage; null when absent or broken. */
  function load(key) {
    try {
      const raw = sessionStorage.getItem(key);
      return raw ? JSON.parse(raw) : null;
    } catch {
      return null;
    }
  }

  function save(key, value) {
    try {
      if (value === null || value === undefined) sessionStorage.removeItem(key);
      else sessionStorage.setItem(key, JSON.stringify(value));
    } catch {
      /* storage full or disabled: the page still works, it just forgets */
    }
  }

  /**
   * A WebSocket that says hello on open and comes back after a drop, with a
   * growing pause (0.5 s doubling to 10 s). `hello()` builds the hello frame
   * at each (re)connect so it can carry a resume secret learned meanwhile.
   * Callbacks: onMessage(obj), onStatus("connecting"|"open"|"closed", detail).
   * `stop()` closes for good (sign out, or the server refused the hello).
   */
  function connect({ hello, onMessage, onStatus }) {
    let ws = null;
    let stopped = false;
    let delay = 500;
    let timer = null;

    function open() {
      if (stopped) return;
      onStatus("connecting");
      ws = new WebSocket(wsUrl());
      ws.addEventListener("open", () => {
        delay = 500;
        ws.send(JSON.stringify(hello()));
        onStatus("open");
      });
      ws.addEventListener("message", (ev) => {
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          console.warn("kefu: frame is not JSON", ev.data);
          return;
        }
        onMessage(msg);
      });
      ws.addEventListener("close", (ev) => {
        ws = null;
        onStatus("closed", ev);
        if (stopped) return;
        timer = setTimeout(open, delay);
        delay = Math.min(delay * 2, 10000);
      });
    }

    open();
    return {
      /** Sends one frame; false when the socket is not open (the caller keeps the text). */
      send(obj) {
        if (!ws || ws.readyState !== WebSocket.OPEN) return false;
        ws.send(JSON.stringify(obj));
        return true;
      },
      stop() {
        stopped = true;
        clearTimeout(timer);
        if (ws) ws.close(1000, "bye");
      },
      isOpen() {
        return !!ws && ws.readyState === WebSocket.OPEN;
      },
    };
  }

  const STAGES = { pre_sale: "售前", in_sale: "售中", after_sale: "售后" };

  /** Chinese label of a stage id; the id itself when unknown. */
  function stageLabel(stage) {
    return STAGES[stage] || stage || "";
  }

  /** Five satisfaction levels, best first, with the platform's Chinese labels. */
  const RATINGS = [
    ["very_satisfied", "非常满意"],
    ["satisfied", "满意"],
    ["neutral", "一般"],
    ["dissatisfied", "不满意"],
    ["very_dissatisfied", "非常不满意"],
  ];

  /** Shows the connection state in the page header's `#status` badge. */
  function setStatus(kind, text) {
    const s = document.getElementById("status");
    s.className = `status ${kind}`;
    s.textContent = text;
  }

  return { el, setStatus, wsUrl, clockTime, pad2, load, save, connect, stageLabel, RATINGS };
})();
