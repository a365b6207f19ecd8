// End-to-end check of 转接: agent a1 hands a waiting buyer to agent a2 in
// two browser pages, with a note; the conversation leaves a1's list with a
// log line, reaches a2 marked as transferred from a1 with the note, the
// buyer is told politely, and the buyer's next message goes to a2.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { startServer, launchBrowser, deskContext, ARTIFACTS, pageErrorWatcher } from "./server.mjs";

const SHOP = "s1";

let server;
let browser;
let context;
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
  server = await startServer({ flags: ["--agent-token", `${SHOP}:a1:token-a1`, "--agent-token", `${SHOP}:a2:token-a2`] });
  browser = await launchBrowser();
  context = await deskContext(browser);
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

test("an agent transfers a conversation to a colleague, who sees it with the note", async () => {
  const a = await agentPage("a1");
  const b = await agentPage("a2");

  const buyer = await context.newPage();
  watch(buyer, "buyer");
  await buyer.goto(`${server.url}/buyer`);
  await buyer.fill("#in-shop", SHOP);
  await buyer.fill("#in-buyer", "b1");
  await buyer.click("#signin button[type=submit]");
  await buyer.locator(".msg[data-from=bot]").first().waitFor();
  await buyer.fill("#text", "退货运费谁出？");
  await buyer.press("#text", "Enter");

  // Equal load, so the smaller id gets the buyer: a1.
  await a.locator("#convs .conv", { hasText: "b1" }).waitFor();
  await a.locator("#messages .msg.buyer", { hasText: "退货运费谁出" }).waitFor();

  // Escape closes the row (focus back on 转接); it opens again.
  await a.click("#transfer-open");
  await a.locator("#transfer").waitFor();
  await a.keyboard.press("Escape");
  await a.locator("#transfer").waitFor({ state: "hidden" });
  assert.equal(await a.evaluate(() => document.activeElement.id), "transfer-open");
  await a.click("#transfer-open");
  // a2 came online after a1: a `colleague` frame put them in the list.
  await a.locator("#transfer-to option[value=a2]").waitFor({ state: "attached" });
  await a.selectOption("#transfer-to", "a2");
  await a.fill("#transfer-note", "售后问题，订单已核实");
  await a.screenshot({ path: path.join(ARTIFACTS, "transfer-sender.png"), fullPage: true });
  await a.click("#transfer-send");

  // Sender: the conversation leaves the list, with a log line.
  await a.locator("#convs .conv").waitFor({ state: "detached" });
  await a.locator("#events li", { hasText: "已将买家 b1 转接给 a2" }).waitFor();
  assert.equal(await a.locator("#transfer").isHidden(), true, "the form closes");

  // Receiver: the conversation arrives marked as transferred, with the note.
  await b.locator("#convs .conv", { hasText: "b1" }).waitFor();
  await b.locator("#convs .conv", { hasText: "b1" }).click();
  const mark = b.locator("#messages .msg.system.transferred");
  await mark.waitFor();
  assert.match(await mark.textContent(), /同事 a1 转接给你，备注：售后问题，订单已核实/);
  await b.locator("#events li", { hasText: "售后问题，订单已核实" }).waitFor();
  // The round still runs: the buyer has not been answered.
  assert.match(await b.locator("#chat-clock").textContent(), /剩 \d+s|超时/);

  // The buyer is told, and their next message reaches a2.
  await buyer.locator(".msg[data-from=bot]", { hasText: "已为您转接" }).waitFor();
  await buyer.fill("#text", "好的，等您");
  await buyer.press("#text", "Enter");
  await b.locator("#messages .msg.buyer", { hasText: "好的，等您" }).waitFor();
  await b.screenshot({ path: path.join(ARTIFACTS, "transfer-receiver.png"), fullPage: true });

  assert.deepEqual(pageErrors, []);
});

test("the note stays with the conversation after the receiver reloads; the buyer never sees it", async () => {
  const NOTE = "买家要退款，订单已核对";
  const a = await agentPage("a1");
  const b = await agentPage("a2");

  const buyer = await context.newPage();
  watch(buyer, "buyer b-note");
  await buyer.goto(`${server.url}/buyer`);
  await buyer.fill("#in-shop", SHOP);
  await buyer.fill("#in-buyer", "b-note");
  await buyer.click("#signin button[type=submit]");
  await buyer.locator(".msg[data-from=bot]").first().waitFor();
  await buyer.fill("#text", "我要退款");
  await buyer.press("#text", "Enter");

  // a1 has fewer conversations (a2 may still hold the first test's b1).
  await a.locator("#convs .conv", { hasText: "b-note" }).click();
  await a.locator("#messages .msg.buyer", { hasText: "我要退款" }).waitFor();
  await a.click("#transfer-open");
  await a.locator("#transfer-to option[value=a2]").waitFor({ state: "attached" });
  await a.selectOption("#transfer-to", "a2");
  await a.fill("#transfer-note", NOTE);
  await a.click("#transfer-send");
  await a.locator("#convs .conv", { hasText: "b-note" }).waitFor({ state: "detached" });

  const noteLine = async (page) => {
    await page.locator("#convs .conv", { hasText: "b-note" }).click();
    const line = page.locator("#messages .msg.system.staff");
    await line.waitFor();
    assert.equal(await line.count(), 1, "one staff-only line");
    assert.equal(await line.textContent(), `同事 a1 转接给你，备注：${NOTE}`);
    // Text nodes only: the note is not parsed as markup.
    assert.equal(await line.evaluate((n) => n.querySelectorAll("*").length), 0);
    return line;
  };
  // Live, then after a reload of the workbench (a new welcome).
  await noteLine(b);
  await b.reload();
  await b.locator("#status.on").waitFor();
  const line = await noteLine(b);
  assert.match(await line.getAttribute("title"), /仅客服可见/);
  // Styled apart from chat bubbles: no bubble, a label of its own.
  assert.equal(await line.locator(".bubble").count(), 0);
  const label = await line.evaluate((n) => getComputedStyle(n, "::before").content);
  assert.match(label, /仅客服可见/);
  await b.screenshot({ path: path.join(ARTIFACTS, "transfer-note-after-reload.png"), fullPage: true });

  // The buyer: told politely, never shown the note, nor after a reload.
  await buyer.locator(".msg[data-from=bot]", { hasText: "已为您转接" }).waitFor();
  const shown = async () => buyer.evaluate(() => document.body.innerText + document.body.innerHTML);
  assert.ok(!(await shown()).includes("订单已核对"));
  await buyer.reload();
  await buyer.locator("#conv-id", { hasText: "已恢复" }).waitFor();
  await buyer.locator(".msg[data-from=bot]", { hasText: "已为您转接" }).waitFor();
  assert.ok(!(await shown()).includes("订单已核对"));
  assert.equal(await buyer.locator(".msg[data-from=system]").count(), 0);
  await buyer.screenshot({ path: path.join(ARTIFACTS, "transfer-note-buyer.png"), fullPage: true });

  assert.deepEqual(pageErrors, []);
});
