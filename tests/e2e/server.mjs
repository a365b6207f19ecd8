// Starts the real `kefu serve` for the browser tests and the browser itself.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const ARTIFACTS = path.join(ROOT, "tests/e2e/artifacts");
export const CHROMIUM = process.env.KEFU_CHROMIUM || "/usr/bin/chromium";
export const KEFU_BIN = process.env.KEFU_BIN || path.join(ROOT, "target/debug/kefu");

/**
 * Runs target/debug/kefu serve on a loopback port the OS picks
 * (`--listen 127.0.0.1:0`; the address is read from the log), with a temp
 * data directory, the repo's phrase libraries (or `phrases`) and the given
 * flags. Resolves to {url, wsUrl, stop(), output()}.
 */
export async function startServer({ flags = [], config = null, phrases = path.join(ROOT, "phrases") } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), "kefu-e2e-"));
  const args = ["serve", "--listen", "127.0.0.1:0", "--data", path.join(dir, "data"), "--phrases", phrases];
  if (config) {
    const file = path.join(dir, "kefu.yaml");
    writeFileSync(file, config);
    args.push("--config", file);
  }
  args.push(...flags);
  mkdirSync(path.join(dir, "data"), { recursive: true });
  const bin = KEFU_BIN;
  const child = spawn(bin, args, {
    cwd: dir,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info", NO_COLOR: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`kefu serve did not say where it listens within 30 s:\n${log}`)), 30000);
    const onData = (chunk) => {
      log += chunk.toString();
      // Strip colours in case the log is coloured anyway.
      const m = /listening on http:\/\/(127\.0\.0\.1:\d+)/.exec(log.replace(/\x1b\[[0-9;]*m/g, ""));
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${bin} (run cargo build first): ${e.message}`));
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`kefu serve exited early (code ${code}, signal ${signal}):\n${log}`));
    });
  });
  return {
    url: `http://${addr}`,
    dir,
    output: () => log,
    /** Sends SIGHUP: the service reloads its phrases and its staff. */
    reload: () => child.kill("SIGHUP"),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 10000);
        const r = await exited;
        clearTimeout(t);
        rmSync(dir, { recursive: true, force: true });
        return r;
      }
      rmSync(dir, { recursive: true, force: true });
      return exited;
    },
  };
}

/** Debian's chromium, headless, with nothing reaching out to the internet. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"],
  });
}

/** A browser context as an agent's desk: 1280x800, zh-CN, Shanghai time, 10 s waits. */
export async function deskContext(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: "zh-CN", timezoneId: "Asia/Shanghai" });
  context.setDefaultTimeout(10000);
  return context;
}

/** Signs `page` in at the workbench under `base` as `agent` of `shop`; resolves once connected. */
export async function signInAgent(page, base, shop, agent, token) {
  await page.goto(`${base}/`);
  await page.fill("#in-shop", shop);
  await page.fill("#in-agent", agent);
  await page.fill("#in-token", token);
  await page.click("#signin button[type=submit]");
  await page.locator("#status.on").waitFor();
}

/** Opens the buyer page at `url` as `buyer` of `shop`; resolves once the bot has greeted them. */
export async function signInBuyer(page, url, shop, buyer) {
  await page.goto(url);
  await page.fill("#in-shop", shop);
  await page.fill("#in-buyer", buyer);
  await page.click("#signin button[type=submit]");
  await page.locator(".msg[data-from=bot]").first().waitFor();
}

/**
 * What a test's final check reads: every script error and console error of
 * the pages `watch` is given, named by page. `expected` matches console
 * errors the test causes on purpose (refused reconnects while it holds the
 * server down); `requests` adds failed requests.
 */
export function pageErrorWatcher({ expected = null, requests = false } = {}) {
  const errors = [];
  const watch = (page, name) => {
    page.on("pageerror", (e) => errors.push(`${name}: ${e.message}`));
    page.on("console", (m) => {
      if (m.type() === "error" && !(expected && expected.test(m.text()))) errors.push(`${name} console: ${m.text()}`);
    });
    if (requests) {
      page.on("requestfailed", (r) => errors.push(`${name} request failed: ${r.url()} ${r.failure()?.errorText}`));
    }
  };
  return { errors, watch };
}
