// The live status page (GET /status, src/status.html) in headless Debian chromium,
// driven by playwright-core: against a real server under a @stomp/stompjs load, and
// against a scripted fake /metrics (test/fixtures/fake-metrics.mjs) for what a real
// server cannot be made to show on demand (exact values, "store off", unreachable).
// Chromium is required: without /usr/bin/chromium (or $CHROMIUM_BIN) the tests FAIL.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { startFakeStatusServer } from './fixtures/fake-metrics.mjs';
import { launchBrowser } from './helpers/browser.mjs';
import { REPO_ROOT } from './helpers/server.mjs';
import { deactivate, harness, sleep, subscribeLive, uniqueRoom, withTimeout } from './helpers/stomp.mjs';

const T = { timeout: 45_000 };
const SHOTS = path.join(REPO_ROOT, 'target', 'screenshots');
const WAIT_MS = 10_000; // any single wait on the page

/** A page whose console errors and uncaught exceptions are collected. */
async function openPage(browser, viewport = { width: 1280, height: 900 }) {
  const page = await browser.newPage({ viewport });
  page.setDefaultTimeout(WAIT_MS);
  const problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console.error: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  return { page, problems };
}

async function gotoStatus(page, url) {
  const resp = await page.goto(url, { timeout: WAIT_MS });
  assert.ok(resp, `no response for ${url}`);
  assert.equal(resp.status(), 200, `GET ${url}`);
  assert.match(resp.headers()['content-type'] ?? '', /^text\/html/, 'content-type of /status');
}

const text = (page, sel) => page.textContent(sel);
const statusSeries = (page) =>
  page.evaluate(() => ({
    t: [...window.__status.t],
    series: JSON.parse(JSON.stringify(window.__status.series)),
    polls: window.__status.polls,
  }));
const positives = (arr = []) => arr.filter((v) => typeof v === 'number' && v > 0).length;

function screenshotPath(name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  return path.join(SHOTS, name);
}

/** Wait until the page has finished `n` more polls. */
async function morePolls(page, n) {
  const from = await page.evaluate(() => window.__status.polls);
  await page.waitForFunction((want) => window.__status.polls >= want, from + n, { timeout: WAIT_MS });
}

// ---------------------------------------------------------------------------

