// Agent workbench (/): sign in, conversation list with the response clock,
// chat, suggestions, and the politeness check while typing.
// Speaks the WebSocket protocol of docs/PROTOCOL.md.
"use strict";

(() => {
  const { el, setStatus, clockTime, load, save, connect, stageLabel, errorText, chatText, visibleText } = kefu;
  const $ = (id) => document.getElementById(id);
  const SESSION_KEY = "kefu.agent";
  const BASE_TITLE = document.title;
  /**
   * The desk kept across a reload (F5) in the tab's sessionStorage, like
   * the sign-in: {shop, agent, selected, drafts: {id: {text, intent}},
   * unread: {id: n}}. Restored after the first welcome, for the
   * conversations it lists; the others' entries are dropped.
   */
  const DESK_KEY = "kefu.agent.desk";
  /** Whether the stored desk was restored (nothing is stored before: the page would overwrite it empty). */
  let deskRestored = false;
  const LINT_DELAY_MS = 250;
  // The server's `limits.max_text_chars` (characters, i.e. Unicode code
  // points, as the server counts them): the default until the agent
  // `welcome` says the server's (a lower setting made the politeness check
  // of a long draft come back refused every second, unexplained; found by
  // review). The server stays the judge (a reply over its limit is
  // refused and comes back to the box).
  let maxTextChars = 2000;
  // Error codes that close the connection or belong to the hello: they do
  // not answer a `reply` or `lint` of ours.
  const SESSION_ERRORS = ["bad_token", "too_many_attempts", "unknown_shop", "bad_id", "buyer_taken", "hello_timeout", "replaced"];

  /** @type {Map<string, object>} conversation id -> state */
  const convs = new Map();
  /**
   * Drafts per conversation id: {text, intent}. The reply box shows the
   * selected conversation's, and every edit of the box is written back.
   */
  const drafts = new Map();
  /**
   * Drafts of conversations that vanished in a reconnect, by buyer id: a
   * new conversation of the same buyer (e.g. after a server restart) takes
   * the draft over.
   */
  const orphanDrafts = new Map();
  /**
   * Our `reply`, `lint` and `transfer` frames still waiting for their
   * answer, in the order sent: {kind: "reply"|"lint"|"transfer", conv,
   * buyer, text, intent, msg, to}.
   * The server answers each in order (frames to an agent never change
   * order), so an error frame answers the oldest one.
   */
  let inflight = [];
  /** Replies whose connection dropped before `reply_sent`; checked at the next welcome. */
  let unconfirmed = [];
  let selected = null;
  /**
   * The buyer whose conversation was selected when it vanished in a
   * reconnect (e.g. a server restart): their new conversation is selected
   * when it comes, unless the agent has chosen or typed elsewhere meanwhile.
   */
  let lostSelection = null;
  let conn = null;
  let me = null; // {shop, agent, token}
  let welcomed = false;
  /** Browser clock minus server clock, learned from the `at` of frames. */
  let skew = 0;
  /** The shop's other agents: id -> {name, online, removed}, from the welcome and `colleague` frames. */
  const colleagues = new Map();
  /**
   * The colleague the agent picked in the open 转接 row (null: none yet).
   * Only the agent changes it: colleagues going off- and online, or our own
   * welcome refilling the list, never do, so a transfer only ever goes to
   * whom the agent chose. (A colleague removed from the shop is unchosen.)
   */
  let transferChoice = null;
  /** Conversations this page transferred: id -> colleague id, to explain a late refusal. */
  const transferredTo = new Map();
  /** Round timing the server announced (ms); null until it does. */
  let targetMs = null;
  let nudgeMs = null;
  /** The intent of the suggestion the agent took, sent with the reply. */
  let usedIntent = null;
  let lintTimer = null;
  let lintSent = null;
  let lintShown = null;

  const serverNow = () => Date.now() - skew;
  /** Characters as the server counts them (code points, not UTF-16 units). */
  const charCount = (text) => Array.from(text).length;

  function learnSkew(at) {
    if (typeof at !== "number") return;
    // A frame stamped `at` by the server left it just now; the smallest
    // difference seen is the best estimate (network delay only adds).
    const d = Date.now() - at;
    if (!learnSkew.seen || d < skew) skew = d;
    learnSkew.seen = true;
  }

  // ---------- sign in / out ----------

  function showSignin(error) {
    $("signin").hidden = false;
    $("bench").hidden = true;
    $("signout").hidden = true;
    $("who").textContent = "";
    $("signin-error").textContent = error || "";
    setStatus("off", "未连接");
    const s = load(SESSION_KEY);
    if (s) {
      $("in-shop").value = s.shop || "";
      $("in-agent").value = s.agent || "";
    }
  }

  function signIn(session) {
    me = session;
    save(SESSION_KEY, session);
    $("signin").hidden = true;
    $("bench").hidden = false;
    $("signout").hidden = false;
    $("who").textContent = `店铺 ${session.shop} · 客服 ${session.agent}`;
    welcomed = false;
    conn = connect({
      hello: () => ({ type: "hello", role: "agent", shop: me.shop, agent: me.agent, token: me.token }),
      onMessage: handle,
      onStatus: (st) => {
        if (st === "open") {
          setStatus("wait", "登录中…");
          inflight = []; // a new connection: nothing of ours is in flight on it
        } else if (st === "connecting") setStatus("wait", "连接中…");
        else {
          // Only called when a reconnect follows (not after 退出 or a refusal).
          setStatus("off", "已断开，正在重连");
          if (welcomed) logEvent("error", "连接断开，正在重连…");
          welcomed = false;
          // Replies nobody confirmed may or may not have reached the server:
          // the next welcome's history tells.
          unconfirmed.push(...inflight.filter((e) => e.kind === "reply"));
          inflight = [];
          lintSent = null; // its answer will not come: check again when back
          updateComposer();
          renderTransfer(); // a transfer in flight is forgotten: the next welcome tells where the conversation is
        }
      },
    });
    renderAll();
  }

  /** Ends the session: the server refused it, or the agent signed out. */
  function refuse(message) {
    if (conn) conn.stop();
    conn = null;
    welcomed = false;
    const s = load(SESSION_KEY) || {};
    save(SESSION_KEY, { shop: s.shop, agent: s.agent }); // forget the token only
    save(DESK_KEY, null);
    deskRestored = false;
    convs.clear();
    colleagues.clear();
    transferredTo.clear();
    closeTransfer();
    drafts.clear();
    orphanDrafts.clear();
    inflight = [];
    unconfirmed = [];
    selected = null;
    lostSelection = null;
    $("reply").value = "";
    usedIntent = null;
    clearLint();
    updateCount();
    $("banner").hidden = true;
    $("events").replaceChildren();
    renderAll();
    showSignin(message);
  }

  function signOut() {
    refuse("");
  }

  // ---------- conversations ----------

  function conv(id, buyer) {
    let c = convs.get(id);
    if (!c) {
      c = {
        id,
        buyer: buyer || "",
        messages: [],
        waitingSince: null,
        deadline: null,
        nudgeAt: null,
        nudged: false,
        breached: false,
        suggestions: [],
        lastActivity: 0,
        unread: 0,
        rating: null,
      };
      convs.set(id, c);
      if (buyer) succeed(c);
    }
    if (buyer) c.buyer = buyer;
    return c;
  }

  /**
   * A new conversation of a buyer whose earlier one has ended replaces it
   * in the list, so there are no two rows to confuse: the ended one's
   * unsent draft and the selection move to the new one.
   */
  function succeed(c) {
    for (const [id, old] of [...convs]) {
      if (id === c.id || !old.closed || old.buyer !== c.buyer) continue;
      if (selected === id) {
        saveDraft();
        selected = c.id;
      }
      if (drafts.has(id) && !drafts.has(c.id)) drafts.set(c.id, drafts.get(id));
      drafts.delete(id);
      convs.delete(id);
      if (selected === c.id) loadDraft();
    }
  }

  /** Takes the round fields of a server frame (any of them may be absent). */
  function takeRound(c, m) {
    if ("waiting_since" in m) c.waitingSince = m.waiting_since;
    if ("deadline" in m) c.deadline = m.deadline;
    if ("nudge_at" in m) c.nudgeAt = m.nudge_at;
    if (c.waitingSince == null) {
      c.deadline = null;
      c.nudgeAt = null;
      c.nudged = false;
      c.breached = false;
      return;
    }
    if (c.deadline == null && targetMs != null) c.deadline = c.waitingSince + targetMs;
    if (!("nudge_at" in m) || m.nudge_at == null) {
      if (nudgeMs != null) c.nudgeAt = c.waitingSince + nudgeMs;
      else if (c.deadline != null) c.nudgeAt = c.deadline - (c.deadline - c.waitingSince) / 3;
    }
  }

  /**
   * The list's order: buyers waiting for an answer first, the soonest
   * deadline on top (the most urgent); then the others by last activity,
   * newest first; ended conversations last.
   */
  function ordered() {
    const group = (c) => (c.closed ? 2 : c.waitingSince != null ? 0 : 1);
    const due = (c) => (c.deadline != null ? c.deadline : c.waitingSince);
    return [...convs.values()].sort((a, b) => group(a) - group(b) || (group(a) === 0 ? due(a) - due(b) : 0) || b.lastActivity - a.lastActivity);
  }

  /** Whether the latest round was ended by an agent's (confirmed) reply. */
  function answered(c) {
    for (let i = c.messages.length - 1; i >= 0; i--) {
      const x = c.messages[i];
      if (x.from === "buyer") return false;
      if (x.from === "agent" && !x.pending) return true;
    }
    return false; // only the bot's greeting so far: the buyer has not written
  }

  /**
   * The clock badge of a conversation at server time `now`: the countdown
   * while the buyer waits, else the rating, 已回复 when an agent answered
   * the latest round, or nothing (the buyer has not written yet).
   */
  function clockOf(c, now) {
    if (c.waitingSince == null || c.deadline == null) {
      if (c.rating) return { cls: "done", text: `评价：${ratingName(c.rating)}` };
      return { cls: "done", text: answered(c) ? "已回复" : "" };
    }
    const left = c.deadline - now;
    if (left <= 0 || c.breached) {
      return { cls: "breach", text: `超时 ${Math.max(0, Math.floor(-left / 1000))}s` };
    }
    const nudge = c.nudged || (c.nudgeAt != null && now >= c.nudgeAt);
    return { cls: nudge ? "nudge" : "ok", text: `剩 ${Math.ceil(left / 1000)}s` };
  }

  function ratingName(score) {
    const r = kefu.RATINGS.find(([k]) => k === score);
    return r ? r[1] : score;
  }

  // ---------- server frames ----------

  function handle(m) {
    // `now`: the server's clock on the agent welcome and
    // conversation_assigned, so the clock is right from the sign-in on.
    // Learnt again at each welcome: the smallest difference is kept only
    // within a connection, or a browser clock that stepped forward kept
    // every countdown late until a reload (a new round showed 超时;
    // found by review).
    if (m.type === "welcome") learnSkew.seen = false;
    if (typeof m.at === "number") learnSkew(m.at);
    else if (typeof m.now === "number") learnSkew(m.now);
    switch (m.type) {
      case "welcome": {
        welcomed = true;
        setStatus("on", "在线");
        if (m.shop_name) $("who").textContent = `${m.shop_name}（${me.shop}）· 客服 ${me.agent}`;
        if (Number.isInteger(m.max_text_chars) && m.max_text_chars > 0) {
          maxTextChars = m.max_text_chars;
          $("reply-count").title = `回复最多 ${maxTextChars} 字`;
          updateCount();
        }
        if (m.clock) {
          if (typeof m.clock.target_ms === "number") targetMs = m.clock.target_ms;
          if (typeof m.clock.nudge_ms === "number") nudgeMs = m.clock.nudge_ms;
        }
        // The server's list is the truth after a (re)connect: conversations
        // moved to another agent meanwhile are no longer ours. Their drafts
        // are kept by buyer for a new conversation of the same buyer.
        saveDraft();
        const orphansBefore = new Map(orphanDrafts);
        const prevBuyer = convs.has(selected) ? convs.get(selected).buyer : null;
        const listed = new Set((m.conversations || []).map((v) => v.conversation));
        for (const [id, c] of [...convs]) {
          if (listed.has(id)) continue;
          if (drafts.has(id)) mergeDraft(orphanDrafts, c.buyer, drafts.get(id));
          drafts.delete(id);
          convs.delete(id);
        }
        // The selection stays when its conversation is still listed, or
        // follows its buyer to a new conversation (now or when it comes).
        const kept = convs.has(selected);
        if (!kept) {
          selected = null;
          loadDraft();
          if (prevBuyer) lostSelection = prevBuyer;
        }
        (m.conversations || []).forEach((v) => takeConversation(v, false));
        if (!deskRestored) restoreDesk();
        colleagues.clear();
        for (const x of m.colleagues || []) colleagues.set(x.agent, { name: x.name || null, online: !!x.online });
        checkUnconfirmed();
        // The "not connected" warning of a send during the outage is over.
        if ($("banner").dataset.tag === "offline") $("banner").hidden = true;
        showPhraseStatus(m.phrases);
        // After the libraries' notice, which would replace it (found by review).
        showMovedAway(orphansBefore);
        logEvent("info", `已上线${m.conversations && m.conversations.length ? `，接手 ${m.conversations.length} 个会话` : "，等待买家消息"}`);
        break;
      }
      case "conversation_assigned": {
        const c = takeConversation(m, true);
        if (m.reason === "transferred") {
          // Handed over by a colleague: who, and their note, in the chat
          // (the history's staff-only line, which a reload keeps) and in
          // the log. A server without that line: the page's own.
          const from = `同事 ${colleagueName(m.from)} 转接给你${m.note ? `，备注：${m.note}` : ""}`;
          if (!c.messages.some((x) => x.staff)) c.messages.push({ from: "system", cls: "transferred", text: from, at: serverNow() });
          logEvent("info", `新会话：买家 ${c.buyer}（${from}）`, c.id);
          break;
        }
        const why = { new: "新买家", reassigned: "原客服离线，转给你", waiting: "无人在线时进店" }[m.reason] || m.reason || "";
        logEvent("info", `新会话：买家 ${c.buyer}${why ? `（${why}）` : ""}`, c.id);
        break;
      }
      case "conversations_assigned": {
        // Several at once (a colleague left): one frame, one log line.
        const list = Array.isArray(m.conversations) ? m.conversations : [];
        list.forEach((v) => takeConversation(v, true));
        const why = { reassigned: "原客服离线，转给你", waiting: "无人在线时进店" }[m.reason] || m.reason || "";
        logEvent("info", `接手 ${list.length} 个会话${why ? `（${why}）` : ""}`);
        break;
      }
      case "conversation_transferred": {
        // Our transfer went through: the conversation is the colleague's.
        const i = inflight.findIndex((e) => e.kind === "transfer" && e.conv === m.conversation);
        if (i >= 0) inflight.splice(i, 1);
        const c = convs.get(m.conversation);
        if (!c) break;
        transferredTo.set(c.id, m.to);
        // A reply typed but not sent goes nowhere now (sending was blocked
        // while the transfer was in flight): show it, with 复制, rather
        // than drop it with the draft.
        const unsent = (selected === c.id ? $("reply").value : (drafts.get(c.id) || {}).text || "").trim();
        convs.delete(c.id);
        drafts.delete(c.id);
        logEvent("info", `已将买家 ${c.buyer} 转接给 ${colleagueName(m.to)}${unsent ? `；输入框里未发出的回复：${unsent}` : ""}`);
        if (unsent) showUnsent(`买家 ${c.buyer} 已转接给 ${colleagueName(m.to)}。输入框里的这条回复没有发给买家，如需要请复制给同事：`, unsent);
        if (selected === c.id) {
          selected = null;
          closeTransfer();
          const next = ordered()[0];
          if (next) select(next.id, true);
          else loadDraft();
        }
        break;
      }
      case "colleague": {
        // A colleague removed from the shop (settings reload) is not coming
        // back: off the 转接 list, and no longer the choice. Their name stays
        // known for the history's lines.
        colleagues.set(m.agent, { name: m.name || null, online: !!m.online && !m.removed, removed: !!m.removed });
        if (m.removed && transferChoice === m.agent) transferChoice = null;
        break;
      }
      case "buyer_message": {
        const c = conv(m.conversation, m.buyer);
        c.messages.push({ from: "buyer", text: m.text, at: m.at });
        takeRound(c, m);
        c.suggestions = Array.isArray(m.suggestions) ? m.suggestions.slice(0, 3) : [];
        c.lastActivity = Date.now();
        c.online = true;
        if (selected !== c.id) c.unread++;
        if (!selected) select(c.id, true);
        break;
      }
      case "bot_reply": {
        const c = conv(m.conversation);
        c.messages.push({ from: "bot", text: m.text, at: m.at, note: m.note });
        break;
      }
      case "reply": {
        // Replies of this conversation the server echoes (e.g. from another
        // tab of the same agent); our own are already shown.
        if (!m.conversation) break;
        const c = conv(m.conversation);
        if (m.from === "bot") c.messages.push({ from: "bot", text: m.text, at: m.at, note: m.note });
        else if (!c.messages.some((x) => x.pending && x.text === m.text)) c.messages.push({ from: m.from, text: m.text, at: m.at, agent: m.agent });
        break;
      }
      case "reply_sent": {
        // The server took the reply: only now is the round over.
        const i = inflight.findIndex((e) => e.kind === "reply" && e.conv === m.conversation);
        const entry = i >= 0 ? inflight.splice(i, 1)[0] : null;
        const c = convs.get(m.conversation);
        if (!c) break;
        const x = entry && c.messages.includes(entry.msg) ? entry.msg : c.messages.find((y) => y.pending);
        if (x) {
          x.pending = false;
          if (typeof m.at === "number") x.at = m.at;
          x.delivered = m.delivered;
          if (typeof m.response_ms === "number") x.responseMs = m.response_ms;
        }
        // Frames keep their order, so a buyer message after this reply
        // comes after this receipt: no round is running now.
        c.waitingSince = null;
        takeRound(c, {});
        c.suggestions = [];
        if ($("banner").dataset.tag === "refused") $("banner").hidden = true;
        break;
      }
      case "nudge": {
        const c = conv(m.conversation, m.buyer);
        takeRound(c, m);
        c.nudged = true;
        // How long is left, not the target again: "请在 30 秒内回复" read as 30 s more.
        const left = c.deadline != null ? Math.max(0, Math.round((c.deadline - m.at) / 1000)) : null;
        logEvent("nudge", `提醒：买家 ${c.buyer} 已等待 ${Math.round((m.at - m.waiting_since) / 1000)} 秒，${left != null ? `还剩 ${left} 秒，请尽快回复` : `请在 ${targetSecs(c)} 秒内回复`}`, c.id);
        break;
      }
      case "breach": {
        const c = conv(m.conversation, m.buyer);
        takeRound(c, m);
        c.breached = true;
        logEvent("breach", `超时：买家 ${c.buyer} 等待已超过 ${targetSecs(c)} 秒`, c.id);
        break;
      }
      case "presence": {
        const c = convs.get(m.conversation);
        if (c) c.online = !!m.online;
        break;
      }
      case "rated": {
        const c = convs.get(m.conversation);
        if (!c) break;
        c.rating = m.score;
        c.messages.push({ from: "system", text: `买家评价：${ratingName(m.score)}`, at: m.at || serverNow() });
        logEvent("info", `买家 ${c.buyer} 评价：${ratingName(m.score)}`, c.id);
        break;
      }
      case "conversation_closed": {
        const c = convs.get(m.conversation);
        if (!c) break;
        c.closed = true;
        c.online = false;
        c.waitingSince = null;
        c.suggestions = [];
        takeRound(c, {});
        // secret_lost: after a restart with a new resume key someone came
        // back under this buyer id and was given a new conversation (it
        // arrives next). Nobody could check it is the same person: the text
        // must not say so (found by review).
        const why = m.reason === "secret_lost" ? "服务重启后无法核验买家身份，原会话已结束；同一买家号的新会话随后到达，请重新核实订单等信息" : "买家已离开，会话结束";
        c.messages.push({ from: "system", text: why, at: serverNow() });
        break;
      }
      case "lint_result": {
        const i = inflight.findIndex((e) => e.kind === "lint");
        if (i >= 0) inflight.splice(i, 1);
        showLint(m);
        break;
      }
      case "reload":
        showReload(m);
        break;
      case "error":
        onError(m);
        break;
      default:
        console.debug("kefu: unhandled frame", m);
    }
    renderAll();
  }

  function targetSecs(c) {
    if (c.deadline != null && c.waitingSince != null) return Math.round((c.deadline - c.waitingSince) / 1000);
    return targetMs != null ? Math.round(targetMs / 1000) : 30;
  }

  /** A conversation the server lists on sign-in or gives to this agent. */
  function takeConversation(v, fresh) {
    const c = conv(v.conversation, v.buyer);
    if (Array.isArray(v.history)) {
      // Replies still waiting for their receipt stay shown after the history.
      const pending = c.messages.filter((x) => x.pending);
      c.messages = v.history.map((x) =>
        x.from === "system"
          ? // Staff-only (a transfer's record): the buyer never gets it.
            { from: "system", cls: "transferred", staff: true, text: x.text, at: x.at, agent: x.agent, to: x.to, note: x.note }
          : { from: x.from, text: x.text, at: x.at, agent: x.agent, note: x.note, mine: x.from === "agent" && x.agent === me.agent },
      );
      c.messages.push(...pending);
    }
    // A draft written for this buyer's previous conversation (it vanished
    // in a reconnect) carries over.
    if (!drafts.has(c.id) && orphanDrafts.has(c.buyer)) {
      drafts.set(c.id, orphanDrafts.get(c.buyer));
      orphanDrafts.delete(c.buyer);
      if (selected === c.id) loadDraft();
    }
    c.suggestions = Array.isArray(v.suggestions) ? v.suggestions.slice(0, 3) : [];
    c.online = v.online !== false;
    c.rating = v.rated || null;
    c.nudged = false;
    c.breached = false;
    takeRound(c, v);
    const lastBuyer = [...c.messages].reverse().find((x) => x.from === "buyer");
    c.lastActivity = fresh ? Date.now() : lastBuyer ? lastBuyer.at + skew : 0;
    if (fresh && selected !== c.id) c.unread++;
    if (lostSelection && c.buyer === lostSelection) {
      lostSelection = null;
      select(c.id, true);
    } else if (!selected) select(c.id, true);
    return c;
  }

  function onError(m) {
    const text = errorText(m);
    if (["bad_token", "unknown_shop", "bad_id"].includes(m.code) && !welcomed) {
      refuse(`登录被拒绝：${text}`);
      return;
    }
    // Signed in, then signed out by the server: the shop changed or
    // revoked this token (a settings reload). Back to the sign-in form at
    // once; reconnecting with the old token would only be refused.
    if (m.code === "bad_token") {
      refuse("已下线：你的令牌已被更换或撤销，请向店铺管理员要新令牌后重新登录（bad_token）");
      return;
    }
    // Too many failed sign-ins for this account: the server refuses it
    // without looking at the token until `retry_after` has passed. Back
    // to the sign-in form (reconnecting on our own schedule would only be
    // refused again), saying how long to wait.
    if (m.code === "too_many_attempts") {
      refuse(`登录暂不可用：${text}`);
      return;
    }
    if (m.code === "replaced") {
      refuse(`你已在另一个窗口登录，这里已下线（replaced）`);
      return;
    }
    // Any other error answers the oldest of our requests still waiting.
    if (!SESSION_ERRORS.includes(m.code) && inflight.length) {
      const entry = inflight.shift();
      if (entry.kind === "lint") {
        // A politeness check the server did not do (e.g. rate_limited) is
        // not the agent's concern: try once more a little later.
        if (lintSent === entry.text) lintSent = null;
        if ($("reply").value === entry.text) scheduleLint(1000);
        console.debug("kefu: lint refused", m);
        return;
      }
      if (entry.kind === "transfer") {
        const c = convs.get(entry.conv);
        logEvent("error", `转接买家 ${(c && c.buyer) || entry.buyer} 失败：${text}`, entry.conv);
        if (selected === entry.conv && !$("transfer").hidden) $("transfer-error").textContent = `转接失败：${text}`;
        else showBanner("error", `转接失败：${text}`);
        return;
      }
      const c = convs.get(entry.conv);
      if (!c) {
        // The conversation has left this page (transferred, or gone in a
        // reconnect) while the reply was on its way: there is no box to put
        // the text back into, so the banner and the log line keep it.
        const to = transferredTo.get(entry.conv);
        const where = to ? `已转接给 ${colleagueName(to)}` : "已不在你的会话列表中";
        logEvent("error", `给买家 ${entry.buyer} 的回复未发出：${text}；会话${where}；回复内容：${entry.text}`);
        showUnsent(`回复未发出：${text}。买家 ${entry.buyer} 的会话${where}，这条回复没有发给买家：`, entry.text);
        return;
      }
      restoreDraft(entry, text);
      logEvent("error", `给买家 ${c.buyer} 的回复未发出：${text}`, entry.conv);
      const waiting = c.waitingSince != null ? "，买家仍在等待回复" : "";
      // The agent has moved to another conversation meanwhile: say where
      // the text went, and show it.
      if (entry.conv !== selected) showUnsent(`回复未发出：${text}。内容已放回买家 ${c.buyer} 会话的输入框${waiting}：`, entry.text);
      else showBanner("error", `回复未发出：${text}。内容已放回输入框${waiting}。`, "refused");
      return;
    }
    logEvent("error", text);
    showBanner("error", text);
  }

  /**
   * A reply that did not go out: its bubble becomes a red note, its text
   * goes back into that conversation's draft (before whatever the agent has
   * typed since), and the round keeps running.
   */
  function restoreDraft(entry, why) {
    const c = convs.get(entry.conv);
    if (c) {
      const i = c.messages.indexOf(entry.msg);
      if (i >= 0) c.messages.splice(i, 1);
      c.messages.push({ from: "system", cls: "red", text: `回复未发出：${why}。内容已放回输入框。`, at: serverNow() });
    }
    if (entry.conv === selected) saveDraft();
    const back = { text: entry.text, intent: entry.intent };
    if (c) mergeDraft(drafts, entry.conv, back);
    else mergeDraft(orphanDrafts, entry.buyer, back);
    if (entry.conv === selected) loadDraft();
  }

  /** Puts `back` in front of the draft stored under `key` in `map`. */
  function mergeDraft(map, key, back) {
    const d = map.get(key);
    if (d && d.text && d.text !== back.text) map.set(key, { text: `${back.text}\n${d.text}`, intent: d.intent || null });
    else map.set(key, { text: back.text, intent: back.intent || null });
  }

  /**
   * After a reconnect: a reply sent on the old connection whose receipt
   * never came is in the new history if the server took it; if not, its
   * text goes back into the draft. The same text may well be in the
   * history already (stock phrases such as 亲，在的 repeat all day), so it
   * arrived only if the history holds more agent lines with that text than
   * the chat held when it was sent (counting those still inside the
   * history, which may have been cut to its newest lines), plus one for
   * each earlier reply of this list with that text that arrived.
   */
  function checkUnconfirmed() {
    const list = unconfirmed;
    unconfirmed = [];
    const taken = new Map(); // conversation id + text -> lines already claimed
    for (const entry of list) {
      const c = convs.get(entry.conv);
      if (c) {
        const i = c.messages.indexOf(entry.msg);
        if (i >= 0) c.messages.splice(i, 1);
        const floor = c.messages.length ? c.messages[0].at : Infinity;
        const same = c.messages.filter((x) => x.from === "agent" && !x.pending && x.text === entry.text).length;
        const key = `${entry.conv}\u0001${entry.text}`;
        const known = (entry.before || []).filter((at) => at >= floor).length + (taken.get(key) || 0);
        if (same > known) {
          taken.set(key, (taken.get(key) || 0) + 1);
          continue;
        }
      }
      restoreDraft(entry, "连接中断，服务器没有收到这条回复");
    }
  }

  /**
   * A library problem as agents see it: the file's name, not the server's
   * path to it (`/srv/kefu/phrases/after_sale.yaml:586:3: …` →
   * `after_sale.yaml:586:3: …`); the log and `kefu check` keep the path.
   */
  function problemText(errors) {
    const list = (errors || []).map((e) => String(e).replace(/^(?:[^\s:]*[\/\\])?([^\/\\\s:]+\.ya?ml:)/, "$1"));
    return `${list.slice(0, 3).join("；")}${list.length > 3 ? " …" : ""}`;
  }

  function showReload(m) {
    const text = m.ok
      ? `话术库已重新加载${typeof m.intents === "number" ? `（${m.intents} 个意图）` : ""}，新的推荐回复已生效`
      : `话术库修改有误，仍在使用旧版本：${problemText(m.errors)}`;
    logEvent("reload", text);
    showBanner(m.ok ? "info" : "warn", text, "phrases");
  }

  /**
   * The phrase libraries' state in a `welcome`: while the files on disk
   * have problems (a broken edit, a removed library) and older libraries
   * serve, an amber banner; a good state takes it back.
   */
  function showPhraseStatus(p) {
    if (!p || p.ok !== false) {
      if ($("banner").dataset.tag === "phrases") $("banner").hidden = true;
      return;
    }
    const errs = Array.isArray(p.problems) ? p.problems : [];
    const used = p.source === "last_good" ? "上次成功加载的版本" : "修改前的版本";
    const text = `话术库文件有误，推荐回复暂时使用${used}，请联系管理员修正：${problemText(errs)}`;
    logEvent("reload", text);
    showBanner("warn", text, "phrases");
  }

  let bannerTimer = null;
  /** Shows the banner above the chat; `tag` names what it is about, so it can be taken back. */
  function showBanner(kind, text, tag) {
    const b = $("banner");
    b.className = `banner ${kind}`;
    b.dataset.tag = tag || "";
    b.replaceChildren(...chatText(text), el("button", { class: "btn small", onclick: () => (b.hidden = true) }, "知道了"));
    b.hidden = false;
    clearTimeout(bannerTimer);
    if (kind === "info") bannerTimer = setTimeout(() => (b.hidden = true), 8000);
  }

  /**
   * A reply that can no longer go anywhere (its conversation left this
   * page): a red banner with the text itself and 复制, so the agent can
   * pass it on. It stays until 知道了 or the next banner; the log line
   * keeps the text too.
   */
  /**
   * Drafts and unconfirmed replies of conversations that moved to a
   * colleague while this page was away (the welcome no longer lists them)
   * are kept by buyer for a new conversation of theirs, and said here with
   * their text to copy: they vanished without a word (found by review).
   */
  function showMovedAway(before) {
    const lost = [];
    for (const [buyer, d] of orphanDrafts) {
      if (d !== before.get(buyer) && d.text && d.text.trim()) lost.push([buyer, d.text]);
    }
    if (!lost.length) return;
    const who = lost.map(([b]) => `买家 ${b}`).join("、");
    const text = lost.length === 1 ? lost[0][1] : lost.map(([b, t]) => `买家 ${b}：${t}`).join("\n");
    // Moved to a colleague, or closed meanwhile: the page cannot tell which.
    showUnsent(`断线期间，${who} 的会话已不在您这里（已转给同事或已结束），这里未发出的回复没有发给买家，如需要请复制：`, text);
    logEvent("warn", `断线期间 ${who} 的会话已不在您这里，未发出的回复已保留：${text}`);
  }

  function showUnsent(why, text) {
    const b = $("banner");
    b.className = "banner error";
    b.dataset.tag = "unsent";
    const copy = el("button", { class: "btn small", type: "button", dataset: { role: "copy" } }, "复制");
    copy.addEventListener("click", () => copyText(text, copy));
    b.replaceChildren(
      ...chatText(why),
      el("span", { class: "unsent" }, chatText(text)),
      copy,
      el("button", { class: "btn small", type: "button", onclick: () => (b.hidden = true) }, "知道了"),
    );
    b.hidden = false;
    clearTimeout(bannerTimer);
  }

  /** Copies `text` (the clipboard API where the page may use it, else a selected hidden box). */
  async function copyText(text, button) {
    let ok = false;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        ok = true;
      }
    } catch {
      ok = false;
    }
    if (!ok) {
      const box = el("textarea", { class: "copy-buffer", readonly: true, "aria-hidden": "true" });
      box.value = text;
      document.body.append(box);
      box.select();
      try {
        ok = document.execCommand("copy");
      } catch {
        ok = false;
      }
      box.remove();
    }
    button.textContent = ok ? "已复制" : "复制失败，请选中文字后按 Ctrl+C";
  }

  function logEvent(kind, text, convId) {
    const li = el(
      "li",
      { class: `${kind}${convId ? " link" : ""}`, onclick: convId ? () => select(convId) : null },
      el("time", {}, clockTime(Date.now())),
      // Names, notes and reply texts in log lines: bidi controls shown, as in chat text.
      chatText(text),
    );
    const list = $("events");
    list.prepend(li);
    while (list.children.length > 50) list.lastChild.remove();
  }

  // ---------- rendering ----------

  function renderAll() {
    renderList();
    renderChat();
    updateComposer();
    renderTransfer();
    tick();
    storeDesk();
  }

  /** Keeps drafts, unread markers and the selection for a reload (DESK_KEY). */
  function storeDesk() {
    if (!deskRestored || !me) return;
    const d = {};
    for (const [id, v] of drafts) if (convs.has(id) && v.text) d[id] = { text: v.text, intent: v.intent || null };
    const u = {};
    for (const c of convs.values()) if (c.unread) u[c.id] = c.unread;
    save(DESK_KEY, { shop: me.shop, agent: me.agent, selected: convs.has(selected) ? selected : null, drafts: d, unread: u });
  }

  /** After the first welcome of this page: the desk as it was before the reload. */
  function restoreDesk() {
    deskRestored = true;
    const st = load(DESK_KEY);
    if (!st || st.shop !== me.shop || st.agent !== me.agent) return;
    if (typeof st.selected === "string" && convs.has(st.selected)) selected = st.selected;
    for (const [id, v] of Object.entries(st.drafts || {})) {
      if (convs.has(id) && v && typeof v.text === "string" && v.text && !drafts.has(id)) drafts.set(id, { text: v.text, intent: v.intent || null });
    }
    for (const [id, n] of Object.entries(st.unread || {})) {
      if (convs.has(id) && id !== selected && Number.isInteger(n) && n > 0) convs.get(id).unread = n;
    }
    loadDraft();
  }

  /** The list's last-line preview: the newest message (a refusal note is the page's, not the chat's). */
  function lastText(c) {
    for (let i = c.messages.length - 1; i >= 0; i--) if (c.messages[i].cls !== "red") return shownText(c.messages[i]);
    return "";
  }

  /**
   * What a message says on screen. A transfer's staff-only history line
   * (`from: "system"`, `note: "transferred"`) says who handed the buyer to
   * whom, and the sender's note; names are looked up when shown, as the
   * colleague list may come after the history.
   */
  function shownText(x) {
    if (!x.staff || x.note !== "transferred") return x.text;
    const self = me ? me.agent : null;
    const by = !x.agent ? "同事" : x.agent === self ? "你" : `同事 ${colleagueName(x.agent)}`;
    const to = x.to === self ? "你" : ` ${colleagueName(x.to)}`;
    return `${by} 转接给${to}${x.text ? `，备注：${x.text}` : ""}`;
  }

  /** The list's rows by conversation id: kept and updated in place. */
  const rows = new Map();
  /**
   * The pointer over the list: whether it is over it, when it last moved
   * there, and whether a button is pressed on it. While the agent aims at
   * a row (the pointer moved over the list within LIST_HOLD_MS) or presses
   * one, the rows keep their places: a buyer's message must not move
   * another row under the click (found by review). The order catches up
   * when the pointer leaves, is released, or rests.
   */
  const pointer = { over: false, moved: 0, down: false };
  const LIST_HOLD_MS = 2000;
  let listTimer = null;

  function listHeld() {
    return pointer.down || (pointer.over && Date.now() - pointer.moved < LIST_HOLD_MS);
  }

  function makeRow(id) {
    const r = {
      li: el("li", { class: "conv", dataset: { id }, onclick: () => select(id) }),
      buyer: el("span", { class: "buyer" }),
      clock: el("span", { class: "clock", dataset: { role: "clock" } }),
      last: el("span", { class: "last" }),
      keys: {},
    };
    r.li.append(r.buyer, r.clock, r.last);
    return r;
  }

  /** Brings a row up to date, touching only the parts that changed. */
  function updateRow(r, c, now) {
    const cls = `conv${c.id === selected ? " selected" : ""}${c.closed ? " closed" : ""}`;
    if (r.li.className !== cls) r.li.className = cls;
    const who = JSON.stringify([c.buyer || c.id, c.online === false, !!c.closed, !!c.unread]);
    if (r.keys.who !== who) {
      r.keys.who = who;
      const parts = [
        c.buyer || c.id,
        c.closed ? el("span", { class: "muted" }, "（已结束）") : c.online === false ? el("span", { class: "muted" }, "（离线）") : null,
        c.unread ? el("span", { class: "unread", title: "未读" }) : null,
      ];
      r.buyer.replaceChildren(...parts.filter(Boolean));
    }
    const last = lastText(c);
    if (r.keys.last !== last) {
      r.keys.last = last;
      r.last.replaceChildren(...chatText(last));
    }
    const clk = clockOf(c, now);
    if (r.clock.textContent !== clk.text) r.clock.textContent = clk.text;
    if (r.clock.className !== `clock ${clk.cls}`) r.clock.className = `clock ${clk.cls}`;
  }

  /**
   * The conversation list. Rows are kept per conversation and updated in
   * place (a click or a text selection in the list is not lost to a frame
   * about something else); they change places only while the agent is not
   * aiming at the list (listHeld).
   */
  function renderList() {
    clearTimeout(listTimer);
    const ul = $("convs");
    const list = ordered();
    $("conv-count").textContent = list.length ? `(${list.length})` : "";
    for (const [id, r] of rows) {
      if (convs.has(id)) continue;
      r.li.remove();
      rows.delete(id);
    }
    if (!list.length) {
      if (!ul.querySelector(".empty")) ul.replaceChildren(el("li", { class: "empty" }, "暂无会话"));
      return;
    }
    const empty = ul.querySelector(".empty");
    if (empty) empty.remove();
    const now = serverNow();
    for (const c of list) {
      let r = rows.get(c.id);
      if (!r) {
        r = makeRow(c.id);
        rows.set(c.id, r);
      }
      updateRow(r, c, now);
    }
    let want = list.map((c) => c.id);
    if (listHeld()) {
      // Rows keep their places; new ones join at the bottom, where they
      // move nothing.
      const shown = [...ul.children].map((li) => li.dataset.id).filter((id) => rows.has(id));
      want = [...shown, ...want.filter((id) => !shown.includes(id))];
      if (!pointer.down) listTimer = setTimeout(renderList, Math.max(0, pointer.moved + LIST_HOLD_MS - Date.now()) + 20);
    }
    want.forEach((id, i) => {
      const li = rows.get(id).li;
      if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] || null);
    });
  }

  /** The conversation ids in the order the list shows them. */
  function shownOrder() {
    return [...$("convs").querySelectorAll(".conv")].map((li) => li.dataset.id).filter((id) => convs.has(id));
  }

  {
    const ul = $("convs");
    const aim = () => {
      pointer.over = true;
      pointer.moved = Date.now();
    };
    ul.addEventListener("pointerenter", aim);
    ul.addEventListener("pointermove", aim);
    ul.addEventListener("pointerleave", () => {
      pointer.over = false;
      if (!pointer.down) renderList();
    });
    ul.addEventListener("pointerdown", () => {
      aim();
      pointer.down = true;
    });
    const release = () => {
      if (!pointer.down) return;
      pointer.down = false;
      // After the click this release makes has been handled.
      setTimeout(renderList, 0);
    };
    document.addEventListener("pointerup", release);
    document.addEventListener("pointercancel", release);
  }

  /** Refreshes only the clock badges (runs several times a second). */
  function tick() {
    const now = serverNow();
    for (const li of $("convs").querySelectorAll(".conv")) {
      const c = convs.get(li.dataset.id);
      if (!c) continue;
      const badge = li.querySelector(".clock");
      const clk = clockOf(c, now);
      if (badge.textContent !== clk.text) badge.textContent = clk.text;
      const cls = `clock ${clk.cls}`;
      if (badge.className !== cls) badge.className = cls;
    }
    const c = convs.get(selected);
    const head = $("chat-clock");
    if (c) {
      const clk = clockOf(c, now);
      head.hidden = !clk.text;
      const cls = `clock ${clk.cls}`;
      if (head.className !== cls) head.className = cls;
      if (head.textContent !== clk.text) head.textContent = clk.text;
    } else {
      head.hidden = true;
    }
    updateTitle(now);
  }

  /**
   * The tab's title counts the buyers waiting for an answer and says how
   * soon the nearest one breaches, so an agent in another tab notices:
   * "(3) 剩 12s · 客服工作台 · kefu", "(3) 超时 · …".
   */
  function updateTitle(now) {
    const waiting = [...convs.values()].filter((c) => !c.closed && c.waitingSince != null);
    let title = BASE_TITLE;
    if (waiting.length) {
      const due = Math.min(...waiting.map((c) => (c.deadline != null ? c.deadline : Infinity)));
      const left = due - now;
      const when = !Number.isFinite(due) ? "" : left <= 0 || waiting.some((c) => c.breached) ? "超时 · " : `剩 ${Math.ceil(left / 1000)}s · `;
      title = `(${waiting.length}) ${when}${BASE_TITLE}`;
    }
    if (document.title !== title) document.title = title;
  }

  /** What a message looks like on screen; equal stamps need no redraw. */
  function stampOf(x) {
    const shownAt = Math.round((x.at + skew) / 1000);
    return [x.from, shownText(x), shownAt, x.pending ? 1 : 0, x.cls || "", x.responseMs ?? "", x.delivered === false ? 0 : 1, x.note || "", x.agent || "", x.mine ? 1 : 0].join("\u0001");
  }

  function messageNode(c, x) {
    // System lines hold a colleague's name and note: bidi controls are shown, as in chat text.
    if (x.staff) {
      // A staff-only line of the history: marked as such, text nodes only.
      return el(
        "div",
        { class: "msg system staff transferred", dataset: { from: "system", time: clockTime(x.at + skew) }, title: "仅客服可见，买家看不到" },
        chatText(shownText(x)),
      );
    }
    if (x.from === "system") return el("div", { class: `msg system${x.cls ? ` ${x.cls}` : ""}` }, chatText(x.text));
    const who = x.from === "buyer" ? `买家 ${c.buyer}` : x.from === "bot" ? "自动回复" : x.mine ? "我" : `客服 ${x.agent || ""}`;
    return el(
      "div",
      { class: `msg ${x.from}${x.mine ? " mine" : ""}${x.pending ? " pending" : ""}`, dataset: { from: x.from } },
      el("span", { class: "meta" }, `${who} · ${clockTime(x.at + skew)}${metaNote(x)}`),
      el("div", { class: "bubble" }, chatText(x.text)),
    );
  }

  /** What the chat pane shows now: {id, stamps} of the rendered messages. */
  const chatView = { id: null, stamps: [] };

  /**
   * The selected conversation's messages. Only messages that changed are
   * redrawn (usually one appended), so a frame about another buyer, or a
   * new line in this chat, leaves the agent's text selection alone (e.g.
   * an order number being copied).
   */
  function renderChat() {
    const c = convs.get(selected);
    const box = $("messages");
    if (!c) {
      $("chat-title").textContent = "未选择会话";
      $("chat-sub").textContent = "";
      const note = convs.size ? "从左侧选择一个会话" : "买家发来消息后，会话会出现在左侧列表。";
      if (chatView.id !== null || box.textContent !== note) box.replaceChildren(el("div", { class: "empty" }, note));
      chatView.id = null;
      chatView.stamps = [];
      $("suggestions").replaceChildren();
      renderSuggestions.key = null;
      return;
    }
    const title = `买家 ${c.buyer || ""}`;
    if ($("chat-title").textContent !== title) $("chat-title").textContent = title;
    const sub = `会话 ${c.id}`;
    if ($("chat-sub").textContent !== sub) $("chat-sub").textContent = sub;
    const stick = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    const switched = chatView.id !== c.id;
    if (switched) {
      box.replaceChildren();
      chatView.stamps = [];
    }
    const stamps = c.messages.map(stampOf);
    let same = 0;
    while (same < stamps.length && same < chatView.stamps.length && stamps[same] === chatView.stamps[same]) same++;
    const changed = switched || same !== stamps.length || same !== chatView.stamps.length;
    if (changed) {
      while (box.children.length > same) box.lastElementChild.remove();
      box.append(...c.messages.slice(same).map((x) => messageNode(c, x)));
    }
    chatView.id = c.id;
    chatView.stamps = stamps;
    // Suggestions first: they change the height left for the messages.
    renderSuggestions(c);
    if (switched || (changed && stick)) box.scrollTop = box.scrollHeight;
    // Read further up while new lines came in: say so instead of jumping
    // (found by review: nothing showed a new buyer message then).
    if (switched || stick) $("new-below").hidden = true;
    else if (changed && same < stamps.length) $("new-below").hidden = false;
  }

  function metaNote(x) {
    if (x.pending) return " · 发送中";
    const parts = [];
    if (typeof x.responseMs === "number") parts.push(`响应 ${(x.responseMs / 1000).toFixed(1)}s`);
    if (x.delivered === false) parts.push("买家离线，上线后可见");
    if (x.note === "greeting") parts.push("欢迎语");
    if (x.note === "holding") parts.push("安抚语");
    if (x.note === "transferred") parts.push("转接提示");
    return parts.length ? ` · ${parts.join(" · ")}` : "";
  }

  function renderSuggestions(c) {
    const box = $("suggestions");
    const chosen = c.suggestions.findIndex((s) => usedIntent && usedIntent === s.intent && $("reply").value === s.reply);
    // Rebuilt only when they changed, so a click is not lost to a frame
    // that arrives between the press and the release of the mouse.
    const key = JSON.stringify([c.id, c.waitingSince == null, !!c.closed, c.suggestions, chosen]);
    if (key === renderSuggestions.key) return;
    renderSuggestions.key = key;
    if (!c.suggestions.length) {
      const note = c.closed ? "会话已结束" : c.waitingSince == null ? "买家发来新消息时，这里会给出推荐回复" : "话术库里没有合适的推荐，请手动回复";
      box.replaceChildren(el("div", { class: "none" }, note));
      return;
    }
    box.replaceChildren(
      ...c.suggestions.map((s, i) =>
        el(
          "button",
          {
            class: `suggestion${i === chosen ? " chosen" : ""}`,
            type: "button",
            title: `${stageLabel(s.stage)} · ${s.intent}${typeof s.score === "number" ? ` · 匹配度 ${s.score.toFixed(2)}` : ""}`,
            dataset: { intent: s.intent, index: String(i + 1) },
            onclick: () => pick(i),
          },
          el(
            "span",
            { class: "tags" },
            el("span", { class: "key" }, `Alt+${i + 1}`),
            el("span", { class: `stage ${s.stage}` }, stageLabel(s.stage)),
            el("span", { class: "intent" }, s.intent),
          ),
          el("span", { class: "text" }, s.reply),
        ),
      ),
    );
  }

  function updateComposer() {
    const c = convs.get(selected);
    const on = !!c && welcomed;
    // While this conversation's transfer is in flight a reply would reach a
    // conversation that is about to be the colleague's: not sent.
    const moving = c ? transferOf(c.id) : null;
    const closed = !!c && !!c.closed;
    $("reply").disabled = !c;
    // An ended conversation cannot be answered; its box stays readable
    // (and copyable), and a draft in it moves to the buyer's next one.
    $("reply").readOnly = closed;
    $("send").disabled = !on || !!moving || closed;
    const hint = closed
      ? "会话已结束，不能再回复；买家再次咨询时会出现新的会话"
      : moving
        ? `正在转接给 ${colleagueName(moving.to)}，转接完成前不能回复；转接失败时可以继续回复`
        : "";
    if ($("send-hint").dataset.text !== hint) {
      $("send-hint").dataset.text = hint;
      $("send-hint").replaceChildren(...(hint ? chatText(hint) : []));
    }
    $("used-intent").textContent = usedIntent ? `已选推荐：${usedIntent}` : "";
  }

  /** The live character counter under the reply box. */
  function updateCount() {
    const n = charCount($("reply").value);
    const out = $("reply-count");
    const over = n > maxTextChars;
    out.textContent = n ? `${n}/${maxTextChars}${over ? `，超出 ${n - maxTextChars} 字` : ""}` : "";
    out.classList.toggle("over", over);
    $("reply").classList.toggle("over", over);
  }

  // ---------- actions ----------

  /** Writes the reply box back into the selected conversation's draft. */
  function saveDraft() {
    if (!selected) return;
    const text = $("reply").value;
    if (text) drafts.set(selected, { text, intent: usedIntent });
    else drafts.delete(selected);
  }

  /** Shows the selected conversation's draft in the reply box. */
  function loadDraft() {
    const d = (selected && drafts.get(selected)) || { text: "", intent: null };
    $("reply").value = d.text;
    usedIntent = d.intent || null;
    clearLint();
    updateCount();
    if (d.text) scheduleLint();
  }

  /** Shows conversation `id`; `auto` when the page chose it, not the agent. */
  function select(id, auto) {
    if (!convs.has(id)) return;
    if (!auto) lostSelection = null;
    if (id !== selected) {
      saveDraft();
      closeTransfer();
      selected = id;
      loadDraft();
    }
    convs.get(id).unread = 0;
    renderAll();
    // The agent chose it: the cursor goes to its reply box, at the end of
    // its draft, so typing answers this buyer (and a digit is text).
    if (!auto) {
      const box = $("reply");
      box.focus();
      box.setSelectionRange(box.value.length, box.value.length);
    }
  }

  /** Alt+↑/↓: the next conversation in the order the list shows. */
  function moveSelection(delta) {
    const list = shownOrder();
    if (!list.length) return;
    const i = list.indexOf(selected);
    const next = list[(i + delta + list.length) % list.length];
    select(next);
  }

  /** Whether the box still holds the text of the suggestion whose intent is kept. */
  function intentStillFits() {
    const c = convs.get(selected);
    const s = c && c.suggestions.find((x) => x.intent === usedIntent);
    const text = $("reply").value;
    // The suggestions of a round gone by are no longer listed: the text is
    // then kept as long as the box is not empty.
    return s ? text.includes(s.reply.trim()) : text.trim() !== "";
  }

  function pick(i) {
    const c = convs.get(selected);
    const s = c && c.suggestions[i];
    if (!s || c.closed) return;
    const box = $("reply");
    usedIntent = s.intent;
    // The suggestion replaces the draft as an edit of the box, so Ctrl+Z
    // brings the draft back (a plain `value =` empties the undo history).
    box.focus();
    box.select();
    let typed = false;
    try {
      typed = document.execCommand("insertText", false, s.reply) && box.value === s.reply;
    } catch {
      typed = false;
    }
    if (!typed) box.setRangeText(s.reply, 0, box.value.length, "end");
    usedIntent = s.intent; // the input handler may have judged the half-done edit
    saveDraft();
    updateCount();
    box.setSelectionRange(box.value.length, box.value.length);
    renderSuggestions(c);
    updateComposer();
    scheduleLint(0);
  }

  /**
   * Sends the reply. The box empties at once (the bubble says 发送中), but
   * the round is only over when `reply_sent` comes; a refusal puts the text
   * back (restoreDraft).
   */
  function send() {
    const c = convs.get(selected);
    const box = $("reply");
    const text = box.value.trim();
    if (!c || !text) return;
    if (transferOf(c.id)) return; // being transferred: the hint under the box says so
    if (c.closed) return; // ended: the hint under the box says so
    const frame = { type: "reply", conversation: c.id, text, intent: usedIntent || null };
    if (!welcomed || !conn || !conn.send(frame)) {
      showBanner("error", "还没有连接到服务器，回复没有发出，内容仍在输入框里；连上后请再发送一次", "offline");
      return;
    }
    // The same text already in the chat (its times): after a reconnect,
    // checkUnconfirmed counts whether one more came.
    const before = c.messages.filter((x) => x.from === "agent" && !x.pending && x.text === text).map((x) => x.at);
    const msg = { from: "agent", mine: true, pending: true, text, at: serverNow(), agent: me.agent };
    c.messages.push(msg);
    inflight.push({ kind: "reply", conv: c.id, buyer: c.buyer, text, intent: usedIntent || null, msg, before });
    box.value = "";
    usedIntent = null;
    drafts.delete(c.id);
    clearLint();
    updateCount();
    renderAll();
  }

  // ---------- transfer (转接) ----------

  /** "小王（a2）", or the id alone when the shop gave no name. */
  function colleagueName(id) {
    const x = colleagues.get(id);
    return x && x.name ? `${x.name}（${id}）` : id || "";
  }

  function transferPending() {
    return inflight.some((e) => e.kind === "transfer");
  }

  /** The transfer of conversation `id` still in flight, or null. */
  function transferOf(id) {
    return inflight.find((e) => e.kind === "transfer" && e.conv === id) || null;
  }

  /**
   * The 转接 button and row. The select offers the colleagues online now
   * (the server refuses the others) after a 请选择同事 placeholder, plus the
   * agent's choice when that colleague has gone offline: it stays chosen,
   * marked （离线）, 确认转接 is disabled and a hint says why; when they are
   * back it is theirs again. Nothing but the agent changes the choice. The
   * row stays open (note and choice kept) while the connection is down.
   */
  function renderTransfer() {
    const c = convs.get(selected);
    $("transfer-open").disabled = !c || !welcomed || !!c.closed;
    if (!c || c.closed) {
      closeTransfer();
      return;
    }
    const online = [...colleagues].filter(([, x]) => x.online).map(([id]) => id).sort();
    const away = transferChoice && !online.includes(transferChoice);
    const ids = away ? [...online, transferChoice] : online;
    const sel = $("transfer-to");
    const options = [["", online.length ? "请选择同事" : "暂无在线同事"], ...ids.map((id) => [id, `${visibleText(colleagueName(id))}${online.includes(id) ? "" : "（离线）"}`])];
    const sig = JSON.stringify(options);
    if (sel.dataset.sig !== sig) {
      sel.dataset.sig = sig;
      sel.replaceChildren(...options.map(([value, label]) => el("option", { value }, label)));
    }
    if (sel.value !== (transferChoice || "")) sel.value = transferChoice || "";
    const busy = transferPending();
    $("transfer-send").disabled = busy || !welcomed || !transferChoice || away;
    $("transfer-send").textContent = busy ? "转接中…" : "确认转接";
    let hint = "";
    if (!welcomed) hint = "连接已断开，连上后才能转接";
    else if (busy) hint = "";
    else if (away) hint = `${colleagueName(transferChoice)}现在离线，暂时不能转接；TA 上线后可以继续，也可以改选其他同事`;
    else if (!online.length) hint = "现在没有在线的同事，请稍后再试";
    const out = $("transfer-hint");
    if (out.dataset.text !== hint) {
      out.dataset.text = hint;
      out.replaceChildren(...(hint ? chatText(hint) : []));
    }
  }

  function openTransfer() {
    if ($("transfer-open").disabled) return;
    $("transfer").hidden = false;
    $("transfer-error").textContent = "";
    renderTransfer();
    $("transfer-to").focus();
  }

  function closeTransfer() {
    $("transfer").hidden = true;
    transferChoice = null;
    $("transfer-to").value = "";
    $("transfer-note").value = "";
    $("transfer-error").textContent = "";
  }

  function sendTransfer() {
    const c = convs.get(selected);
    const to = transferChoice;
    if (!c || !to || transferPending()) return;
    // Only to the colleague the agent picked, and only while they are online.
    if (!colleagues.has(to) || !colleagues.get(to).online) return;
    const note = $("transfer-note").value.trim();
    const frame = { type: "transfer", conversation: c.id, to, note: note || null };
    if (!welcomed || !conn || !conn.send(frame)) {
      $("transfer-error").textContent = "还没有连接到服务器，转接没有发出；连上后请再试一次";
      return;
    }
    inflight.push({ kind: "transfer", conv: c.id, buyer: c.buyer, to });
    $("transfer-error").textContent = "";
    renderTransfer();
    updateComposer();
  }

  // ---------- politeness check ----------

  /**
   * Checks the draft once the agent pauses typing (LINT_DELAY_MS after the
   * last key, one frame per pause and none for an unchanged draft), which
   * keeps well under the per-connection rate limit (20 frames a second).
   * A draft over the length limit is not sent: the server would refuse it,
   * and text_too_long is kept for replies.
   */
  function scheduleLint(delay = LINT_DELAY_MS) {
    clearTimeout(lintTimer);
    lintTimer = setTimeout(() => {
      const text = $("reply").value;
      if (!text.trim()) {
        clearLint();
        return;
      }
      if (charCount(text) > maxTextChars) {
        clearLint();
        $("lint").replaceChildren(el("span", { class: "over" }, `回复超过 ${maxTextChars} 字，发不出去，请精简后再发（用语检查也先暂停）`));
        return;
      }
      if (text === lintSent) return;
      if (welcomed && conn && conn.send({ type: "lint", text })) {
        lintSent = text;
        inflight.push({ kind: "lint", text });
      }
    }, delay);
  }

  function clearLint() {
    clearTimeout(lintTimer);
    lintSent = null;
    lintShown = null;
    $("lint").replaceChildren();
    $("reply").classList.remove("flagged");
  }

  /**
   * White space as Rust's `char::is_whitespace` (Unicode White_Space), which
   * the server's `normalize` collapses. Not JS's `\s`: that also takes
   * U+FEFF, which the server keeps as a character, and misses U+0085, which
   * the server drops, so the marks would land off by one.
   */
  const RUST_WS = /^[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]$/;

  /** Maps each character of the server-normalised draft back to the raw draft. */
  function normToRaw(raw) {
    const chars = Array.from(raw);
    const map = [];
    let pendingSpace = -1;
    for (let i = 0; i < chars.length; i++) {
      const ch = chars[i];
      if (RUST_WS.test(ch)) {
        if (map.length) pendingSpace = pendingSpace < 0 ? i : pendingSpace;
        continue;
      }
      if (pendingSpace >= 0) {
        map.push(pendingSpace);
        pendingSpace = -1;
      }
      map.push(i);
    }
    return { chars, map };
  }

  function showLint(m) {
    const box = $("reply");
    const text = box.value;
    // A result for an older draft is dropped; frames that echo the text are
    // matched on it, others belong to the last draft sent.
    if (typeof m.text === "string" ? m.text !== text : lintSent !== text) return;
    const result = m.result || m;
    const issues = Array.isArray(result.issues) ? result.issues : [];
    lintShown = { text, issues };
    const out = $("lint");
    if (!issues.length) {
      box.classList.remove("flagged");
      out.replaceChildren(el("span", { class: "ok" }, "✓ 用语得体"));
      return;
    }
    box.classList.add("flagged");
    const { chars, map } = normToRaw(text);
    const spans = issues
      .map((is) => {
        if (is.kind === "curt") return [0, chars.length];
        const s = map[is.start];
        const e = is.end - 1 < map.length ? map[is.end - 1] + 1 : chars.length;
        return s === undefined ? null : [s, e];
      })
      .filter(Boolean)
      .sort((a, b) => a[0] - b[0]);
    const preview = el("div", { class: "preview" });
    let pos = 0;
    for (const [s, e] of spans) {
      if (s < pos) continue;
      preview.append(chars.slice(pos, s).join(""), el("mark", {}, chars.slice(s, e).join("")));
      pos = e;
    }
    preview.append(chars.slice(pos).join(""));
    out.replaceChildren(
      preview,
      ...issues.map((is, i) =>
        el(
          "div",
          { class: "issue" },
          el("span", { class: `kind ${is.kind}` }, is.kind === "curt" ? "过于简短" : "消极用语"),
          el("span", {}, `「${is.phrase}」`),
          is.reason ? el("span", { class: "muted" }, is.reason) : null,
          el("span", { class: "rewrite" }, `建议：${is.rewrite}`),
          el("button", { class: "btn small", type: "button", dataset: { apply: String(i) }, onclick: () => applyRewrite(i) }, "采用"),
        ),
      ),
    );
  }

  function applyRewrite(i) {
    const box = $("reply");
    if (!lintShown || lintShown.text !== box.value) return;
    const is = lintShown.issues[i];
    if (!is) return;
    if (is.kind === "curt") {
      box.value = is.rewrite;
    } else {
      const { chars, map } = normToRaw(box.value);
      const s = map[is.start];
      const e = is.end - 1 < map.length ? map[is.end - 1] + 1 : chars.length;
      if (s === undefined) return;
      // The rewrites are whole polite sentences: they replace the sentence
      // holding the flagged phrase, not just the phrase.
      const end = /[。！？!?\n]/;
      let a = s;
      while (a > 0 && !end.test(chars[a - 1])) a--;
      let b = e;
      while (b < chars.length && !end.test(chars[b])) b++;
      if (b < chars.length && chars[b] !== "\n") b++;
      box.value = chars.slice(0, a).join("") + is.rewrite + chars.slice(b).join("");
    }
    saveDraft();
    updateCount();
    box.focus();
    clearLint();
    scheduleLint(0);
    updateComposer();
  }

  // ---------- keys ----------

  function digitOf(e) {
    const m = /^(?:Digit|Numpad)([1-3])$/.exec(e.code || "");
    return m ? Number(m[1]) - 1 : -1;
  }

  $("reply").addEventListener("keydown", (e) => {
    if (e.isComposing || e.keyCode === 229) return; // IME is still composing Chinese
    if (e.key === "Enter" && !e.shiftKey && !e.altKey && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();
      send();
      return;
    }
    // Only Alt+1-3 pick: a reply may well start with a digit (1号仓库发货).
    const d = digitOf(e);
    if (d >= 0 && e.altKey && !e.ctrlKey && !e.metaKey) {
      const c = convs.get(selected);
      if (c && c.suggestions[d]) {
        e.preventDefault();
        pick(d);
      }
    }
  });

  $("reply").addEventListener("input", () => {
    lostSelection = null; // the agent is busy here now: do not move them
    queueMicrotask(storeDesk);
    // The suggestion's intent stays with the reply while the text still
    // holds the suggestion (the agent added to it); once the agent has
    // rewritten or removed it, the reply is their own words, sent without
    // an intent.
    if (usedIntent && !intentStillFits()) usedIntent = null;
    saveDraft();
    updateCount();
    updateComposer();
    if (selected) renderSuggestions(convs.get(selected));
    scheduleLint();
  });

  document.addEventListener("keydown", (e) => {
    if ($("bench").hidden) return;
    // Keys that belong to an input method's composition are not shortcuts:
    // Alt+↓ mid-composition switched the conversation and left the pinyin
    // in one draft and the committed text in the next (found by review).
    if (e.isComposing || e.keyCode === 229) return;
    if (e.altKey && (e.key === "ArrowUp" || e.key === "ArrowDown")) {
      e.preventDefault();
      moveSelection(e.key === "ArrowUp" ? -1 : 1);
      return;
    }
    if (e.key === "Escape" && !$("transfer").hidden) {
      e.preventDefault();
      closeTransfer();
      $("transfer-open").focus();
      return;
    }
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) return;
    // Alt+1-3 pick a suggestion wherever the focus is; a plain digit never does.
    const d = digitOf(e);
    if (d >= 0 && e.altKey && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();
      pick(d);
    }
  });

  $("new-below").addEventListener("click", () => {
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
    $("new-below").hidden = true;
    $("reply").focus();
  });
  $("messages").addEventListener("scroll", () => {
    const box = $("messages");
    if (box.scrollHeight - box.scrollTop - box.clientHeight < 40) $("new-below").hidden = true;
  });
  $("send").addEventListener("click", send);
  $("transfer-open").addEventListener("click", () => ($("transfer").hidden ? openTransfer() : closeTransfer()));
  $("transfer-cancel").addEventListener("click", closeTransfer);
  $("transfer-to").addEventListener("change", () => {
    transferChoice = $("transfer-to").value || null;
    $("transfer-error").textContent = "";
    renderTransfer();
  });
  $("transfer").addEventListener("submit", (e) => {
    e.preventDefault();
    sendTransfer();
  });
  $("signout").addEventListener("click", signOut);
  $("signin").addEventListener("submit", (e) => {
    e.preventDefault();
    const shop = $("in-shop").value.trim();
    const agent = $("in-agent").value.trim();
    const token = $("in-token").value;
    if (!shop || !agent || !token) return;
    $("in-token").value = "";
    signIn({ shop, agent, token });
  });

  setInterval(tick, 250);
  const saved = load(SESSION_KEY);
  if (saved && saved.shop && saved.agent && saved.token) signIn(saved);
  else showSignin("");
})();
