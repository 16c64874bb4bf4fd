// Headless Chromium driven by pytest through JSON lines on stdin/stdout (playwright-core, the system
// /usr/bin/chromium; Playwright never downloads a browser here).
//
//   node roomline_harness/web/driver.js <user-data-dir>
//   stdin : {"id": 1, "op": "goto", "url": "..."}           one command per line
//   stdout: {"id": 1, "ok": true, "result": ...}           or {"id": 1, "ok": false, "error": "..."}
//
// Ops: goto{url}, fill{selector,value}, click{selector}, eval{expression} (awaited in the page, result
// must be JSON-serialisable), wait{expression,ms} (until truthy), screenshot{path}, console{},
// close{}. Console messages and page errors are collected for the test's failure reports.
'use strict';

const readline = require('readline');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.ROOMLINE_CHROMIUM || '/usr/bin/chromium';
const ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
];

const consoleLines = [];
let context = null;
let page = null;

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function start(userDataDir) {
  // A persistent context is how Playwright takes --user-data-dir; headless comes from ARGS so the
  // flags are exactly the ones listed above.
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: false,
    args: ARGS,
    permissions: ['microphone', 'camera'],
    viewport: { width: 1200, height: 800 },
  });
  page = context.pages()[0] || (await context.newPage());
  page.on('console', (msg) => consoleLines.push(`[${msg.type()}] ${msg.text()}`));
  page.on('pageerror', (err) => consoleLines.push(`[pageerror] ${err.message}`));
}

async function run(cmd) {
  switch (cmd.op) {
    case 'goto':
      return (await page.goto(cmd.url, { waitUntil: 'load', timeout: 15000 })).status();
    case 'fill':
      return page.fill(cmd.selector, cmd.value, { timeout: 5000 });
    case 'click':
      return page.click(cmd.selector, { timeout: 5000 });
    case 'eval':
      // The expression is wrapped in an async function so it may use await.
      return page.evaluate(`(async () => (${cmd.expression}))()`);
    case 'wait': {
      // Polls with evaluate (CDP Runtime.evaluate) rather than waitForFunction, whose string predicates
      // run through eval() inside the page and are refused by the page's Content-Security-Policy.
      const deadline = Date.now() + (cmd.ms || 15000);
      let last;
      for (;;) {
        last = await page.evaluate(`(async () => (${cmd.expression}))()`);
        if (last) return last;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${cmd.expression} (last value ${JSON.stringify(last)})`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    case 'screenshot':
      await page.screenshot({ path: cmd.path, fullPage: true });
      return cmd.path;
    case 'console':
      return consoleLines.slice();
    case 'close':
      await context.close();
      return null;
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

async function main() {
  await start(process.argv[2]);
  reply({ id: 0, ok: true, result: 'ready' });
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (!line.trim()) continue;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (err) {
      reply({ id: null, ok: false, error: `bad command: ${err.message}` });
      continue;
    }
    try {
      const result = await run(cmd);
      reply({ id: cmd.id, ok: true, result: result === undefined ? null : result });
    } catch (err) {
      reply({ id: cmd.id, ok: false, error: String(err && err.message ? err.message : err) });
    }
    if (cmd.op === 'close') break;
  }
  if (context) await context.close().catch(() => {});
  process.exit(0);
}

main().catch((err) => {
  reply({ id: 0, ok: false, error: String(err && err.stack ? err.stack : err) });
  process.exit(1);
});
