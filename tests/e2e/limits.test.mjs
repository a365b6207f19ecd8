// End-to-end check that the pages follow the server's text limit
// (`limits.max_text_chars`, sent in both welcomes) rather than the default
// they used to assume: a lower setting made the workbench send a long
// draft for checking every second, refused each time, with the counter
// saying "600/2000".
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { startServer, launchBrowser, deskContext, signInAgent, signInBuyer, ARTIFACTS, pageErrorWatcher } from "./server.mjs";

const SHOP = "s1";
const TOKEN = "token-a1-long-enough";

let server;
let browser;
let context;
const { errors: pageErrors, watch } = pageErrorWatcher();

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startServer({
    flags: ["--agent-token", `${SHOP}:a1:${TOKEN}`],
    config: "limits:\n  max_text_chars: 500\n",
  });
  browser = await launchBrowser();
  context = await deskContext(browser);
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

test("the pages count against the server's text limit, not the default", async () => {
  const agent = await context.newPage();
  watch(agent, "agent");
  // The agent's frames to the server, to count the politeness checks.
  const sent = [];
  await agent.routeWebSocket(/\/ws$/, (ws) => {
    const srv = ws.connectToServer();
    ws.onMessage((m) => {
      sent.push(String(m));
      srv.send(m);
    });
    srv.onMessage((m) => ws.send(m));
  });
  await signInAgent(agent, server.url, SHOP, "a1", TOKEN);

  const buyer = await context.newPage();
  watch(buyer, "buyer");
  await signInBuyer(buyer, `${server.url}/buyer`, SHOP, "tb_长文");
  // Over the shop's 500: refused on the page, the text kept in the box.
  await buyer.fill("#text", "好".repeat(501));
  await buyer.press("#text", "Enter");
  await buyer.locator("#banner", { hasText: "每条不超过 500 字" }).waitFor();
  assert.equal(await buyer.inputValue("#text"), "好".repeat(501));
  await buyer.fill("#text", "在吗");
  await buyer.press("#text", "Enter");

  await agent.locator("#convs .conv", { hasText: "tb_长文" }).click();
  await agent.locator("#messages .msg.buyer", { hasText: "在吗" }).waitFor();
  assert.equal(await agent.getAttribute("#reply-count", "title"), "回复最多 500 字");
  await agent.fill("#reply", "亲".repeat(600));
  await agent.locator("#reply-count.over", { hasText: "600/500，超出 100 字" }).waitFor();
  await agent.locator("#lint", { hasText: "超过 500 字" }).waitFor();
  // Not sent for checking while it is over the limit.
  await agent.waitForTimeout(1500);
  assert.equal(sent.filter((f) => f.includes('"lint"')).length, 0);
  await agent.screenshot({ path: path.join(ARTIFACTS, "limits-shop-text-limit.png"), fullPage: true });
  assert.deepEqual(pageErrors, []);
});
