// End-to-end checks of the pages' edge states, with their own `kefu serve`:
// leaving stops for good (no "reconnecting" badge), a sign-in locked after
// too many wrong tokens says how long to wait, 换个买家 keeps the shop,
// bidi control characters in buyer text are shown and not obeyed, a text
// selection in the chat survives frames, long ids wrap in the event log, the
// reports page runs custom dates and explains a start after the end, and
// after a server restart the agent keeps their draft and selection.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { startServer, launchBrowser, deskContext, ARTIFACTS, KEFU_BIN, ROOT, pageErrorWatcher } from "./server.mjs";

const SHOP = "s1";
const AGENT_TOKEN = "agent-secret";
const BOSS_TOKEN = "boss-secret";

let server;
let browser;
let context;
let agent;
// While the server restarts, the browser logs each refused reconnect;
// the reports test asks for a 400 on purpose.
const { errors: pageErrors, watch } = pageErrorWatcher({ expected: /WebSocket connection to .* failed|status of 400 \(Bad Request\)/ });

function shot(page, name) {
  return page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

async function signInAgent(page, url, token = AGENT_TOKEN) {
  await page.goto(`${url}/`);
  await page.fill("#in-shop", SHOP);
  await page.fill("#in-agent", "a1");
  await page.fill("#in-token", token);
  await page.click("#signin button[type=submit]");
}

async function enterBuyer(url, id) {
  const p = await context.newPage();
  watch(p, `buyer ${id}`);
  await p.goto(`${url}/buyer`);
  await p.fill("#in-shop", SHOP);
  await p.fill("#in-buyer", id);
  await p.click("#signin button[type=submit]");
  await p.locator(".msg[data-from=bot]").first().waitFor();
  return p;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startServer({
    flags: ["--agent-token", `${SHOP}:a1:${AGENT_TOKEN}`, "--supervisor-token", `${SHOP}:${BOSS_TOKEN}`],
    // A buyer who leaves is gone after 1 s, so a conversation closes
    // soon after (conversation_closed).
    config: "limits:\n  resume_window_secs: 1\n",
  });
  browser = await launchBrowser();
  context = await deskContext(browser);
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

test("退出 and a refused sign-in stop for good: the badge says 未连接, nothing reconnects", async () => {
  const p = await context.newPage();
  watch(p, "agent (sign out)");
  await signInAgent(p, server.url, "wrong-token");
  await p.locator("#signin-error", { hasText: "登录被拒绝" }).waitFor();
  assert.match(await p.textContent("#signin-error"), /令牌不正确.*（bad_token）/);
  await p.waitForTimeout(1500); // a reconnect would start within 0.5 s
  assert.equal(await p.textContent("#status"), "未连接");
  await signInAgent(p, server.url);
  await p.locator("#status", { hasText: "在线" }).waitFor();
  await p.click("#signout");
  await p.locator("#signin").waitFor();
  await p.waitForTimeout(1500);
  assert.equal(await p.textContent("#status"), "未连接");
  assert.equal(await p.locator("#events li", { hasText: "正在重连" }).count(), 0);
  await p.close();
});

test("too many wrong tokens: the workbench says how long to wait and does not retry", async () => {
  const p = await context.newPage();
  watch(p, "agent (locked)");
  await p.goto(`${server.url}/`);
  // Ten wrong tokens for agent a7, straight over WebSocket (an id the shop
  // does not have is throttled as a real one is; a1 stays usable for the
  // other tests).
  const codes = await p.evaluate(async () => {
    const out = [];
    for (let i = 0; i < 10; i++) {
      out.push(
        await new Promise((resolve) => {
          const ws = new WebSocket(kefu.wsUrl());
          ws.onopen = () => ws.send(JSON.stringify({ type: "hello", role: "agent", shop: "s1", agent: "a7", token: `guess${i}` }));
          ws.onmessage = (ev) => resolve(JSON.parse(ev.data).code);
          ws.onclose = () => resolve("closed");
        }),
      );
    }
    return out;
  });
  assert.deepEqual(codes, Array(10).fill("bad_token"));
  await p.fill("#in-shop", SHOP);
  await p.fill("#in-agent", "a7");
  await p.fill("#in-token", "the-right-one-or-not");
  await p.click("#signin button[type=submit]");
  await p.locator("#signin-error", { hasText: "登录暂不可用" }).waitFor();
  assert.match(await p.textContent("#signin-error"), /登录失败的次数太多.*请 \d+ 秒后再试（too_many_attempts）/);
  await p.waitForTimeout(1500); // a reconnect would start within 0.5 s
  assert.equal(await p.textContent("#status"), "未连接");
  assert.equal(await p.isVisible("#signin"), true);
  await shot(p, "workbench-too-many-attempts");
  await p.close();
});

test("换个买家 keeps the shop and offers a new buyer id", async () => {
  const p = await enterBuyer(server.url, "leaver");
  await p.click("#leave");
  await p.locator("#signin").waitFor();
  assert.equal(await p.inputValue("#in-shop"), SHOP);
  const id = await p.inputValue("#in-buyer");
  assert.ok(id && id !== "leaver", `a new buyer id is offered, got ${id}`);
  await p.waitForTimeout(1200);
  assert.equal(await p.textContent("#status"), "未连接");
  await p.close();
});

test("bidi control characters in buyer text are shown, not obeyed", async () => {
  agent = await context.newPage();
  watch(agent, "agent");
  await signInAgent(agent, server.url);
  await agent.locator("#status", { hasText: "在线" }).waitFor();
  const b = await enterBuyer(server.url, "bidi");
  await say(b, "订单号 12345\u202e67890 请查收");
  await agent.locator(".conv", { hasText: "bidi" }).click();
  const bubble = agent.locator(".msg[data-from=buyer] .bubble", { hasText: "订单号" });
  await bubble.waitFor();
  assert.equal(await bubble.locator(".ctl").textContent(), "U+202E");
  const shown = await bubble.evaluate((n) => ({ text: n.textContent, bidi: getComputedStyle(n).unicodeBidi }));
  assert.ok(!shown.text.includes("\u202e"), "the override itself is not in the page");
  assert.equal(shown.bidi, "plaintext");
  const preview = agent.locator(".conv", { hasText: "bidi" }).locator(".last");
  assert.equal(await preview.locator(".ctl").count(), 1);
  assert.equal(await preview.evaluate((n) => getComputedStyle(n).unicodeBidi), "plaintext");
  // The buyer's own page shows it the same way.
  const own = b.locator(".msg[data-from=buyer] .bubble", { hasText: "订单号" });
  assert.equal(await own.locator(".ctl").count(), 1);
  await shot(agent, "states-bidi");
  await b.close();
});

test("a text selection in the chat survives frames about other buyers and new lines", async () => {
  const b = await enterBuyer(server.url, "sel1");
  await say(b, "我的订单号是 202611200001，请帮我查一下");
  await agent.locator(".conv", { hasText: "sel1" }).click();
  const bubble = agent.locator(".msg[data-from=buyer] .bubble", { hasText: "202611200001" });
  await bubble.waitFor();
  // Select the order number as an agent would with the mouse.
  await bubble.evaluate((n) => {
    const t = n.firstChild;
    const i = t.textContent.indexOf("202611200001");
    const r = document.createRange();
    r.setStart(t, i);
    r.setEnd(t, i + 12);
    getSelection().removeAllRanges();
    getSelection().addRange(r);
  });
  const selection = () => agent.evaluate(() => getSelection().toString());
  assert.equal(await selection(), "202611200001");
  const other = await enterBuyer(server.url, "sel2");
  await say(other, "在吗");
  await agent.locator(".conv", { hasText: "sel2" }).waitFor();
  await agent.locator(".conv", { hasText: "sel2" }).locator(".clock.ok, .clock.nudge").waitFor();
  assert.equal(await selection(), "202611200001", "a frame about another buyer keeps the selection");
  await say(b, "麻烦快一点哦");
  await agent.locator(".msg[data-from=buyer] .bubble", { hasText: "麻烦快一点哦" }).waitFor();
  assert.equal(await selection(), "202611200001", "a new line in this chat keeps the selection");
  await b.close();
  await other.close();
});

test("a conversation that ended cannot be answered: the text stays in the box, nothing is sent", async () => {
  const b = await enterBuyer(server.url, "gone");
  await say(b, "我先下线了，晚点再来");
  const conv = agent.locator(".conv", { hasText: "gone" });
  await conv.click();
  await agent.locator("#chat-title", { hasText: "gone" }).waitFor();
  const text = "亲，您的问题我已记下，稍后回复您";
  await agent.fill("#reply", text);
  await b.close();
  // Before, 发送 stayed enabled and the reply bounced (unknown_conversation).
  await conv.locator(".muted", { hasText: "已结束" }).waitFor();
  await agent.press("#reply", "Enter");
  assert.equal(await agent.isDisabled("#send"), true);
  assert.match(await agent.textContent("#send-hint"), /会话已结束/);
  assert.equal(await agent.inputValue("#reply"), text, "the text stays in the box");
  assert.equal(await agent.locator(".msg.mine").count(), 0, "nothing is shown as sent");
  assert.notEqual(await conv.locator(".clock").textContent(), "已回复");
});

test("a 64-character id wraps in the event log instead of scrolling sideways", async () => {
  const id = `b${"x".repeat(63)}`;
  const b = await enterBuyer(server.url, id);
  const li = agent.locator("#events li", { hasText: id });
  await li.waitFor();
  const sideways = await agent.evaluate(() => {
    const box = document.querySelector(".events");
    return box.scrollWidth - box.clientWidth;
  });
  assert.ok(sideways <= 0, `the event log scrolls sideways by ${sideways}px`);
  await b.close();
});

test("reports: 自定义 runs with the dates shown, and a start after the end is explained in Chinese", async () => {
  const p = await context.newPage();
  watch(p, "reports");
  await p.goto(`${server.url}/reports`);
  await p.fill("#in-shop", SHOP);
  await p.fill("#in-token", BOSS_TOKEN);
  await p.click("#signin button[type=submit]");
  await p.locator("#range-note", { hasText: "近 7 天" }).waitFor();
  await p.click("#period [data-last='']");
  await p.locator("#range-note", { hasText: /范围：\d{4}-\d{2}-\d{2} 至 \d{4}-\d{2}-\d{2}/ }).waitFor();
  // A date change runs the query by itself.
  await p.fill("#from", "2026-01-01");
  await p.fill("#to", "2026-01-31");
  await p.locator("#range-note", { hasText: "范围：2026-01-01 至 2026-01-31" }).waitFor();
  await p.fill("#from", "2026-02-05");
  const error = p.locator("#error");
  await error.waitFor();
  const text = await error.textContent();
  assert.match(text, /开始日期不能晚于结束日期/);
  assert.match(text, /HTTP 400：from must come before to/);
  await shot(p, "states-reports-dates");
  await p.fill("#from", "2026-01-02");
  await p.locator("#range-note", { hasText: "范围：2026-01-02 至 2026-01-31" }).waitFor();
  assert.equal(await error.isHidden(), true);
  await p.close();
});

// ---------- a server that restarts on the same port ----------

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** `kefu serve` on a fixed port, so a restart comes back where the pages reconnect. */
async function serveOn(port, dir) {
  const child = spawn(
    KEFU_BIN,
    ["serve", "--listen", `127.0.0.1:${port}`, "--data", path.join(dir, "data"), "--phrases", path.join(ROOT, "phrases"), "--agent-token", `${SHOP}:a1:${AGENT_TOKEN}`],
    { cwd: dir, env: { ...process.env, RUST_LOG: "info", NO_COLOR: "1" }, stdio: ["ignore", "pipe", "pipe"] },
  );
  const exited = new Promise((resolve) => child.on("exit", resolve));
  let log = "";
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`kefu serve did not start:\n${log}`)), 30000);
    const onData = (chunk) => {
      log += chunk.toString();
      if (/listening on http:/.test(log)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    exited.then(() => reject(new Error(`kefu serve exited early:\n${log}`)));
  });
  return {
    async stop() {
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 10000);
      await exited;
      clearTimeout(t);
    },
  };
}

