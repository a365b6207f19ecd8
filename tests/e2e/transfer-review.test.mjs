// Workbench defects a review found around 转接 and reconnecting:
// - the colleague the agent chose stays chosen while they go offline and
//   come back (shown as 离线, no sending meanwhile), and the transfer goes
//   to them, never to whoever happens to be first in the list;
// - while a transfer is in flight no reply can be sent to its conversation,
//   and the unsent text is shown (with 复制) when the conversation has left;
// - a colleague's name and a note with bidi controls show them as badges;
// - after a close with 1013 the page waits at least 5 s.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { startServer, launchBrowser, ARTIFACTS, pageErrorWatcher } from "./server.mjs";

const SHOP = "s1";
// a1 and a2 have names with a right-to-left override in them (names come
// from the shop's configuration; the page must not let them reorder text).
const CONFIG = `shops:
  ${SHOP}:
    agents:
      a1:
        token: token-a1
        name: "小\\u202e美"
      a2:
        token: token-a2
        name: "小\\u202e王"
      a3:
        token: token-a3
        name: 售后小李
`;

let server;
let browser;
let context;
const { errors: pageErrors, watch } = pageErrorWatcher();
/** Pages a test opened: closed after it even when it fails, so the next starts clean. */
let opened = [];

async function agentPage(id, beforeGoto = null) {
  const p = await context.newPage();
  opened.push(p);
  watch(p, `agent ${id}`);
  if (beforeGoto) await beforeGoto(p);
  await p.goto(`${server.url}/`);
  await p.fill("#in-shop", SHOP);
  await p.fill("#in-agent", id);
  await p.fill("#in-token", `token-${id}`);
  await p.click("#signin button[type=submit]");
  await p.locator("#status.on").waitFor();
  return p;
}

async function buyerPage(id, text) {
  const p = await context.newPage();
  opened.push(p);
  watch(p, `buyer ${id}`);
  await p.goto(`${server.url}/buyer`);
  await p.fill("#in-shop", SHOP);
  await p.fill("#in-buyer", id);
  await p.click("#signin button[type=submit]");
  await p.locator(".msg[data-from=bot]").first().waitFor();
  await p.fill("#text", text);
  await p.press("#text", "Enter");
  return p;
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startServer({ config: CONFIG });
  browser = await launchBrowser();
  context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: "zh-CN", timezoneId: "Asia/Shanghai" });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: server.url });
  context.setDefaultTimeout(10000);
});

