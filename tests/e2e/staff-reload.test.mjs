// End-to-end: an agent whose token the shop changes while they work
// (settings edited, then SIGHUP) is signed out at once: the workbench goes
// back to the sign-in form saying why, without reconnecting on the old
// token; the new token signs them in again.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { startServer, launchBrowser, deskContext, ARTIFACTS } from "./server.mjs";

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