test('status page: live charts against a real server under stompjs load', T, async (t) => {
  const h = await harness(t);
  const browser = await launchBrowser(t);
  const { page, problems } = await openPage(browser);
  const base = `http://${h.server.httpHost}:${h.server.httpPort}`;
  await gotoStatus(page, `${base}/status`);

  // load: N clients in one room, each publishing every 25 ms for LOAD_MS
  const N = 3;
  const LOAD_MS = 8000;
  const dest = `/topic/${uniqueRoom('status')}`;
  const clients = [];
  let received = 0;
  for (let i = 0; i < N; i++) {
    const c = await h.client({ login: `load${i}` });
    await subscribeLive(c.client, dest, () => {
      received += 1;
    });
    clients.push(c);
  }
  let sent = 0;
  const loadEnd = Date.now() + LOAD_MS;
  const load = Promise.all(
    clients.map(async (c, i) => {
      while (Date.now() < loadEnd && c.client.connected) {
        c.client.publish({ destination: dest, body: `msg ${i} ${sent}` });
        sent += 1;
        await sleep(25);
      }
    }),
  );

  try {
    // connections: the N stomp clients at least
    await page.waitForFunction(
      (n) => Number(document.getElementById('total-connections').textContent) >= n,
      N,
      { timeout: WAIT_MS },
    );
    const totalText = await text(page, '#total-connections');
    assert.match(totalText, /^\d+$/, '#total-connections is an integer');
    assert.ok(Number(totalText) >= N, `total connections ${totalText} >= ${N}`);

    // deliveries/s gets a non-zero point, and keeps moving
    await page.waitForFunction(
      () => (window.__status.series.deliveries || []).some((v) => v > 0),
      null,
      { timeout: WAIT_MS },
    );
    const a = await statusSeries(page);
    await sleep(2500);
    const b = await statusSeries(page);
    assert.ok(b.t.at(-1) > a.t.at(-1), 'the page kept polling');
    assert.notDeepEqual(b.series.deliveries, a.series.deliveries, 'deliveries/s series changed');
    assert.ok(
      positives(b.series.deliveries) > positives(a.series.deliveries),
      `more non-zero deliveries/s points after 2.5 s: ${JSON.stringify(a.series.deliveries)} -> ${JSON.stringify(b.series.deliveries)}`,
    );
    assert.ok(positives(b.series.framesIn) > 0, 'frames in/s > 0 under load');
    assert.ok(positives(b.series.published) > 0, 'published/s > 0 under load');
    assert.ok(positives(b.series.framesOut) > 0, 'frames out/s > 0 under load');
    const shardKeys = Object.keys(b.series).filter((k) => k.startsWith('shard:'));
    assert.ok(shardKeys.length >= 1, `one connections series per shard: ${JSON.stringify(Object.keys(b.series))}`);

    // the chart's own data, as drawn
    const drawn = JSON.parse(await page.getAttribute('#chart-deliveries', 'data-points'));
    assert.ok(positives(drawn.deliveries) > 0, 'chart-deliveries data-points has a non-zero point');
    const conns = JSON.parse(await page.getAttribute('#chart-connections', 'data-points'));
    assert.deepEqual(Object.keys(conns).sort(), shardKeys.sort(), 'connections chart draws every shard');

    // the rest of the page, from the same /metrics
    assert.equal(await text(page, '#ready'), 'ready');
    assert.equal(await text(page, '#conn-state'), 'live');
    assert.notEqual(await text(page, '#build-version'), '?', 'build version from stampede_build_info');
    assert.notEqual(await text(page, '#build-commit'), '?', 'build commit from stampede_build_info');
    assert.ok(Number(await text(page, '#sessions')) >= N, 'sessions >= N');
    assert.ok(Number(await text(page, '#subscriptions')) >= N, 'subscriptions >= N');
    assert.match(await text(page, '#rss'), /^\d+(\.\d)? (KiB|MiB|GiB)$/, 'RSS');
    assert.match(await text(page, '#open-fds'), /^\d+( \/ \d+)?$/, 'open fds');
    assert.notEqual(await text(page, '#val-queueDepth'), 'store off', 'the store is on by default');
    assert.ok(
      positives(b.series.commitAvg) > 0,
      `commit latency average from stampede_writer_commit_seconds: ${JSON.stringify(b.series.commitAvg)}`,
    );

    assert.equal(await text(page, '#val-errors'), '0', 'no ERROR frames: errors/s is 0 (family without series)');

    // screenshots while the load still runs
    await page.screenshot({ path: screenshotPath('status.png'), fullPage: true });
    await page.setViewportSize({ width: 390, height: 844 });
    await morePolls(page, 1);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(overflow <= 390, `no horizontal scrolling at phone width (scrollWidth ${overflow})`);
    await page.screenshot({ path: screenshotPath('status-phone.png'), fullPage: true });

    await withTimeout(load, LOAD_MS + 5000, 'load finished');
    assert.ok(received > 0 && sent > 0, `load ran: sent ${sent}, received ${received}`);
    for (const c of clients) assert.deepEqual(c.errors.map((e) => e.headers.message), [], 'no STOMP errors');

    assert.deepEqual(problems, [], 'no console errors or page errors');
  } finally {
    await withTimeout(load, LOAD_MS + 5000, 'load finished').catch(() => {});
  }

  // server gone: the page says so and keeps polling (the browser logs the refused
  // fetches as console errors, which is expected from here on)
  await Promise.all(clients.map((c) => deactivate(c.client)));
  await h.server.stop();
  await page.waitForFunction(
    () => document.getElementById('conn-state').textContent === 'cannot reach server',
    null,
    { timeout: WAIT_MS },
  );
  assert.ok(await page.isVisible('#banner'), 'the "cannot reach server" banner is shown');
  await morePolls(page, 2);
  assert.ok(
    problems.every((p) => /Failed to load resource|ERR_CONNECTION_REFUSED/.test(p)),
    `only failed fetches after the server stopped: ${JSON.stringify(problems)}`,
  );
});