afterEach(async () => {
  for (const p of opened) if (!p.isClosed()) await p.close();
  opened = [];
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

test("the chosen colleague stays chosen while they go offline and come back", async () => {
  // a1 alone online: the buyer is theirs.
  const a1 = await agentPage("a1");
  const buyer = await buyerPage("b-keep", "我要退货，找售后");
  await a1.locator("#convs .conv", { hasText: "b-keep" }).click();
  await a1.locator("#messages .msg.buyer", { hasText: "我要退货" }).waitFor();
  const a2 = await agentPage("a2");
  let a3 = await agentPage("a3");

  await a1.click("#transfer-open");
  await a1.locator("#transfer-to option[value=a3]").waitFor({ state: "attached" });
  // Nothing is chosen for the agent: 确认转接 waits for a choice.
  assert.equal(await a1.inputValue("#transfer-to"), "");
  assert.equal(await a1.locator("#transfer-send").isDisabled(), true, "no colleague chosen yet");
  await a1.selectOption("#transfer-to", "a3");
  await a1.fill("#transfer-note", "售后问题，请小李处理");

  // a3 reloads their page (offline for a moment, then online again).
  await a3.reload();
  await a3.locator("#status.on").waitFor();
  await a1.waitForTimeout(300);
  assert.equal(await a1.inputValue("#transfer-to"), "a3", "a reload of the chosen colleague keeps the choice");

  // a3 goes away for longer: still chosen, shown as offline, no sending.
  await a3.close();
  await a1.locator("#transfer-to option[value=a3]", { hasText: "离线" }).waitFor({ state: "attached" });
  assert.equal(await a1.inputValue("#transfer-to"), "a3", "an offline colleague stays chosen");
  assert.equal(await a1.locator("#transfer-send").isDisabled(), true, "no transfer to an offline colleague");
  assert.match(await a1.textContent("#transfer-hint"), /售后小李（a3）现在离线/);
  await a1.press("#transfer-note", "Enter"); // the form's Enter does not send either
  await a1.waitForTimeout(300);
  assert.equal(await a1.locator("#convs .conv", { hasText: "b-keep" }).count(), 1, "nothing was sent");
  await a1.screenshot({ path: path.join(ARTIFACTS, "transfer-choice-offline.png"), fullPage: true });

  // a3 is back: the choice is theirs again and the transfer goes to them.
  a3 = await agentPage("a3");
  await a1.locator("#transfer-send:not([disabled])").waitFor();
  assert.equal(await a1.inputValue("#transfer-to"), "a3");
  assert.equal(await a1.inputValue("#transfer-note"), "售后问题，请小李处理", "the note is kept");
  await a1.click("#transfer-send");
  await a1.locator("#events li", { hasText: "已将买家 b-keep 转接给 售后小李（a3）" }).waitFor();
  await a3.locator("#convs .conv", { hasText: "b-keep" }).waitFor();
  assert.equal(await a2.locator("#convs .conv", { hasText: "b-keep" }).count(), 0, "a2 did not get the buyer");

});

test("the 转接 row, its choice and note survive the sender's own reconnect", async () => {
  // a1's socket goes through the test, which can drop it.
  let link = null;
  const a1 = await agentPage("a1", (p) =>
    p.routeWebSocket(/\/ws$/, (ws) => {
      link = { page: ws, server: ws.connectToServer() };
    }),
  );
  const buyer = await buyerPage("b-drop", "请帮我转给售后");
  await a1.locator("#convs .conv", { hasText: "b-drop" }).click();
  await agentPage("a2");
  await agentPage("a3");
  await a1.click("#transfer-open");
  await a1.locator("#transfer-to option[value=a3]").waitFor({ state: "attached" });
  await a1.selectOption("#transfer-to", "a3");
  await a1.fill("#transfer-note", "断线前写的备注");

  await link.server.close();
  await link.page.close({ code: 4000, reason: "test drop" });
  await a1.locator("#status", { hasText: "已断开" }).waitFor();
  assert.equal(await a1.locator("#transfer").isVisible(), true, "the row stays open while reconnecting");
  assert.equal(await a1.locator("#transfer-send").isDisabled(), true, "no transfer while not connected");
  assert.match(await a1.textContent("#transfer-hint"), /连接已断开/);

  // Back: the welcome refills the colleagues; the choice and note are kept.
  await a1.locator("#status.on").waitFor();
  await a1.locator("#transfer-send:not([disabled])").waitFor();
  assert.equal(await a1.inputValue("#transfer-to"), "a3");
  assert.equal(await a1.inputValue("#transfer-note"), "断线前写的备注");
  await a1.click("#transfer-send");
  await a1.locator("#events li", { hasText: "已将买家 b-drop 转接给 售后小李（a3）" }).waitFor();
  await buyer.locator(".msg[data-from=bot]", { hasText: "已为您转接" }).waitFor();
});

test("no reply while the conversation's transfer is in flight; the unsent text stays visible", async () => {
  const a1 = await agentPage("a1");
  const buyer = await buyerPage("b-race", "在吗？");
  await a1.locator("#convs .conv", { hasText: "b-race" }).click();
  await a1.locator("#messages .msg.buyer", { hasText: "在吗" }).waitFor();
  const a2 = await agentPage("a2");

  await a1.click("#transfer-open");
  await a1.locator("#transfer-to option[value=a2]").waitFor({ state: "attached" });
  await a1.selectOption("#transfer-to", "a2");
  const reply = "亲，在的，请问有什么可以帮您？";
  await a1.fill("#reply", reply);
  // 确认转接, then Enter and 发送 at once: in one task, before any answer.
  const during = await a1.evaluate(() => {
    document.getElementById("transfer-send").click();
    const box = document.getElementById("reply");
    box.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", code: "Enter", bubbles: true, cancelable: true }));
    document.getElementById("send").click();
    return {
      button: document.getElementById("transfer-send").textContent,
      sendDisabled: document.getElementById("send").disabled,
      hint: document.getElementById("send-hint").textContent,
      box: box.value,
      pending: document.querySelectorAll("#messages .msg.pending").length,
    };
  });
  assert.equal(during.button, "转接中…");
  assert.equal(during.sendDisabled, true, "发送 is disabled while the transfer is in flight");
  assert.match(during.hint, /正在转接给 .*（a2），转接完成前不能回复/);
  assert.equal(during.box, reply, "the text stays in the box");
  assert.equal(during.pending, 0, "nothing was sent");

  // The transfer went through: the conversation has left, and the text is
  // shown in the banner with 复制 (and in the log), not lost in a draft.
  await a1.locator("#convs .conv", { hasText: "b-race" }).waitFor({ state: "detached" });
  const banner = a1.locator("#banner");
  await banner.locator(".unsent", { hasText: reply }).waitFor();
  assert.match(await banner.textContent(), /买家 b-race 已转接给 .*（a2）。输入框里的这条回复没有发给买家/);
  assert.doesNotMatch(await banner.textContent(), /内容已放回输入框/);
  await a1.locator("#events li", { hasText: reply }).waitFor();
  await banner.locator("button[data-role=copy]").click();
  await banner.locator("button[data-role=copy]", { hasText: "已复制" }).waitFor();
  assert.equal(await a1.evaluate(() => navigator.clipboard.readText()), reply);
  await a1.screenshot({ path: path.join(ARTIFACTS, "transfer-unsent.png"), fullPage: true });

  // The buyer never got the reply, and a2 has the conversation.
  await a2.locator("#convs .conv", { hasText: "b-race" }).click();
  await a2.locator("#messages .msg.system.transferred").waitFor();
  assert.equal(await a2.locator("#messages .msg", { hasText: reply }).count(), 0);
  await buyer.locator(".msg[data-from=bot]", { hasText: "已为您转接" }).waitFor();
  assert.equal(await buyer.locator(".msg", { hasText: reply }).count(), 0);

});

test("bidi controls in a transfer note and in colleague names are shown, not obeyed", async () => {
  const a1 = await agentPage("a1");
  const buyer = await buyerPage("b-bidi", "订单有问题");
  await a1.locator("#convs .conv", { hasText: "b-bidi" }).click();
  const a2 = await agentPage("a2");

  await a1.click("#transfer-open");
  const option = a1.locator("#transfer-to option[value=a2]");
  await option.waitFor({ state: "attached" });
  assert.equal(await option.textContent(), "小[U+202E]王（a2）", "the option spells the control out");
  await a1.selectOption("#transfer-to", "a2");
  await a1.fill("#transfer-note", "订单号 12345\u202e67890 已核实");
  await a1.click("#transfer-send");

  // Sender's log line: the colleague's name with a badge.
  const sent = a1.locator("#events li", { hasText: "已将买家 b-bidi 转接给" });
  await sent.waitFor();
  assert.equal(await sent.locator(".ctl").textContent(), "U+202E");
  assert.ok(!(await sent.textContent()).includes("\u202e"));

  // Receiver: chat line and log line show both controls as badges.
  await a2.locator("#convs .conv", { hasText: "b-bidi" }).click();
  const line = a2.locator("#messages .msg.system.transferred");
  await line.waitFor();
  assert.equal(await line.locator(".ctl").count(), 2, "one badge in the name, one in the note");
  assert.equal(await line.textContent(), "同事 小U+202E美（a1） 转接给你，备注：订单号 12345U+202E67890 已核实");
  const log = a2.locator("#events li", { hasText: "转接给你" });
  await log.waitFor();
  assert.equal(await log.locator(".ctl").count(), 2);
  assert.ok(!(await log.textContent()).includes("\u202e"));
  await a2.screenshot({ path: path.join(ARTIFACTS, "transfer-bidi.png"), fullPage: true });

  // The buyer sees a2 by display name, its control as a badge in an
  // isolated run: the time beside it reads as it should.
  await a2.fill("#reply", "亲，我来为您处理～");
  await a2.press("#reply", "Enter");
  const meta = buyer.locator(".msg[data-from=agent] .meta").last();
  await meta.waitFor();
  assert.equal(await meta.locator("bdi .ctl").textContent(), "U+202E");
  assert.ok(!(await meta.textContent()).includes("\u202e"));
  assert.match(await meta.textContent(), /^客服 小U\+202E王 · \d\d:\d\d:\d\d$/);

});

test("after a close with 1013 the page waits 5 s to 7.5 s", async () => {
  const p = await context.newPage();
  watch(p, "reconnect");
  await p.goto(`${server.url}/`); // the sign-in form: nothing connects
  const waits = await p.evaluate(() => {
    // A socket that the test closes with 1013, and a setTimeout that
    // records the pause instead of waiting.
    const sockets = [];
    class FakeSocket extends EventTarget {
      constructor() {
        super();
        this.readyState = 0;
        sockets.push(this);
      }
      send() {}
      close() {}
    }
    const realSocket = window.WebSocket;
    const realTimeout = window.setTimeout;
    const realRandom = Math.random;
    const out = [];
    try {
      window.WebSocket = FakeSocket;
      for (const r of [0, 0.5, 0.999999]) {
        Math.random = () => r;
        const c = kefu.connect({ hello: () => ({}), onMessage() {}, onStatus() {} });
        let wait = null;
        window.setTimeout = (fn, ms) => ((wait = ms), 0);
        const ev = new Event("close");
        ev.code = 1013;
        sockets[sockets.length - 1].dispatchEvent(ev);
        window.setTimeout = realTimeout;
        c.stop();
        out.push(wait);
      }
    } finally {
      window.WebSocket = realSocket;
      window.setTimeout = realTimeout;
      Math.random = realRandom;
    }
    return out;
  });
  for (const w of waits) assert.ok(w >= 5000 && w <= 7500, `waited ${w} ms after 1013`);
  await p.close();
  assert.deepEqual(pageErrors, []);
});
