// End-to-end checks of what an agent's page does around an outage, and of a
// sign-in before the scripts run: a draft of a conversation that moved to a
// colleague while the page was away is said with its text to copy (it
// vanished without a word), and the sign-in form never puts the token in
// the address (it did when submitted before the scripts ran).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { startServer, launchBrowser, deskContext, signInAgent, signInBuyer, ARTIFACTS, pageErrorWatcher } from "./server.mjs";

const SHOP = "s1";

let server;
let browser;
let context;
// The test refuses the agent's reconnects while it holds the link down.
const { errors: pageErrors, watch } = pageErrorWatcher({ expected: /WebSocket connection to .* failed/ });

const signIn = (p, id) => signInAgent(p, server.url, SHOP, id, `token-${id}-long-enough`);

/**
 * Routes `page`'s sockets through the test. `refuse(n, ws)` may take the
 * n-th socket itself (and return true); otherwise the first is relayed and
 * kept for `drop()`, and later ones go straight to the server.
 */
async function routeSockets(page, refuse = () => false) {
  const route = { link: null, count: 0 };
  await page.routeWebSocket(/\/ws$/, (ws) => {
    route.count += 1;
    if (refuse(route.count, ws)) return;
    if (route.link) return void ws.connectToServer();
    const srv = ws.connectToServer();
    route.link = { ws, srv };
    ws.onMessage((m) => srv.send(m));
    srv.onMessage((m) => ws.send(m));
  });
  route.drop = async () => {
    await route.link.srv.close();
    await route.link.ws.close({ code: 4000, reason: "test drop" });
  };
  return route;
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startServer({
    flags: ["--agent-token", `${SHOP}:a1:token-a1-long-enough`, "--agent-token", `${SHOP}:a2:token-a2-long-enough`],
    // An agent away for more than a second loses their conversations.
    config: "limits:\n  agent_grace_secs: 1\n",
  });
  browser = await launchBrowser();
  context = await deskContext(browser);
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

test("a draft of a conversation moved away during an outage is said, with its text", async () => {
  const a = await context.newPage();
  watch(a, "agent a1");
  // a1's sockets go through the test: it drops the first and refuses new
  // ones while `down`, then lets them through.
  let down = false;
  const route = await routeSockets(a, (_, ws) => {
    if (down) ws.close({ code: 1006, reason: "test outage" });
    return down;
  });
  await signIn(a, "a1");

  const buyer = await context.newPage();
  watch(buyer, "buyer");
  await signInBuyer(buyer, `${server.url}/buyer`, SHOP, "tb_断线草稿");
  await buyer.fill("#text", "这个有现货吗");
  await buyer.press("#text", "Enter");
  await a.locator("#convs .conv", { hasText: "tb_断线草稿" }).click();
  await a.locator("#messages .msg.buyer", { hasText: "这个有现货吗" }).waitFor();

  const b = await context.newPage();
  watch(b, "agent a2");
  await signIn(b, "a2");

  const draft = "亲，这款目前有现货，今天下单明天发出";
  await a.fill("#reply", draft);
  down = true;
  await route.drop();
  // Past a1's grace the conversation moves to a2.
  await b.locator("#convs .conv", { hasText: "tb_断线草稿" }).waitFor();
  down = false;

  // a1 is back: the welcome no longer lists it, and the page says so.
  await a.locator("#status.on").waitFor({ timeout: 20000 });
  const banner = a.locator("#banner");
  await banner.waitFor();
  assert.match(await banner.textContent(), /tb_断线草稿 的会话已不在您这里（已转给同事或已结束）/);
  assert.equal(await banner.locator(".unsent").textContent(), draft);
  await banner.locator("button[data-role=copy]").waitFor();
  assert.equal(await a.locator("#convs .conv", { hasText: "tb_断线草稿" }).count(), 0);
  await a.screenshot({ path: path.join(ARTIFACTS, "outage-moved-draft.png"), fullPage: true });
  assert.deepEqual(pageErrors, []);
  // Gone before the next test, whose buyer must reach its own agent.
  for (const p of [a, b, buyer]) await p.close();
});

test("the sign-in form submitted before the scripts run keeps the token out of the address", async () => {
  const bare = await browser.newContext({ javaScriptEnabled: false });
  try {
    const p = await bare.newPage();
    await p.goto(`${server.url}/`);
    await p.fill("#in-shop", SHOP);
    await p.fill("#in-agent", "a1");
    await p.fill("#in-token", "token-a1-long-enough");
    await Promise.all([p.waitForURL((u) => u.toString() !== `${server.url}/`, { timeout: 5000 }).catch(() => {}), p.press("#in-token", "Enter")]);
    await p.waitForLoadState();
    const url = p.url();
    assert.doesNotMatch(url, /token/, url);
    assert.doesNotMatch(url, /a1/, url);
  } finally {
    await bare.close();
  }
});

test("a browser clock that stepped forward is learnt again at the next welcome", async () => {
  const a = await context.newPage();
  watch(a, "agent a2 (clock)");
  await a.clock.install();
  const route = await routeSockets(a);
  await signIn(a, "a2");
  // The browser's clock jumps a minute ahead (an NTP step, a laptop's
  // sleep); the link drops and comes back.
  await a.clock.setSystemTime(Date.now() + 60000);
  await route.drop();
  await a.locator("#status.on").waitFor();

  const buyer = await context.newPage();
  watch(buyer, "buyer (clock)");
  await signInBuyer(buyer, `${server.url}/buyer`, SHOP, "tb_时钟");
  await buyer.fill("#text", "发什么快递");
  await buyer.press("#text", "Enter");
  await a.locator("#convs .conv", { hasText: "tb_时钟" }).click();
  await a.locator("#messages .msg.buyer", { hasText: "发什么快递" }).waitFor();
  // A new round: close to its full 30 s, not 超时.
  const shown = await a.locator("#chat-clock").textContent();
  const left = /剩 (\d+)s/.exec(shown);
  assert.ok(left && Number(left[1]) > 20 && Number(left[1]) <= 30, shown);
  assert.deepEqual(pageErrors, []);
});

test("a resume refused over the conversation's rate does not call the last message not sent", async () => {
  const p = await context.newPage();
  watch(p, "buyer (refused resume)");
  // The first socket passes; the second gets the server's refusal of a
  // resume over the rate (rate_limited, 1013) from the test; later ones pass.
  const route = await routeSockets(p, (n, ws) => {
    if (n !== 2) return false;
    ws.onMessage(() => {
      ws.send(JSON.stringify({ type: "error", code: "rate_limited", message: "too many reconnects and messages for this conversation" }));
      ws.close({ code: 1013, reason: "rate_limited" });
    });
    return true;
  });
  await signInBuyer(p, `${server.url}/buyer`, SHOP, "tb_重连过快");
  await p.fill("#text", "在吗");
  await p.press("#text", "Enter");
  await p.waitForTimeout(300);
  await route.drop();
  // Refused once (the page waits at least 5 s after a 1013), then back in.
  await p.locator("#conv-id", { hasText: "已恢复" }).waitFor({ timeout: 20000 });
  assert.equal(route.count, 3);
  assert.equal(await p.inputValue("#text"), "", "the delivered message is not put back");
  assert.equal(await p.locator(".msg .meta", { hasText: "未发出" }).count(), 0);
  assert.deepEqual(pageErrors, []);
});
