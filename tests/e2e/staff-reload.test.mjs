// End-to-end: an agent whose token the shop changes while they work
// (settings edited, then SIGHUP) is signed out at once: the workbench goes
// back to the sign-in form saying why, without reconnecting on the old
// token; the new token signs them in again. A colleague removed leaves the
// transfer (转接) list of the agents still working.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { startServer, launchBrowser, deskContext, signInAgent, signInBuyer, ARTIFACTS } from "./server.mjs";

const SHOP = "s1";
const settings = (token) => `shops:\n  ${SHOP}:\n    name: 测试旗舰店\n    agents:\n      a1:\n        token: ${token}\n`;

let server;
let browser;
let context;
const pageErrors = [];

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startServer({ config: settings("token-a1-before-rotation") });
  browser = await launchBrowser();
  context = await deskContext(browser);
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

async function signIn(p, token) {
  await p.fill("#in-shop", SHOP);
  await p.fill("#in-agent", "a1");
  await p.fill("#in-token", token);
  await p.click("#signin button[type=submit]");
}

test("an agent whose token is changed by a reload is signed out and told why", async () => {
  const p = await context.newPage();
  p.on("pageerror", (e) => pageErrors.push(e.message));
  await p.goto(`${server.url}/`);
  await signIn(p, "token-a1-before-rotation");
  await p.locator("#status.on").waitFor();

  writeFileSync(path.join(server.dir, "kefu.yaml"), settings("token-a1-after-rotation"));
  server.reload();
  await p.locator("#signin-error", { hasText: "令牌已被更换或撤销" }).waitFor();
  await p.waitForTimeout(1500); // a reconnect would start within 0.5 s
  assert.equal(await p.isVisible("#signin"), true);
  assert.equal(await p.textContent("#status"), "未连接");
  assert.match(server.output(), /staff reloaded/);

  await signIn(p, "token-a1-after-rotation");
  await p.locator("#status.on").waitFor();
  await p.screenshot({ path: path.join(ARTIFACTS, "workbench-signed-in-after-rotation.png") });
  assert.deepEqual(pageErrors, []);
  await p.close();
});

test("a colleague removed by a reload leaves the transfer list and is no longer the choice", async () => {
  const two = `shops:\n  ${SHOP}:\n    name: 测试旗舰店\n    agents:\n      a1:\n        token: token-a1-after-rotation\n      a2:\n        token: token-a2-to-remove\n`;
  writeFileSync(path.join(server.dir, "kefu.yaml"), two);
  server.reload();
  await waitForOutput(/added=s1:a2/);

  const a = await context.newPage();
  a.on("pageerror", (e) => pageErrors.push(e.message));
  await a.goto(`${server.url}/`);
  await signIn(a, "token-a1-after-rotation");
  await a.locator("#status.on").waitFor();
  const b = await context.newPage();
  b.on("pageerror", (e) => pageErrors.push(e.message));
  await signInAgent(b, server.url, SHOP, "a2", "token-a2-to-remove");

  // A buyer for a1 (equal load: the smaller id), so 转接 opens.
  const buyer = await context.newPage();
  buyer.on("pageerror", (e) => pageErrors.push(e.message));
  await signInBuyer(buyer, `${server.url}/buyer`, SHOP, "b-removed");
  await buyer.fill("#text", "在吗？");
  await buyer.press("#text", "Enter");
  await a.locator("#convs .conv", { hasText: "b-removed" }).waitFor();
  await a.locator("#convs .conv", { hasText: "b-removed" }).click();
  await a.click("#transfer-open");
  await a.locator("#transfer-to option[value=a2]").waitFor({ state: "attached" });
  await a.selectOption("#transfer-to", "a2");

  writeFileSync(path.join(server.dir, "kefu.yaml"), settings("token-a1-after-rotation"));
  server.reload();
  await b.locator("#signin-error", { hasText: "令牌已被更换或撤销" }).waitFor();
  await a.locator("#transfer-to option[value=a2]").waitFor({ state: "detached" });
  assert.equal(await a.inputValue("#transfer-to"), "");
  assert.equal(await a.isDisabled("#transfer-send"), true);
  assert.doesNotMatch(await a.textContent("#transfer-hint"), /离线/);
  await a.screenshot({ path: path.join(ARTIFACTS, "workbench-colleague-removed.png") });
  assert.deepEqual(pageErrors, []);
});

/** Waits (up to 5 s) until the service's output matches `re`. */
async function waitForOutput(re) {
  for (let i = 0; i < 50; i++) {
    if (re.test(server.output())) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.match(server.output(), re);
}
