// End-to-end check of the phrase libraries' status on the workbench: after
// a broken edit of the phrase files (refused by hot reload, the old
// libraries stay), an agent who signs in later sees an amber banner from
// their `welcome` naming the problem (its text shown as text, not markup);
// once the files are fixed, the banner goes and a new sign-in shows none.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { startServer, launchBrowser, deskContext, ARTIFACTS, ROOT, pageErrorWatcher } from "./server.mjs";

const SHOP = "s1";

let server;
let browser;
let context;
let phrases;
const { errors: pageErrors, watch } = pageErrorWatcher();

async function agentPage(id) {
  const p = await context.newPage();
  watch(p, `agent ${id}`);
  await p.goto(`${server.url}/`);
  await p.fill("#in-shop", SHOP);
  await p.fill("#in-agent", id);
  await p.fill("#in-token", `token-${id}`);
  await p.click("#signin button[type=submit]");
  await p.locator("#status.on").waitFor();
  return p;
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  phrases = mkdtempSync(path.join(tmpdir(), "kefu-e2e-phrases-"));
  cpSync(path.join(ROOT, "phrases"), phrases, { recursive: true });
  server = await startServer({
    flags: ["--agent-token", `${SHOP}:a1:token-a1`, "--agent-token", `${SHOP}:a2:token-a2`],
    phrases,
  });
  browser = await launchBrowser();
  context = await deskContext(browser);
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
  if (phrases) rmSync(phrases, { recursive: true, force: true });
});

test("a broken phrase file is shown to agents who sign in later, until it is fixed", async () => {
  const a1 = await agentPage("a1");
  const file = path.join(phrases, "pre_sale.yaml");
  const good = readFileSync(file, "utf8");
  // An unknown stage whose name is markup: the banner must show it as text.
  writeFileSync(file, 'stage: "<img src=x id=injected>"\nintents: []\n');
  // The agent online at the edit hears it from the `reload` frame.
  await a1.locator("#banner.warn", { hasText: "话术库修改有误" }).waitFor();
  // Agents see the file's name, not the server's path to it.
  assert.ok(!(await a1.textContent("#banner")).includes(phrases), "no server path in the banner");

  // An agent signing in later learns it from their `welcome`.
  const a2 = await agentPage("a2");
  const banner = a2.locator("#banner.warn", { hasText: "话术库文件有误" });
  await banner.waitFor();
  const text = await banner.textContent();
  assert.match(text, /推荐回复暂时使用修改前的版本，请联系管理员修正/);
  assert.match(text, /修正：pre_sale\.yaml:1:\d+: unknown stage `<img src=x id=injected>`/);
  assert.ok(!text.includes(phrases), "no server path in the banner");
  assert.equal(await a2.locator("#injected").count(), 0, "the problem is text, not markup");
  await a2.screenshot({ path: path.join(ARTIFACTS, "phrases-broken.png"), fullPage: true });

  // The fix reloads: the banner turns to the blue "reloaded" one.
  writeFileSync(file, good);
  await a2.locator("#banner.info", { hasText: "话术库已重新加载" }).waitFor();
  // A new sign-in after the fix shows no warning.
  await a2.reload();
  await a2.locator("#status.on").waitFor();
  assert.equal(await a2.locator("#banner.warn").count(), 0);
  assert.deepEqual(pageErrors, []);
});
