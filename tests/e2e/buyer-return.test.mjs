// End-to-end checks of a buyer coming back in the same browser: a buyer who
// closes the tab and opens the page again rejoins their conversation (the
// resume secret is kept in localStorage, not the closed tab's
// sessionStorage), with its history and no `buyer_taken`; and of two tabs
// of one buyer: the newer takes over, the older says so and stays off (no
// reconnect taking the conversation back).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { startServer, launchBrowser, deskContext, ARTIFACTS, pageErrorWatcher } from "./server.mjs";

const SHOP = "s1";
const BUYER = "tb_回头客01";
const QUESTION = "这款什么时候发货";
const ANSWER = "亲，今天下单明天就发货哦～";

let server;
let browser;
let context;
let agent;
const { errors: pageErrors, watch } = pageErrorWatcher();
/** Every frame the buyer pages received, as text. */
const buyerFrames = [];

function shot(page, name) {
  return page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** A new buyer tab of the shared browser context, its frames recorded. */
async function buyerTab(name) {
  const p = await context.newPage();
  watch(p, name);
  p.on("websocket", (ws) => ws.on("framereceived", (f) => buyerFrames.push(`${name}: ${f.payload}`)));
  await p.goto(`${server.url}/buyer`);
  return p;
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startServer({ flags: ["--agent-token", `${SHOP}:a1:token-a1`] });
  browser = await launchBrowser();
  context = await deskContext(browser);
  agent = await context.newPage();
  watch(agent, "agent");
  await agent.goto(`${server.url}/`);
  await agent.fill("#in-shop", SHOP);
  await agent.fill("#in-agent", "a1");
  await agent.fill("#in-token", "token-a1");
  await agent.click("#signin button[type=submit]");
  await agent.locator("#status.on").waitFor();
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

let conversation = "";

test("a buyer who closes the tab and opens the page again rejoins the conversation", async () => {
  const first = await buyerTab("buyer tab 1");
  await first.fill("#in-shop", SHOP);
  await first.fill("#in-buyer", BUYER);
  await first.click("#signin button[type=submit]");
  await first.locator(".msg[data-from=bot]").first().waitFor();
  conversation = (await first.textContent("#conv-id")).replace(/^会话 /, "").trim();
  assert.match(conversation, /^c[0-9a-f]{16}$/);
  await first.fill("#text", QUESTION);
  await first.press("#text", "Enter");
  // The agent has it and answers: the conversation has a history worth
  // coming back to.
  await agent.locator(".msg[data-from=buyer] .bubble", { hasText: QUESTION }).waitFor();
  await agent.fill("#reply", ANSWER);
  await agent.press("#reply", "Enter");
  await first.locator(".msg[data-from=agent] .bubble", { hasText: ANSWER }).waitFor();
  await first.close();

  // Same browser, a new tab: the page offers the buyer who has a
  // conversation to rejoin, and entering rejoins it.
  const again = await buyerTab("buyer tab 2");
  assert.equal(await again.inputValue("#in-shop"), SHOP);
  assert.equal(await again.inputValue("#in-buyer"), BUYER);
  await again.click("#signin button[type=submit]");
  await again.locator("#conv-id", { hasText: "已恢复" }).waitFor();
  assert.equal(await again.textContent("#conv-id"), `会话 ${conversation}（已恢复）`);
  await again.locator(".msg[data-from=buyer] .bubble", { hasText: QUESTION }).waitFor();
  await again.locator(".msg[data-from=agent] .bubble", { hasText: ANSWER }).waitFor();
  assert.equal(await again.isHidden("#signin"), true, "no refusal sent the page back to its form");
  assert.equal(await again.textContent("#status"), "已连接");
  await shot(again, "buyer-back-in-a-new-tab");
  assert.deepEqual(
    buyerFrames.filter((f) => f.includes("buyer_taken")),
    [],
    "no buyer_taken",
  );
  // The agent sees the same conversation come back online, not a new one.
  assert.equal(await agent.locator("#convs .conv").count(), 1);
  await again.close();
});

test("a second tab of the buyer takes over; the first says so and does not reconnect", async () => {
  const a = await buyerTab("buyer tab A");
  await a.click("#signin button[type=submit]"); // offered: the same buyer
  await a.locator("#conv-id", { hasText: "已恢复" }).waitFor();
  const b = await buyerTab("buyer tab B");
  await b.click("#signin button[type=submit]");
  await b.locator("#conv-id", { hasText: "已恢复" }).waitFor();
  await a.locator("#signin-error", { hasText: "已在另一个窗口打开" }).waitFor();
  const sockets = [];
  a.on("websocket", (ws) => sockets.push(ws.url()));
  // A reconnect would start within 0.5 s and take the conversation back.
  await a.waitForTimeout(2000);
  assert.deepEqual(sockets, [], "tab A opened no new socket");
  assert.equal(await a.textContent("#status"), "未连接");
  assert.equal(await b.textContent("#status"), "已连接");
  assert.equal(await b.textContent("#conv-id"), `会话 ${conversation}（已恢复）`);
  assert.equal(buyerFrames.filter((f) => f.startsWith("buyer tab B") && f.includes('"replaced"')).length, 0);
  await shot(a, "buyer-replaced-by-another-tab");
});

test("a message lost with a dropped connection comes back as not sent", async () => {
  const p = await context.newPage();
  watch(p, "buyer unsent");
  // The first socket goes through the test, which drops one message and
  // then the link; later ones pass straight through.
  let link = null;
  let dropped = 0;
  await p.routeWebSocket(/\/ws$/, (ws) => {
    if (link) return void ws.connectToServer();
    const server = ws.connectToServer();
    link = { ws, server };
    ws.onMessage((m) => {
      if (String(m).includes("丢失的消息")) dropped += 1;
      else server.send(m);
    });
    server.onMessage((m) => ws.send(m));
  });
  await p.goto(`${server.url}/buyer`);
  await p.fill("#in-shop", SHOP);
  await p.fill("#in-buyer", "tb_断线01");
  await p.click("#signin button[type=submit]");
  await p.locator(".msg[data-from=bot]").first().waitFor();
  await p.fill("#text", "在吗");
  await p.press("#text", "Enter");
  await agent.locator("#convs .conv", { hasText: "tb_断线01" }).waitFor();
  await p.fill("#text", "丢失的消息");
  await p.press("#text", "Enter");
  assert.equal(await p.inputValue("#text"), "");
  await p.waitForTimeout(200);
  assert.equal(dropped, 1);
  await link.server.close();
  await link.ws.close({ code: 4000, reason: "test drop" });
  // Back in (resumed): the history does not hold it, so the page says so.
  await p.locator("#conv-id", { hasText: "已恢复" }).waitFor();
  await p.locator(".msg[data-from=buyer]", { hasText: "丢失的消息" }).locator(".meta", { hasText: "未发出" }).waitFor();
  assert.equal(await p.inputValue("#text"), "丢失的消息", "the text is back in the box");
  assert.match(await p.textContent("#banner"), /1 条消息未发出/);
  // The delivered one is not doubted.
  assert.equal(await p.locator(".msg[data-from=buyer] .meta", { hasText: "未发出" }).count(), 1);
  await shot(p, "buyer-unsent-after-drop");
  await p.close();
});

test("a repeated text that arrived is not called not sent when the history was cut", async () => {
  const p = await context.newPage();
  watch(p, "buyer long chat");
  let link = null;
  await p.routeWebSocket(/\/ws$/, (ws) => {
    if (link) return void ws.connectToServer();
    const server = ws.connectToServer();
    link = { ws, server };
    ws.onMessage((m) => server.send(m));
    server.onMessage((m) => ws.send(m));
  });
  await p.goto(`${server.url}/buyer`);
  await p.fill("#in-shop", SHOP);
  await p.fill("#in-buyer", "tb_长聊01");
  await p.click("#signin button[type=submit]");
  await p.locator(".msg[data-from=bot]").first().waitFor();
  await p.fill("#text", "在吗");
  await p.press("#text", "Enter");
  // Three messages of 6,000 bytes each: over the 16 KiB the server keeps,
  // so the first 在吗 leaves the history.
  for (const ch of ["一", "二", "三"]) {
    await p.fill("#text", ch.repeat(2000));
    await p.press("#text", "Enter");
  }
  await p.fill("#text", "在吗");
  await p.press("#text", "Enter");
  await agent.locator("#convs .conv", { hasText: "tb_长聊01" }).click();
  await agent.locator("#messages .msg.buyer .bubble", { hasText: "三三三" }).waitFor();
  await agent.locator("#messages .msg.buyer .bubble", { hasText: /^在吗$/ }).last().waitFor();
  await p.waitForTimeout(300);
  await link.server.close();
  await link.ws.close({ code: 4000, reason: "test drop" });
  await p.locator("#conv-id", { hasText: "已恢复" }).waitFor();
  // The history is cut: the first 在吗 is gone, the second is in it.
  await p.locator(".msg[data-from=buyer] .bubble", { hasText: "三三三" }).waitFor();
  await p.waitForTimeout(300);
  assert.equal(await p.locator(".msg[data-from=buyer] .bubble", { hasText: /^在吗$/ }).count(), 1);
  assert.equal(await p.locator(".msg .meta", { hasText: "未发出" }).count(), 0, "nothing called not sent");
  assert.equal(await p.inputValue("#text"), "", "nothing put back in the box");
  await p.close();
});

test("the length limit counts characters; a buyer scrolled up keeps their place", async () => {
  const p = await buyerTab("buyer long");
  await p.fill("#in-shop", SHOP);
  await p.fill("#in-buyer", "tb_表情01");
  await p.click("#signin button[type=submit]");
  await p.locator(".msg[data-from=bot]").first().waitFor();
  // 1,500 emoji are 1,500 characters (3,000 UTF-16 units): they go out whole.
  const emoji = "😀".repeat(1500);
  await p.fill("#text", emoji);
  assert.equal(await p.inputValue("#text"), emoji, "nothing cut at typing");
  await p.press("#text", "Enter");
  await agent.locator("#convs .conv", { hasText: "tb_表情01" }).click();
  await agent.locator("#messages .msg.buyer .bubble", { hasText: "😀😀😀" }).waitFor();
  assert.equal([...(await agent.locator("#messages .msg.buyer .bubble").last().textContent())].length, 1500);
  // Over 2,000 characters: said at once, the text stays.
  const long = "好".repeat(2001);
  await p.fill("#text", long);
  await p.press("#text", "Enter");
  await p.locator("#banner", { hasText: "消息太长了（2001 字）" }).waitFor();
  assert.equal(await p.inputValue("#text"), long);
  await p.fill("#text", "");
  // Scrolled up: an agent's reply does not pull the buyer down.
  await p.setViewportSize({ width: 1280, height: 420 });
  await p.evaluate(() => (document.getElementById("messages").scrollTop = 0));
  await agent.fill("#reply", "亲，收到您的表情啦～");
  await agent.press("#reply", "Enter");
  await p.locator(".msg[data-from=agent] .bubble", { hasText: "收到您的表情" }).waitFor();
  const top = await p.evaluate(() => document.getElementById("messages").scrollTop);
  assert.ok(top < 10, `kept at the top, scrollTop ${top}`);
  await p.close();
});

test("the buyer page fits a phone's width", async () => {
  const p = await context.newPage();
  watch(p, "buyer phone");
  await p.setViewportSize({ width: 400, height: 720 });
  await p.goto(`${server.url}/buyer`);
  await p.fill("#in-shop", SHOP);
  await p.fill("#in-buyer", "tb_手机01");
  await p.click("#signin button[type=submit]");
  await p.locator(".msg[data-from=bot]").first().waitFor();
  const overflow = await p.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px`);
  const end = await p.locator("#end").boundingBox();
  assert.ok(end && end.x + end.width <= 400, "结束并评价 is on the screen");
  await shot(p, "buyer-phone-width");
  await p.close();
});

test("no page had a script error", () => {
  assert.deepEqual(pageErrors, []);
});
