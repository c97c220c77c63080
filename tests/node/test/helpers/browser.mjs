// Headless Debian chromium for the page tests (status and chat), driven by
// playwright-core, which downloads no browser of its own.

import assert from 'node:assert/strict';
import fs from 'node:fs';

import { chromium } from 'playwright-core';

import { withTimeout } from './stomp.mjs';

export const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/** A browser for test `t`, closed (bounded) when it ends. Chromium is
 * required: without it the test FAILS, it is not skipped. */
export async function launchBrowser(t) {
  assert.ok(
    fs.existsSync(CHROMIUM_BIN),
    `chromium not found at ${CHROMIUM_BIN}: the page tests need Debian's chromium ` +
      '(apt-get install chromium; scripts/test.sh installs it) or CHROMIUM_BIN=/path/to/chromium',
  );
  const browser = await chromium.launch({
    executablePath: CHROMIUM_BIN,
    args: ['--headless', '--no-sandbox', '--disable-gpu'],
    timeout: 30_000,
  });
  t.after(() => withTimeout(browser.close(), 10_000, 'browser.close()').catch(() => {}));
  return browser;
}