test("after a server restart the agent keeps the draft and the selection", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "kefu-e2e-restart-"));
  mkdirSync(path.join(dir, "data"));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  let srv = await serveOn(port, dir);
  try {
    const a = await context.newPage();
    watch(a, "agent (restart)");
    await signInAgent(a, url);
    await a.locator("#status", { hasText: "在线" }).waitFor();
    const r1 = await enterBuyer(url, "r1");
    await say(r1, "请问可以开发票吗");
    await a.locator(".conv", { hasText: "r1" }).waitFor();
    const r2 = await enterBuyer(url, "r2");
    await say(r2, "我的快递到哪了");
    await a.locator(".conv", { hasText: "r2" }).click();
    await a.locator("#chat-title", { hasText: "r2" }).waitFor();
    const draft = "亲，您的快递已到杭州转运中心，预计明天送达";
    await a.fill("#reply", draft);
    await srv.stop();
    await a.locator("#status", { hasText: "已断开，正在重连" }).waitFor();
    srv = await serveOn(port, dir);
    await a.locator("#status", { hasText: "在线" }).waitFor({ timeout: 20000 });
    // The buyers come back too (into a new conversation when the server
    // did not keep the old one); the selection follows r2 with the draft.
    await a.locator(".conv", { hasText: "r2" }).waitFor({ timeout: 20000 });
    await a.locator("#chat-title", { hasText: "r2" }).waitFor();
    assert.equal(await a.inputValue("#reply"), draft);
    assert.equal(await a.locator("#events li", { hasText: "连接断开，正在重连" }).count(), 1);
    await shot(a, "states-restart");
    await Promise.all([a.close(), r1.close(), r2.close()]);
  } finally {
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("no page had a script error", () => {
  assert.deepEqual(pageErrors, []);
});
