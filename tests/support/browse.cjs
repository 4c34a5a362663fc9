// Drives one headless Chromium page for tests/support/browser.py: one JSON command per stdin
// line, one JSON answer per stdout line. Run as `node browse.cjs PLAYWRIGHT_CORE_DIR CHROMIUM`.
'use strict';
const readline = require('readline');
const { chromium } = require(process.argv[2]);

// Without these, Chromium tries to reach Google's services at start; this network has none.
const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

async function main() {
  const browser = await chromium.launch({ executablePath: process.argv[3], args: FLAGS });
  const context = await browser.newContext();
  const page = await context.newPage();
  const requests = [];
  const errors = [];
  page.on('request', (r) =>
    requests.push({ method: r.method(), url: r.url(), type: r.resourceType(), body: r.postData() }));
  page.on('pageerror', (e) => errors.push(String(e)));
  const commands = {
    // Returns once the page has loaded and the snippet has run.
    goto: async (c) => {
      await page.goto(c.url, { waitUntil: 'load' });
      await page.waitForFunction(() => window.leadstream && window.leadstream.loaded);
      return null;
    },
    evaluate: (c) => page.evaluate(c.js),
    cookies: () => context.cookies(),
    requests: () => requests,
    errors: () => errors,
  };
  const say = (answer) => process.stdout.write(JSON.stringify(answer) + '\n');
  say({ ready: true });
  for await (const line of readline.createInterface({ input: process.stdin })) {
    const command = JSON.parse(line);
    if (command.do === 'quit') break;
    try {
      say({ value: await commands[command.do](command) });
    } catch (e) {
      say({ error: String(e) });
    }
  }
  await browser.close();
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ error: String(e) }) + '\n');
  process.exit(1);
});
