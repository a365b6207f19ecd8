// End-to-end checks of the workbench for a busy agent (found by review):
// rows do not move under the pointer and a click in progress is kept;
// choosing a conversation puts the cursor in its reply box and a digit is
// text; a reply lost in a reconnect comes back even when the same text was
// sent before; the most urgent buyer is on top and the tab title counts the
// waiting ones; F5 keeps drafts, unread markers and the selection; picking
// a suggestion can be undone; the clock is right at sign-in on a PC whose
// clock is off; an ended conversation cannot be answered and gives way to
// the buyer's new one; the politeness panel leaves the chat room at
// 1024×720. Each test has its own shop, so the lists do not mix.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { startServer, launchBrowser, deskContext, ARTIFACTS, pageErrorWatcher } from "./server.mjs";

const TOKEN = "agent-secret";
const SHOPS = ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10", "p11"];

let server;
let browser;
let context;
const { errors: pageErrors, watch } = pageErrorWatcher({ expected: /WebSocket connection to .* failed/ });

function shot(page, name) {
  return page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

async function agentOf(shop, { ctx = context, init = null } = {}) {
  const p = await ctx.newPage();
  watch(p, `agent ${shop}`);
  if (init) await p.addInitScript(init);
  await p.goto(`${server.url}/`);
  await p.fill("#in-shop", shop);
  await p.fill("#in-agent", "a1");
  await p.fill("#in-token", TOKEN);
  await p.click("#signin button[type=submit]");
  await p.locator("#status", { hasText: "在线" }).waitFor();
  return p;
}

async function enterBuyer(shop, id, ctx = context) {
  const p = await ctx.newPage();
  watch(p, `buyer ${id}`);
  await p.goto(`${server.url}/buyer`);
  await p.fill("#in-shop", shop);
  await p.fill("#in-buyer", id);
  await p.click("#signin button[type=submit]");
  await p.locator(".msg[data-from=bot]").first().waitFor();
  return p;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

const shown = (agent) => agent.$$eval("#convs .conv .buyer", (ls) => ls.map((l) => l.firstChild.textContent));

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startServer({
    flags: SHOPS.flatMap((s) => ["--agent-token", `${s}:a1:${TOKEN}`]),
    // A buyer who leaves is gone after 1 s (conversation_closed).
    config: "limits:\n  resume_window_secs: 1\n",
  });
  browser = await launchBrowser();
  context = await deskContext(browser);
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

test("rows stay put under the pointer, and a press held while a message comes still selects", async () => {
  const agent = await agentOf("p1");
  const buyers = [];
  for (let i = 1; i <= 5; i++) {
    const b = await enterBuyer("p1", `w${i}`);
    await say(b, `第${i}位买家：什么时候发货`);
    await agent.locator(".conv", { hasText: `w${i}` }).locator(".clock.ok").waitFor();
    buyers.push(b);
  }
  // The agent aims at w3's row; w1 writes again just before the click.
  const target = agent.locator(".conv", { hasText: "w3" });
  const box = await target.boundingBox();
  await agent.mouse.move(box.x + 40, box.y + 5);
  await agent.mouse.move(box.x + 60, box.y + 10);
  const before = await shown(agent);
  await say(buyers[0], "还在吗？");
  await agent.locator(".conv", { hasText: "w1" }).locator(".last", { hasText: "还在吗" }).waitFor();
  assert.deepEqual(await shown(agent), before, "no row moved under the pointer");
  await agent.mouse.click(box.x + 60, box.y + 10);
  await agent.locator("#chat-title", { hasText: "w3" }).waitFor({ timeout: 2000 });
  assert.equal(await agent.locator(".conv", { hasText: "w5" }).locator(".buyer").textContent(), "w5");

  // A press on w4, a message from w2 before the release: the click holds.
  const row4 = await agent.locator(".conv", { hasText: "w4" }).boundingBox();
  await agent.mouse.move(row4.x + 60, row4.y + 10);
  await agent.mouse.down();
  await say(buyers[1], "麻烦快一点");
  await agent.locator(".conv", { hasText: "w2" }).locator(".last", { hasText: "麻烦快一点" }).waitFor();
  await agent.mouse.up();
  await agent.locator("#chat-title", { hasText: "w4" }).waitFor({ timeout: 2000 });

  // w1 leaves: their ended conversation goes last, once the pointer is off the list.
  await buyers[0].close();
  await agent.locator(".conv.closed", { hasText: "w1" }).waitFor();
  await agent.mouse.move(700, 400);
  await agent.waitForFunction(() => [...document.querySelectorAll("#convs .conv")].pop()?.textContent.includes("w1"));
  await shot(agent, "busy-list-held");
  await Promise.all([agent.close(), ...buyers.slice(1).map((b) => b.close())]);
});

test("choosing a conversation puts the cursor in its reply box; a digit there is text", async () => {
  const agent = await agentOf("p2");
  const b1 = await enterBuyer("p2", "k1");
  await say(b1, "请问什么时候发货");
  const b2 = await enterBuyer("p2", "k2");
  await say(b2, "请问从哪个仓库发货");
  await agent.locator(".conv", { hasText: "k2" }).locator(".clock.ok").waitFor();
  await agent.locator(".suggestion").first().waitFor();
  // A draft for k1, then a click on k2's row, then straight typing.
  await agent.locator(".conv", { hasText: "k1" }).click();
  assert.equal(await agent.evaluate(() => document.activeElement.id), "reply");
  await agent.keyboard.type("亲，草稿");
  await agent.locator(".conv", { hasText: "k2" }).click();
  await agent.locator("#chat-title", { hasText: "k2" }).waitFor();
  assert.equal(await agent.evaluate(() => document.activeElement.id), "reply", "the click leaves the cursor in the reply box");
  await agent.keyboard.type("1号仓库发货");
  assert.equal(await agent.inputValue("#reply"), "1号仓库发货", "a leading digit is typed, not a suggestion pick");
  await agent.fill("#reply", "");
  await agent.keyboard.type("3-5天送达");
  assert.equal(await agent.inputValue("#reply"), "3-5天送达");
  // Alt+↑/↓ moves to the other conversation, cursor at the end of its draft.
  await agent.keyboard.press("Alt+ArrowDown");
  await agent.locator("#chat-title", { hasText: "k1" }).waitFor();
  const caret = await agent.evaluate(() => {
    const b = document.activeElement;
    return { id: b.id, at: b.selectionStart, len: b.value.length };
  });
  assert.deepEqual(caret, { id: "reply", at: 4, len: 4 });
  // Focus outside any input: a plain digit picks nothing; Alt+1 still picks.
  await agent.locator("#chat-title").click();
  await agent.fill("#reply", "");
  await agent.locator("#chat-title").click();
  await agent.keyboard.press("1");
  assert.equal(await agent.inputValue("#reply"), "");
  await agent.keyboard.press("Alt+1");
  assert.equal(await agent.inputValue("#reply"), (await agent.locator(".suggestion .text").first().textContent()).trim());
  await Promise.all([agent.close(), b1.close(), b2.close()]);
});

test("a reply lost in a reconnect comes back although the same text was sent before", async () => {
  const agent = await agentOf("p3");
  const b = await enterBuyer("p3", "r1");
  await say(b, "在吗");
  await agent.locator(".conv", { hasText: "r1" }).click();
  const stock = "亲，在的";
  await agent.fill("#reply", stock);
  await agent.press("#reply", "Enter");
  await b.locator(".msg[data-from=agent] .bubble", { hasText: stock }).waitFor();
  await agent.locator(".conv", { hasText: "r1" }).locator(".clock", { hasText: "已回复" }).waitFor();
  await say(b, "还在吗");
  await agent.locator(".msg[data-from=buyer] .bubble", { hasText: "还在吗" }).waitFor();
  // The next reply never leaves the page: its socket drops instead.
  await agent.evaluate(() => {
    const send = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data) {
      if (typeof data === "string" && data.includes('"type":"reply"')) {
        WebSocket.prototype.send = send;
        this.close();
        return;
      }
      return send.call(this, data);
    };
  });
  await agent.fill("#reply", stock);
  await agent.press("#reply", "Enter");
  await agent.locator("#status", { hasText: "在线" }).waitFor();
  await agent.locator(".msg.system.red", { hasText: "回复未发出" }).waitFor();
  assert.equal(await agent.inputValue("#reply"), stock, "the text is back in the box");
  assert.equal(await b.locator(".msg[data-from=agent] .bubble", { hasText: stock }).count(), 1, "the buyer got it once");
  await Promise.all([agent.close(), b.close()]);
});

test("the buyer closest to the deadline is on top, and the tab title counts the waiting buyers", async () => {
  const agent = await agentOf("p4");
  const base = await agent.title();
  const u1 = await enterBuyer("p4", "u1");
  await say(u1, "什么时候发货");
  await agent.locator(".conv", { hasText: "u1" }).locator(".clock.ok").waitFor();
  const u2 = await enterBuyer("p4", "u2");
  await agent.waitForTimeout(300);
  await say(u2, "有优惠券吗");
  await agent.locator(".conv", { hasText: "u2" }).locator(".clock.ok").waitFor();
  await agent.mouse.move(700, 400); // off the list
  await agent.waitForTimeout(300);
  assert.deepEqual(await shown(agent), ["u1", "u2"], "u1 has waited longest: on top");
  await agent.waitForFunction((b) => /^\(2\) 剩 \d+s · /.test(document.title) && document.title.endsWith(b), base);
  // Answering u1 takes them out of the waiting group.
  await agent.locator(".conv", { hasText: "u1" }).click();
  await agent.fill("#reply", "亲，今天下午就发货哦");
  await agent.press("#reply", "Enter");
  await agent.locator(".conv", { hasText: "u1" }).locator(".clock", { hasText: "已回复" }).waitFor();
  await agent.mouse.move(700, 400);
  await agent.waitForFunction(() => document.querySelector("#convs .conv .buyer")?.textContent.startsWith("u2"));
  await agent.waitForFunction(() => document.title.startsWith("(1) "));
  await Promise.all([agent.close(), u1.close(), u2.close()]);
});

test("F5 keeps drafts, unread markers and the selection", async () => {
  const agent = await agentOf("p5");
  const f1 = await enterBuyer("p5", "f1");
  await say(f1, "请问可以开发票吗");
  const f2 = await enterBuyer("p5", "f2");
  await say(f2, "我的快递到哪了");
  const f3 = await enterBuyer("p5", "f3");
  await say(f3, "有赠品吗");
  await agent.locator(".conv", { hasText: "f3" }).locator(".unread").waitFor();
  await agent.locator(".conv", { hasText: "f1" }).click();
  await agent.click("#reply");
  await agent.keyboard.type("亲，可以开发票的");
  await agent.locator(".conv", { hasText: "f2" }).click();
  await agent.click("#reply");
  await agent.keyboard.type("亲，您的快递已到杭州");
  await agent.reload();
  await agent.locator("#status", { hasText: "在线" }).waitFor();
  await agent.locator("#chat-title", { hasText: "f2" }).waitFor();
  assert.equal(await agent.inputValue("#reply"), "亲，您的快递已到杭州");
  assert.equal(await agent.locator(".conv", { hasText: "f3" }).locator(".unread").count(), 1, "f3 is still unread");
  await agent.locator(".conv", { hasText: "f1" }).click();
  assert.equal(await agent.inputValue("#reply"), "亲，可以开发票的");
  await Promise.all([agent.close(), f1.close(), f2.close(), f3.close()]);
});

test("picking a suggestion over a draft can be undone with Ctrl+Z", async () => {
  const agent = await agentOf("p6");
  const b = await enterBuyer("p6", "z1");
  await say(b, "请问什么时候发货");
  await agent.locator(".conv", { hasText: "z1" }).click();
  await agent.locator(".suggestion").first().waitFor();
  await agent.click("#reply");
  await agent.keyboard.type("亲，订单号123的");
  await agent.keyboard.press("Alt+1");
  const first = (await agent.locator(".suggestion .text").first().textContent()).trim();
  assert.equal(await agent.inputValue("#reply"), first);
  await agent.keyboard.press("Control+z");
  assert.equal(await agent.inputValue("#reply"), "亲，订单号123的", "Ctrl+Z brings the draft back");
  await Promise.all([agent.close(), b.close()]);
});

test("the clock is right at sign-in when the PC's clock is an hour ahead", async () => {
  const b = await enterBuyer("p7", "t1");
  await say(b, "请问什么时候发货"); // nobody online: the buyer waits
  await b.waitForTimeout(300);
  const agent = await agentOf("p7", {
    init: () => {
      const real = Date.now;
      Date.now = () => real() + 3600 * 1000;
    },
  });
  const clock = agent.locator(".conv", { hasText: "t1" }).locator(".clock");
  await clock.waitFor();
  await agent.waitForTimeout(600);
  assert.match(await clock.textContent(), /^剩 \d+s$/);
  await Promise.all([agent.close(), b.close()]);
});

test("an ended conversation cannot be answered, and gives way to the buyer's new one with the draft", async () => {
  const agent = await agentOf("p8");
  const other = await browser.newContext();
  const b = await enterBuyer("p8", "e1", other);
  await say(b, "请问还有货吗");
  await agent.locator(".conv", { hasText: "e1" }).click();
  await agent.locator(".suggestion").first().waitFor();
  await agent.fill("#reply", "亲，有货的");
  await other.close();
  const row = agent.locator(".conv", { hasText: "e1" });
  await row.locator(".muted", { hasText: /已离开|已结束/ }).waitFor();
  assert.equal(await agent.locator(".suggestion").count(), 0, "no suggestion for an ended conversation");
  await agent.locator("#suggestions .none", { hasText: "会话已结束" }).waitFor();
  assert.equal(await row.locator(".muted").textContent(), "（已结束）");
  assert.equal(await row.evaluate((n) => n.classList.contains("closed")), true);
  assert.equal(await agent.isDisabled("#send"), true);
  assert.equal(await agent.locator("#send-hint", { hasText: "会话已结束" }).count(), 1);
  await agent.press("#reply", "Enter");
  assert.equal(await agent.inputValue("#reply"), "亲，有货的", "nothing was sent");
  await shot(agent, "busy-closed");
  // The buyer is back: one row for them, the new one, with the draft.
  const again = await browser.newContext();
  const b2 = await enterBuyer("p8", "e1", again);
  await say(b2, "我又来了");
  await agent.locator(".conv:not(.closed)", { hasText: "e1" }).waitFor();
  await agent.mouse.move(700, 400);
  await agent.waitForFunction(() => document.querySelectorAll("#convs .conv").length === 1);
  assert.equal(await agent.inputValue("#reply"), "亲，有货的");
  assert.equal(await agent.isDisabled("#send"), false);
  await Promise.all([agent.close(), again.close()]);
});

test("at 1024×720 the politeness panel keeps to its height and the chat keeps room", async () => {
  const small = await browser.newContext({ viewport: { width: 1024, height: 720 }, locale: "zh-CN" });
  const agent = await agentOf("p9", { ctx: small });
  const b = await enterBuyer("p9", "l1");
  await say(b, "可以退货吗");
  await agent.locator(".conv", { hasText: "l1" }).click();
  const draft = "不能退。没办法。不知道。不行。".repeat(4);
  await agent.fill("#reply", draft);
  await agent.locator("#lint .issue").first().waitFor();
  const sizes = await agent.evaluate(() => ({
    lint: document.getElementById("lint").getBoundingClientRect().height,
    chat: document.getElementById("messages").getBoundingClientRect().height,
    scroll: document.getElementById("lint").scrollHeight,
  }));
  await shot(agent, "busy-lint-1024");
  assert.ok(sizes.lint <= 170, `the panel is ${sizes.lint}px high (${sizes.scroll}px of content)`);
  assert.ok(sizes.chat >= 120, `the chat keeps ${sizes.chat}px`);
  await Promise.all([small.close(), b.close()]);
});

test("an agent reading further up is told of new lines below instead of being pulled down", async () => {
  const agent = await agentOf("p10");
  const b = await enterBuyer("p10", "m1");
  for (let i = 1; i <= 12; i++) await say(b, `第 ${i} 个问题：这款衣服的尺码偏大还是偏小，洗了会不会缩水呢？`);
  await agent.locator(".conv", { hasText: "m1" }).click();
  await agent.locator("#messages .msg.buyer", { hasText: "第 12 个问题" }).waitFor();
  await agent.evaluate(() => (document.getElementById("messages").scrollTop = 0));
  assert.equal(await agent.locator("#new-below").isHidden(), true);
  await say(b, "还有，今天能发货吗？");
  await agent.locator("#messages .msg.buyer", { hasText: "今天能发货吗" }).waitFor({ state: "attached" });
  await agent.locator("#new-below").waitFor();
  assert.ok((await agent.evaluate(() => document.getElementById("messages").scrollTop)) < 10, "not pulled down");
  await shot(agent, "busy-new-below");
  await agent.click("#new-below");
  await agent.locator("#new-below").waitFor({ state: "hidden" });
  const gap = await agent.evaluate(() => {
    const m = document.getElementById("messages");
    return m.scrollHeight - m.scrollTop - m.clientHeight;
  });
  assert.ok(gap < 40, `at the bottom (${gap}px left)`);
  assert.equal(await agent.evaluate(() => document.activeElement.id), "reply");
  await b.close();
});

test("Alt+↑/↓ while an input method composes does not switch the conversation", async () => {
  const agent = await agentOf("p11");
  const b1 = await enterBuyer("p11", "n1");
  await say(b1, "在吗");
  const b2 = await enterBuyer("p11", "n2");
  await say(b2, "有货吗");
  await agent.locator(".conv", { hasText: "n2" }).waitFor();
  await agent.locator(".conv", { hasText: "n1" }).click();
  const title = () => agent.textContent("#chat-title");
  assert.equal(await title(), "买家 n1");
  const altDown = (isComposing) =>
    agent.evaluate((composing) => {
      const box = document.getElementById("reply");
      box.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowDown", altKey: true, isComposing: composing, bubbles: true, cancelable: true }));
    }, isComposing);
  await altDown(true);
  await agent.waitForTimeout(200);
  assert.equal(await title(), "买家 n1", "no switch mid-composition");
  const other = await agent.evaluate(() => [...document.querySelectorAll("#convs .conv .buyer")].map((b) => b.firstChild.textContent));
  await altDown(false);
  await agent.waitForFunction((t) => document.getElementById("chat-title").textContent !== t, "买家 n1");
  assert.ok(other.includes("n2"));
  await Promise.all([b1.close(), b2.close()]);
});

test("no page had a script error", () => {
  assert.deepEqual(pageErrors, []);
});
