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
  /**
   * The service's WebSocket, beside the page: `/ws` at the root, or
   * `/kefu/ws` when a proxy serves kefu under `/kefu/` (docs/DEPLOY.md).
   */
  function wsUrl() {
    const u = new URL("ws", location.href);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    u.search = "";
    u.hash = "";
    return u.href;
  }

  function pad2(n) {
    return String(n).padStart(2, "0");
  }

  /** "14:03:07" for a Unix-ms timestamp (browser's time zone). */
  function clockTime(ms) {
    const d = new Date(ms);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  /**
   * Reads a JSON value from sessionStorage (the tab's), or localStorage
   * (the browser's, kept after the tab closes) when `local`; null when
   * absent or broken.
   */
  function load(key, local = false) {
    try {
      const raw = (local ? localStorage : sessionStorage).getItem(key);
      return raw ? JSON.parse(raw) : null;
    } catch {
      return null;
    }
  }

  /** Stores a JSON value as `load` reads it; null or undefined removes it. */
  function save(key, value, local = false) {
    try {
      const store = local ? localStorage : sessionStorage;
      if (value === null || value === undefined) store.removeItem(key);
      else store.setItem(key, JSON.stringify(value));
    } catch {
      /* storage full or disabled: the page still works, it just forgets */
    }
  }

  /**
   * A WebSocket that says hello on open and comes back after a drop, with a
   * growing pause (0.5 s doubling to 10 s; after a 1013 at least 5 s, 5 s to 7.5 s). `hello()` builds the hello frame
   * at each (re)connect so it can carry a resume secret learned meanwhile.
   * Callbacks: onMessage(obj), onStatus("connecting"|"open"|"closed", detail);
   * "closed" means a reconnect is coming. `stop()` closes for good (sign
   * out, or the server refused the hello): no callback is called after it.
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
        ws.send(JSON.stringify(hello()));
        onStatus("open");
      });
      ws.addEventListener("message", (ev) => {
        // Frames still in flight after stop() belong to a session the page
        // has already left (signed out, refused, another buyer).
        if (stopped) return;
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          console.warn("kefu: frame is not JSON", ev.data);
          return;
        }
        // The pause starts over once the server has taken the hello, not
        // when the socket opens: a server at its limit opens the socket and
        // then refuses (server_busy, 1013), and retrying that every half
        // second would add to the crowd.
        if (msg && msg.type === "welcome") delay = 500;
        onMessage(msg);
      });
      ws.addEventListener("close", (ev) => {
        ws = null;
        // After stop() nothing reconnects, so there is nothing to report:
        // the page has shown its own state (sign-in form, 未连接).
        if (stopped) return;
        onStatus("closed", ev);
        // 1013: the server asks to come back later. At least 5 s (5 s to
        // 7.5 s; 10 s to 15 s once the pause has grown), spread so that the
        // pages it turned away together do not return together.
        const wait = ev.code === 1013 ? Math.max(delay, 5000) * (1 + Math.random() / 2) : delay;
        timer = setTimeout(open, wait);
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

  /**
   * Chinese explanations of the server's error codes (docs/PROTOCOL.md
   * "Errors"). The code itself stays in parentheses after the text, so a
   * shop owner can quote it to support.
   */
  const ERRORS = {
    text_too_long: "内容超过字数上限，请精简后再发",
    empty_text: "内容不能为空",
    control_characters: "内容里有看不见的控制字符，请删掉后再发",
    rate_limited: "发送太频繁啦，请稍等片刻再发",
    unknown_conversation: "这个会话已结束或已转给其他客服，不能再回复",
    unknown_agent: "本店没有这位同事，请从列表中选择",
    agent_offline: "这位同事当前不在线，请选择在线的同事",
    self_transfer: "不能转接给自己，请选择其他同事",
    bad_token: "店铺 ID、客服工号或令牌不正确，请核对后重新登录",
    too_many_attempts: "这个账号登录失败的次数太多，为保护账号已暂停登录，请稍后再试",
    unknown_shop: "没有找到这个店铺，请核对店铺 ID",
    bad_id: "买家 ID 需为 1-64 个字符，不能含空格、控制字符或不可见字符",
    buyer_taken: "这个买家 ID 正在另一个窗口咨询中，请回到原窗口，或换一个买家 ID",
    shop_busy: "亲，当前咨询人数较多，请您稍后再来",
    already_rated: "您已经评价过了，感谢您的反馈",
    bad_score: "评价选项无效，请刷新页面后再试",
    replaced: "已在另一个窗口打开，这里已下线",
    hello_timeout: "连接超时，正在重新连接",
    server_busy: "亲，现在咨询的人太多啦，请您稍等片刻，页面会自动重新连接",
    binary_not_supported: "页面发出的消息格式不对，请刷新页面后再试",
    bad_json: "页面发出的消息格式不对，请刷新页面后再试",
    missing_type: "页面发出的消息格式不对，请刷新页面后再试",
    unknown_type: "页面发出的消息格式不对，请刷新页面后再试",
    bad_message: "页面发出的消息格式不对，请刷新页面后再试",
    hello_first: "连接还没有准备好，请稍后再试",
    already_hello: "连接状态异常，请刷新页面",
    wrong_role: "当前身份不能进行这个操作",
  };

  /** A wait in seconds as Chinese text: "6 秒", "2 分钟", "1 分 30 秒". */
  function waitText(secs) {
    if (secs < 60) return `${secs} 秒`;
    const min = Math.floor(secs / 60);
    const s = secs % 60;
    return s ? `${min} 分 ${s} 秒` : `${min} 分钟`;
  }

  /**
   * "中文说明（code）" for an error frame; the server's English message when
   * the code is unknown. `text_too_long` names the numbers of the server's
   * message ("the text has N characters; the limit is M") when it has them.
   */
  function errorText(m) {
    const code = (m && m.code) || "";
    let text = ERRORS[code];
    if (code === "text_too_long") {
      const n = /has (\d+) characters; the limit is (\d+)/.exec((m && m.message) || "");
      if (n) text = `内容有 ${n[1]} 字，超过 ${n[2]} 字的上限，请精简后再发`;
    }
    if (code === "too_many_attempts" && Number.isInteger(m.retry_after) && m.retry_after > 0) {
      text = `这个账号登录失败的次数太多，为保护账号已暂停登录，请 ${waitText(m.retry_after)}后再试`;
    }
    if (!text) text = (m && m.message) || "出错了";
    return code ? `${text}（${code}）` : text;
  }

  /**
   * Bidirectional control characters (embeddings, overrides, isolates and
   * marks). A buyer could use them to make text read differently from what
   * it is, e.g. U+202E turning "gpj.exe" around or hiding the order of an
   * order number's digits.
   */
  const BIDI_CONTROLS = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

  /**
   * A chat text as DOM children with every bidi control character replaced
   * by a visible badge ("U+202E"), so it has no effect on the display and
   * the agent sees that it was there. The CSS (`unicode-bidi: plaintext`
   * on bubbles and previews) does the rest: see kefu.css.
   */
  function chatText(text) {
    const s = String(text == null ? "" : text);
    const out = [];
    let pos = 0;
    for (const m of s.matchAll(BIDI_CONTROLS)) {
      if (m.index > pos) out.push(s.slice(pos, m.index));
      const cp = `U+${m[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}`;
      out.push(el("span", { class: "ctl", title: `方向控制字符 ${cp}：已显示出来，不会改变文字方向` }, cp));
      pos = m.index + m[0].length;
    }
    if (pos < s.length || !out.length) out.push(s.slice(pos));
    return out;
  }

  /**
   * `text` as a plain string with every bidi control character written out
   * as "[U+202E]": for places that hold no markup (a select's options, a
   * title), where chatText's badges cannot go.
   */
  function visibleText(text) {
    return String(text == null ? "" : text).replace(BIDI_CONTROLS, (ch) => `[U+${ch.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}]`);
  }

  /** Shows the connection state in the page header's `#status` badge. */
  function setStatus(kind, text) {
    const s = document.getElementById("status");
    s.className = `status ${kind}`;
    s.textContent = text;
  }

  return { el, setStatus, wsUrl, clockTime, pad2, load, save, connect, stageLabel, RATINGS, errorText, waitText, chatText, visibleText };
})();