test('status page: parser, rates, p99, store off and unreachable (fake /metrics)', T, async (t) => {
  const fake = await startFakeStatusServer();
  t.after(() => fake.close());
  const browser = await launchBrowser(t);
  const { page, problems } = await openPage(browser);
  await gotoStatus(page, `${fake.url}/status`);
  await page.waitForFunction(() => window.__status.t.length >= 3, null, { timeout: WAIT_MS });

  // the parser, on the text format's corners
  const parsed = await page.evaluate(() => {
    const ix = window.__status.parseMetrics(
      [
        '# HELP a_total with "quotes" \\ and more',
        '# TYPE a_total counter',
        'a_total{path="x\\\\y\\"z\\n",m="2",} 1.5e3 1700000000000',
        '  b NaN',
        'c{} -Inf',
        'd_bucket{le="+Inf"} +Inf',
        'e{a="}{,=\\""} 7',
        'not a sample line',
        '',
        'f 0x10',
      ].join('\r\n'),
    );
    return [...ix.entries()].map(([k, v]) => [k, v.map((s) => [s.labels, String(s.value)])]);
  });
  assert.deepEqual(parsed, [
    ['a_total', [[{ path: 'x\\y"z\n', m: '2' }, '1500']]],
    ['b', [[{}, 'NaN']]],
    ['c', [[{}, '-Infinity']]],
    ['d_bucket', [[{ le: '+Inf' }, 'Infinity']]],
    ['e', [[{ a: '}{,="' }, '7']]],
  ]);

  // values from the fake: 2 shards with 3 + 4 ws connections; per scrape 50
  // deliveries, 2 errors, 1 refusal; commits 99 x 2 ms + 1 x 40 ms
  assert.equal(await text(page, '#total-connections'), '7');
  assert.equal(await text(page, '#sessions'), '7');
  assert.equal(await text(page, '#subscriptions'), '10');
  assert.equal(await text(page, '#shards'), '2');
  assert.equal(await text(page, '#rss'), '12.5 MiB');
  assert.equal(await text(page, '#open-fds'), '42 / 1024');
  assert.equal(await text(page, '#ready'), 'ready');
  assert.equal(await text(page, '#build-version'), fake.state.version, 'escaped label value, shown as text');
  assert.equal(await text(page, '#build-commit'), 'deadbeef');
  assert.equal(await text(page, '#val-commitAvg'), '2.38 ms');
  assert.equal(await text(page, '#val-commitP99'), '2.50 ms');
  assert.match(await text(page, '#val-queueDepth'), /^\d+$/);
  const s = await statusSeries(page);
  const last = (k) => s.series[k].at(-1);
  assert.equal(s.series.deliveries[0], null, 'no rate before two scrapes');
  // rates: per-scrape increments over the browser-measured interval (~1 s)
  const perScrape = { deliveries: 50, framesIn: 20, published: 10, framesOut: 60, errors: 2, refused: 1 };
  for (const [k, per] of Object.entries(perScrape)) {
    assert.ok(last(k) > per * 0.5 && last(k) < per * 2, `${k}/s ~ ${per}: ${last(k)}`);
  }
  assert.deepEqual([last('shard:0'), last('shard:1'), last('total')], [3, 4, 7]);
  assert.deepEqual(problems, [], 'no console errors or page errors');

  // --persist false: the writer families disappear
  fake.state.persist = false;
  await page.waitForFunction(() => window.__status.storeOff === true, null, { timeout: WAIT_MS });
  assert.equal(await text(page, '#val-queueDepth'), 'store off');
  assert.equal(await text(page, '#val-commitAvg'), 'store off');
  assert.equal(await text(page, '#val-commitP99'), 'store off');
  await page.setViewportSize({ width: 390, height: 844 });
  await morePolls(page, 1);
  await page.screenshot({ path: screenshotPath('status-fake-store-off-phone.png'), fullPage: true });
  assert.deepEqual(problems, [], 'no console errors or page errors');

  // unreachable: a visible state, polling goes on, and recovers
  fake.setDown(true);
  await page.waitForFunction(
    () => document.getElementById('conn-state').textContent === 'cannot reach server',
    null,
    { timeout: WAIT_MS },
  );
  assert.ok(await page.isVisible('#banner'));
  assert.match(await text(page, '#banner'), /cannot reach server \(HTTP 503\)/);
  await morePolls(page, 2);
  fake.setDown(false);
  await page.waitForFunction(() => document.getElementById('conn-state').textContent === 'live', null, {
    timeout: WAIT_MS,
  });
  assert.ok(!(await page.isVisible('#banner')), 'banner hidden again');
  assert.ok(
    problems.every((p) => /Failed to load resource.*503/.test(p)),
    `only the failed fetches while down: ${JSON.stringify(problems)}`,
  );
});
