// Buyer demo (/buyer): a second window to try the whole flow as a buyer:
// greeting, chat with the agent, rating at the end. The resume secret of the
// `welcome` is kept in localStorage per shop and buyer, so a reload, and a
// tab closed and opened again in the same browser, rejoin the conversation
// (without it the server refuses the buyer id as taken until the
// conversation closes). Which buyer this tab is stays in sessionStorage: a
// reload goes straight back in, a new tab offers the last buyer who has a
// conversation to rejoin.
"use strict";

(() => {
  const { el, setStatus, clockTime, load, save, connect, RATINGS, errorText, chatText } = kefu;
  const $ = (id) => document.getElementById(id);
  const SESSION_KEY = "kefu.buyer";
  /** localStorage: the last buyer who entered in this browser, {shop, buyer}. */
  const LAST_KEY = "kefu.buyer.last";
  /** localStorage: the resume secret of a shop and buyer (both may hold dots). */
  const resumeKey = (s) => `kefu.resume.${JSON.stringify([s.shop, s.buyer])}`;
  const loadSecret = (s) => load(resumeKey(s), true);
  const saveSecret = (s, secret) => save(resumeKey(s), secret, true);

  let me = null; // {shop, buyer}
  let conn = null;
  let messages = [];
  let rated = null;
  let shopName = "";
  /** This connection has had its welcome (errors before it answer the hello). */
  let inside = false;
  /** The buyer's latest message: the one a `text_too_long`/`rate_limited` refers to. */
  let lastSent = null;
  /** What this page sent since the last welcome: see recoverUnsent. */
  let sentSinceWelcome = [];
  /** The welcome's count of this buyer's messages the server had taken. */
  let receivedAtWelcome = null;
  /** The next render scrolls to the bottom (the buyer's own message). */
  let followNext = false;
  /** The server's limit on a message, in characters (limits.max_text_chars): the welcome's. */
  let maxChars = 2000;

  function showSignin(error) {
    $("signin").hidden = false;
    $("phone").hidden = true;
    $("leave").hidden = true;
    $("who").textContent = "";
    $("signin-error").textContent = error || "";
    setStatus("off", "未连接");
    // This tab's buyer; in a new tab, the browser's last buyer if their
    // conversation can be rejoined (换个买家 leaves the shop alone here).
    let s = load(SESSION_KEY);
    if (!s) {
      const last = load(LAST_KEY, true);
      if (last && last.shop && last.buyer && loadSecret(last)) s = last;
    }
    $("in-shop").value = (s && s.shop) || new URLSearchParams(location.search).get("shop") || "";
    $("in-buyer").value = (s && s.buyer) || `b${Math.floor(1000 + Math.random() * 9000)}`;
  }

  function enter(session) {
    me = session;
    save(SESSION_KEY, session);
    messages = [];
    rated = null;
    lastSent = null;
    $("signin").hidden = true;
    $("phone").hidden = false;
    $("leave").hidden = false;
    $("rating").hidden = true;
    $("who").textContent = `买家 ${me.buyer}`;
    render();
    conn = connect({
      hello: () => {
        const h = { type: "hello", role: "buyer", shop: me.shop, buyer: me.buyer };
        const secret = loadSecret(me);
        if (secret) h.resume = secret;
        return h;
      },
      onMessage: handle,
      onStatus: (st) => {
        inside = false;
        if (st === "open") setStatus("wait", "进店中…");
        else if (st === "connecting") setStatus("wait", "连接中…");
        else setStatus("off", "已断开，正在重连"); // only when a reconnect follows
      },
    });
  }

  function leave(error) {
    if (conn) conn.stop();
    conn = null;
    showSignin(error);
  }

  function handle(m) {
    switch (m.type) {
      case "welcome":
        inside = true;
        if (Number.isInteger(m.max_text_chars) && m.max_text_chars > 0) maxChars = m.max_text_chars;
        setStatus("on", "已连接");
        // A new conversation (the old one closed) brings a new secret in
        // place of the old one.
        if (m.resume) saveSecret(me, m.resume);
        save(LAST_KEY, { shop: me.shop, buyer: me.buyer }, true);
        shopName = m.shop_name || m.shop || me.shop;
        $("shop-name").textContent = `${shopName} · 客服`;
        $("conv-id").textContent = m.conversation ? `会话 ${m.conversation}${m.resumed ? "（已恢复）" : ""}` : "";
        if (Array.isArray(m.history)) {
          messages = m.history.map((x) => ({ from: x.from, text: x.text, at: x.at, agentName: x.agent_name, note: x.note }));
        }
        if (m.resumed) recoverUnsent(m.received);
        sentSinceWelcome = [];
        receivedAtWelcome = typeof m.received === "number" ? m.received : null;
        // A resumed conversation the buyer already rated says so: show the
        // rating given instead of offering it again. A new one starts unrated.
        rated = m.resumed && m.rated ? m.rated : null;
        break;
      case "reply":
        messages.push({ from: m.from, text: m.text, at: m.at, agentName: m.agent_name, note: m.note });
        break;
      case "rated":
        rated = m.score;
        break;
      case "error":
        // shop_busy too: the server closes with 1013, and reconnecting on
        // our own every half second would only add to the crowd; the buyer
        // tries again from the entry form.
        if (["buyer_taken", "unknown_shop", "bad_id", "shop_busy"].includes(m.code)) {
          if (m.code === "buyer_taken") saveSecret(me, null);
          leave(errorText(m));
          return;
        }
        // Another tab of this buyer took over with the same secret: this one
        // stops for good (no reconnect, which would take it back in turn).
        if (m.code === "replaced") {
          leave("这个买家已在另一个窗口打开，这里已断开（replaced）");
          return;
        }
        if (m.code === "already_rated") rated = rated || "done";
        // Before this connection's welcome an error answers the hello (a
        // resume over the conversation's rate, closed with 1013 and tried
        // again later), not the latest message, which went out on an
        // earlier connection.
        if (inside && ["text_too_long", "rate_limited", "empty_text", "control_characters"].includes(m.code)) {
          // The message did not go out: mark it and give the text back.
          if (lastSent) {
            lastSent.failed = true;
            // Refused, so not a message to look for after a resume either.
            sentSinceWelcome = sentSinceWelcome.filter((x) => x.line !== lastSent);
            if (!$("text").value) $("text").value = lastSent.text;
            lastSent = null;
          }
          showBanner(`消息未发出：${errorText(m)}`);
        } else showBanner(errorText(m));
        break;
      default:
        console.debug("kefu: unhandled frame", m);
    }
    render();
  }

  /**
   * Messages sent since the last welcome may not have reached the server (it
   * hung, the link dropped): nothing acknowledges a buyer's message. After a
   * resume the welcome says how many of the buyer's messages the server has
   * taken in all (`received`); they arrive in order, so the first
   * `received` − the previous welcome's count of those sent since arrived
   * and the rest did not. One that is missing is shown as not sent and its
   * text goes back into the box (found by review: it vanished when the
   * history replaced the list). Counting texts in the history instead called
   * a repeated text that arrived not sent once the server had cut the
   * history to its newest lines (found by review); that is only the
   * fallback, for a count that went back (a restart that did not read the
   * conversation's beginning).
   */
  function recoverUnsent(received) {
    let lost;
    if (typeof received === "number" && receivedAtWelcome !== null && received >= receivedAtWelcome) {
      lost = sentSinceWelcome.slice(received - receivedAtWelcome);
    } else {
      const inHistory = new Map();
      for (const x of messages) if (x.from === "buyer") inHistory.set(x.text, (inHistory.get(x.text) || 0) + 1);
      lost = sentSinceWelcome.filter((x) => (inHistory.get(x.text) || 0) < x.before + 1);
    }
    if (!lost.length) return;
    for (const x of lost) messages.push({ from: "buyer", text: x.text, at: x.at, failed: true });
    if (!$("text").value) $("text").value = lost.map((x) => x.text).join(" ");
    showBanner(`有 ${lost.length} 条消息未发出（连接中断），内容已放回输入框，请重新发送`);
  }

  let bannerTimer = null;
  function showBanner(text) {
    const b = $("banner");
    b.textContent = text;
    b.hidden = false;
    clearTimeout(bannerTimer);
    bannerTimer = setTimeout(() => (b.hidden = true), 6000);
  }

  function render() {
    const box = $("messages");
    // Follow new lines only when the buyer is at the bottom already: one
    // who scrolled up to reread an order number keeps their place.
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    box.replaceChildren(
      ...messages.map((x) => {
        // Names come from the shop's configuration: shown through chatText
        // like any message, in their own isolated run, so a direction
        // control in one cannot turn the time beside it around (found by
        // review).
        const name = (text) => el("bdi", null, chatText(text));
        const who = x.from === "buyer" ? ["我"] : x.from === "bot" ? [name(shopName || "店铺"), " · 自动回复"] : ["客服", ...(x.agentName ? [" ", name(x.agentName)] : [])];
        // The buyer's own lines sit on the right, the shop's on the left.
        const side = x.from === "buyer" ? "mine" : x.from === "bot" ? "buyer bot-left" : "buyer agent-left";
        return el(
          "div",
          { class: `msg ${side}`, dataset: { from: x.from } },
          el("span", { class: "meta" }, who, ` · ${clockTime(x.at)}${x.failed ? " · 未发出" : ""}`),
          el("div", { class: "bubble" }, chatText(x.text)),
        );
      }),
    );
    if (atBottom || followNext) box.scrollTop = box.scrollHeight;
    followNext = false;
    renderRating();
  }

  function renderRating() {
    const panel = $("rating");
    if (rated) {
      panel.hidden = false;
      const name = (RATINGS.find(([k]) => k === rated) || [null, ""])[1];
      $("rating-q").textContent = name ? `感谢您的评价：${name}` : "感谢您的评价";
      $("levels").replaceChildren();
      $("end").disabled = true;
      return;
    }
    $("end").disabled = false;
    $("rating-q").textContent = "请为本次服务评价：";
    $("levels").replaceChildren(
      ...RATINGS.map(([score, label]) =>
        el("button", { class: "btn", type: "button", dataset: { score }, onclick: () => rate(score) }, label),
      ),
    );
  }

  function rate(score) {
    if (!conn || !conn.send({ type: "rate", score })) {
      showBanner("未连接，评价没有发出，请稍后再试");
      return;
    }
  }

  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("text");
    const text = input.value.trim();
    if (!text) return;
    // The limit counts characters as the server does (an emoji is one), not
    // UTF-16 units as `maxlength` would (it cut 1,500 emoji to 1,000).
    const chars = [...text].length;
    if (chars > maxChars) {
      showBanner(`消息太长了（${chars} 字），请分几条发送，每条不超过 ${maxChars} 字`);
      return;
    }
    if (!conn || !conn.send({ type: "message", text })) {
      showBanner("未连接，消息没有发出，请稍后再试");
      return;
    }
    const before = messages.filter((x) => x.from === "buyer" && !x.failed && x.text === text).length;
    lastSent = { from: "buyer", text, at: Date.now() };
    sentSinceWelcome.push({ text, at: lastSent.at, before, line: lastSent });
    messages.push(lastSent);
    followNext = true;
    input.value = "";
    render();
  });
  $("end").addEventListener("click", () => {
    $("rating").hidden = false;
    renderRating();
  });
  $("leave").addEventListener("click", () => {
    // Another buyer of the same shop: keep the shop, offer a new buyer id.
    save(SESSION_KEY, { shop: me && me.shop });
    leave("");
  });
  $("signin").addEventListener("submit", (e) => {
    e.preventDefault();
    const shop = $("in-shop").value.trim();
    const buyer = $("in-buyer").value.trim();
    if (shop && buyer) enter({ shop, buyer });
  });

  const saved = load(SESSION_KEY);
  if (saved && saved.shop && saved.buyer) enter(saved);
  else showSignin("");
})();
