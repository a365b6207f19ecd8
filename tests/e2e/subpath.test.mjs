// End-to-end: kefu behind a proxy that serves it under a sub-path
// (https://shop.example/kefu/ → kefu's /), as docs/DEPLOY.md describes. The
// pages link their files, the WebSocket and the report relative to
// themselves, so the workbench, the buyer page and the reports all work
// through the prefix; `/kefu/buyer/` redirects to `/kefu/buyer`, not to
// the root. The proxy here is a few lines of node (HTTP and the WebSocket
// upgrade, the prefix stripped), on loopback.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { startServer, launchBrowser, deskContext, signInAgent, signInBuyer, ARTIFACTS, pageErrorWatcher } from "./server.mjs";

const SHOP = "s1";
const PREFIX = "/kefu";
const BOSS = "boss-token-for-the-subpath-test";

let server;
let proxy;
let base;
let browser;
let context;
const { errors: pageErrors, watch } = pageErrorWatcher();
const outside = []; // requests that missed the prefix

/** A reverse proxy on 127.0.0.1 that serves `target` under PREFIX only. */
function startProxy(target) {
  const { hostname, port } = new URL(target);
  const strip = (url) => (url.startsWith(`${PREFIX}/`) ? url.slice(PREFIX.length) : null);
  const p = http.createServer((req, res) => {
    const to = strip(req.url);
    if (to === null) {
      outside.push(req.url);
      res.writeHead(404).end("outside the prefix\n");
      return;
    }
    const up = http.request({ hostname, port, path: to, method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    up.on("error", () => res.writeHead(502).end());
    req.pipe(up);
  });
  p.on("upgrade", (req, socket, head) => {
    const to = strip(req.url);
    if (to === null) {
      outside.push(req.url);
      socket.destroy();
      return;
    }
    const up = net.connect(port, hostname, () => {
      const lines = [`${req.method} ${to} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      up.write(lines.join("\r\n") + "\r\n\r\n");
      if (head.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    up.on("error", () => socket.destroy());
    socket.on("error", () => up.destroy());
  });
  return new Promise((resolve) => p.listen(0, "127.0.0.1", () => resolve(p)));
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startServer({ flags: ["--agent-token", `${SHOP}:a1:token-a1`, "--supervisor-token", `${SHOP}:${BOSS}`] });
  proxy = await startProxy(server.url);
  base = `http://127.0.0.1:${proxy.address().port}${PREFIX}`;
  browser = await launchBrowser();
  context = await deskContext(browser);
});

after(async () => {
  if (browser) await browser.close();
  if (proxy) proxy.close();
  if (server) await server.stop();
});

test("the workbench, the buyer page and the reports work under a proxy's sub-path", async () => {
  const agent = await context.newPage();
  watch(agent, "agent");
  await signInAgent(agent, base, SHOP, "a1", "token-a1");

  // The trailing slash redirects beside itself, still under the prefix.
  const buyer = await context.newPage();
  watch(buyer, "buyer");
  await signInBuyer(buyer, `${base}/buyer/`, SHOP, "b-subpath");
  assert.equal(new URL(buyer.url()).pathname, `${PREFIX}/buyer`);
  await buyer.fill("#text", "什么时候发货？");
  await buyer.press("#text", "Enter");
  await agent.locator("#convs .conv", { hasText: "b-subpath" }).waitFor();
  await agent.locator("#messages .msg.buyer", { hasText: "什么时候发货" }).waitFor();
  await agent.screenshot({ path: path.join(ARTIFACTS, "subpath-workbench.png") });

  const reports = await context.newPage();
  watch(reports, "reports");
  const answered = reports.waitForResponse((r) => r.url().includes(`${PREFIX}/api/report`));
  await reports.goto(`${base}/reports`);
  await reports.fill("#in-shop", SHOP);
  await reports.fill("#in-token", BOSS);
  await reports.click("#signin button[type=submit]");
  assert.equal((await answered).status(), 200);

  assert.deepEqual(outside, [], "every request stayed under the prefix");
  assert.deepEqual(pageErrors, []);
});
