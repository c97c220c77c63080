// The chat page (GET /, src/chat.html) in headless Debian chromium, driven by
// playwright-core, against real servers: two people chatting, text that tries
// to be HTML, a server killed and restarted under the page, a phone-width
// screen, 5,000 messages of history scrolled back, and sign-in with a JWT.
// Chromium is required: without /usr/bin/chromium (or $CHROMIUM_BIN) the tests FAIL.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { launchBrowser } from './helpers/browser.mjs';
import { REPO_ROOT, startServer } from './helpers/server.mjs';
import { connectClient, deactivate, publishConfirmed, sleep, uniqueRoom } from './helpers/stomp.mjs';

const T = { timeout: 120_000 };
const SHOTS = path.join(REPO_ROOT, 'target', 'screenshots');
const WAIT_MS = 15_000;

/** A page in its own browser context (its own storage: another person). */
async function person(browser, viewport = { width: 1100, height: 800 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  const problems = [];
  page.on('console', (m) => {
    // A failed fetch or socket while the server is down is expected noise.
    if (m.type() === 'error' && !/ERR_CONNECTION_REFUSED|WebSocket connection|Failed to load resource/.test(m.text())) {
      problems.push(`console.error: ${m.text()}`);
    }
  });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  return { page, problems };
}

function shot(name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  return path.join(SHOTS, name);
}

async function join(page, base, { name, token, room }) {
  const resp = await page.goto(`${base}/`);
  assert.equal(resp.status(), 200);
  if (token) await page.fill('#token', token);
  else await page.fill('#name', name);
  await page.fill('#room', room);
  await page.press('#room', 'Enter');
  await page.waitForSelector('#state[data-state="online"]');
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

/** The messages the page shows: [seq, sender, body]. */
const shown = (page) =>
  page.$$eval('#messages li[data-seq]', (lis) =>
    lis.map((li) => [Number(li.dataset.seq), li.querySelector('.meta b').textContent, li.querySelector('.body').textContent]),
  );

async function waitShown(page, n) {
  await page.waitForFunction((want) => document.querySelectorAll('#messages li[data-seq]').length >= want, n, {
    timeout: WAIT_MS,
  });
  return shown(page);
}

function base(server) {
  return `http://${server.httpHost}:${server.httpPort}`;
}

// ---------------------------------------------------------------------------

test('chat page: two people in one room see each other in order', T, async (t) => {
  const server = await startServer({ shards: 2 }, t);
  const browser = await launchBrowser(t);
  const room = uniqueRoom('chat');
  const a = await person(browser);
  const b = await person(browser);
  await join(a.page, base(server), { name: 'alice', room });
  await join(b.page, base(server), { name: 'bob', room });
  await say(a.page, 'hi bob');
  await waitShown(b.page, 1);
  await say(b.page, 'hi alice');
  await waitShown(a.page, 2);
  await say(a.page, 'how are you?');
  const want = [
    [1, 'alice', 'hi bob'],
    [2, 'bob', 'hi alice'],
    [3, 'alice', 'how are you?'],
  ];
  assert.deepEqual(await waitShown(a.page, 3), want);
  assert.deepEqual(await waitShown(b.page, 3), want);
  assert.equal(await a.page.getAttribute('#messages li[data-seq="1"]', 'class'), 'mine');
  assert.match(await a.page.textContent('#room-title'), new RegExp(`#${room}`));
  // Presence: both are online in the room, and members.
  await a.page.waitForFunction(() => /2 online · 2 members/.test(document.getElementById('presence-summary').textContent), null, {
    timeout: 20_000,
  });
  await a.page.screenshot({ path: shot('chat-desktop.png') });
  assert.deepEqual(a.problems, []);
  assert.deepEqual(b.problems, []);
});

test('chat page: bodies and names that look like HTML stay text', T, async (t) => {
  const server = await startServer({}, t);
  const browser = await launchBrowser(t);
  const room = uniqueRoom('xss');
  const m = await person(browser);
  await join(m.page, base(server), { name: '<i>mallory</i>', room });
  const evil = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">';
  await say(m.page, evil);
  const got = await waitShown(m.page, 1);
  assert.deepEqual(got, [[1, '<i>mallory</i>', evil]]);
  assert.equal(await m.page.$$eval('#messages script, #messages img, #messages i', (els) => els.length), 0);
  await sleep(300);
  assert.equal(await m.page.evaluate(() => window.__pwned), undefined);
  assert.equal(await m.page.textContent('#me'), '<i>mallory</i>');
  assert.deepEqual(m.problems, []);
});

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

test('chat page: reconnects after the server is killed and restarted, nothing missed or doubled', T, async (t) => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'stampede-chat-'));
  t.after(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  const listen = `127.0.0.1:${await freePort()}`;
  let server = await startServer({ listen, dataDir, shards: 2 });
  t.after(() => server.stop());
  const browser = await launchBrowser(t);
  const room = uniqueRoom('restart');
  const { page, problems } = await person(browser);
  await join(page, base(server), { name: 'carol', room });
  await say(page, 'before the crash');
  await waitShown(page, 1);

  server.child.kill('SIGKILL');
  await server.stop();
  await page.waitForSelector('#state[data-state="reconnecting"]');
  assert.equal(await page.isDisabled('#send'), true, 'no sending while disconnected');
  await sleep(2500); // the page backs off meanwhile
  server = await startServer({ listen, dataDir, shards: 2 });
  // Sent while the page is away: it must catch up on them by itself.
  const dave = await connectClient(null, server.wsUrl, { login: 'dave' });
  t.after(() => deactivate(dave.client));
  for (let i = 1; i <= 5; i++) {
    await publishConfirmed(dave.client, { destination: `/topic/${room}`, body: `missed ${i}` });
  }
  await page.waitForSelector('#state[data-state="online"]', { timeout: 40_000 });
  await say(page, 'after the restart');
  // After a crash a room's seqs continue past its reservation (README:
  // --seq-reserve), so compare what was said, and that seqs only grow.
  const want = [
    ['carol', 'before the crash'],
    ['dave', 'missed 1'],
    ['dave', 'missed 2'],
    ['dave', 'missed 3'],
    ['dave', 'missed 4'],
    ['dave', 'missed 5'],
    ['carol', 'after the restart'],
  ];
  const said = (rows) => rows.map(([, who, body]) => [who, body]);
  assert.deepEqual(said(await waitShown(page, 7)), want);
  await sleep(500);
  const rows = await shown(page);
  assert.deepEqual(said(rows), want, 'each message exactly once');
  assert.ok(rows.every((r, i) => i === 0 || r[0] > rows[i - 1][0]), `seqs grow: ${rows.map((r) => r[0])}`);
  assert.deepEqual(problems, []);
});

test('chat page: a room list with unread counts', T, async (t) => {
  const server = await startServer({ shards: 2 }, t);
  const browser = await launchBrowser(t);
  const [home, other] = [uniqueRoom('home'), uniqueRoom('other')];
  const { page, problems } = await person(browser);
  await join(page, base(server), { name: 'judy', room: home });
  // Join a second room from the list's form, then go back to the first.
  await page.fill('#new-room', other);
  await page.press('#new-room', 'Enter');
  await page.waitForFunction((r) => document.getElementById('room-title').textContent === `#${r}`, other);
  await say(page, 'first in other');
  await waitShown(page, 1);
  await page.click(`#room-list button:has-text("#${home}")`);
  assert.deepEqual(await shown(page), []);
  const bob = await connectClient(null, server.wsUrl, { login: 'bob' });
  t.after(() => deactivate(bob.client));
  for (let i = 1; i <= 3; i++) await publishConfirmed(bob.client, { destination: `/topic/${other}`, body: `unread ${i}` });
  const badge = `#room-list button:has-text("#${other}") .badge`;
  await page.locator(badge).filter({ hasText: /^3$/ }).waitFor();
  assert.equal(await page.textContent(`#room-list button:has-text("#${home}") .badge`), '');
  await page.screenshot({ path: shot('chat-unread.png') });
  await page.click(`#room-list button:has-text("#${other}")`);
  const rows = await waitShown(page, 4);
  assert.deepEqual(rows.map((r) => r[2]), ['first in other', 'unread 1', 'unread 2', 'unread 3']);
  assert.equal(await page.textContent(badge), '', 'read once shown');
  // A new visit in the same browser lists both rooms, nothing unread.
  await join(page, base(server), { name: 'judy', room: home });
  await page.waitForSelector(`#room-list button:has-text("#${other}")`);
  assert.equal(await page.textContent(badge), '');
  assert.deepEqual(problems, []);
});

test('chat page: a room the server refuses is dropped, not retried in a loop', T, async (t) => {
  const admin = 'chat-page-admin-token-0123456789';
  const server = await startServer({ args: ['--join', 'invite', '--admin-token', admin] }, t);
  const [club, closed] = [uniqueRoom('club'), uniqueRoom('closed')];
  const put = await fetch(`${base(server)}/api/rooms/${club}/members/kim`, {
    method: 'PUT',
    headers: { Authorization: `Bearer ${admin}` },
  });
  assert.equal(put.status, 200);
  const browser = await launchBrowser(t);
  const { page, problems } = await person(browser);
  let sockets = 0;
  page.on('websocket', () => { sockets += 1; });
  await join(page, base(server), { name: 'kim', room: club });
  await page.fill('#new-room', closed);
  await page.press('#new-room', 'Enter');
  await page.waitForFunction(() => /not a member/.test(document.getElementById('banner').textContent));
  await sleep(4000);
  assert.ok(sockets <= 3, `reconnected ${sockets - 1} times in 4 s`);
  await page.waitForSelector('#state[data-state="online"]');
  assert.equal(await page.textContent('#room-title'), `#${club}`, 'back in the room she may be in');
  assert.equal(await page.locator(`#room-list button:has-text("#${closed}")`).count(), 0);
  assert.deepEqual(problems, []);
});

test('chat page: usable at phone width', T, async (t) => {
  const server = await startServer({}, t);
  const browser = await launchBrowser(t);
  const room = uniqueRoom('phone');
  const { page, problems } = await person(browser, { width: 390, height: 844 });
  await page.goto(`${base(server)}/`);
  assert.equal(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), true, 'login fits');
  await join(page, base(server), { name: 'erin', room });
  for (const text of ['a fairly long message that has to wrap on a narrow screen without any horizontal scrolling at all', 'short']) {
    await say(page, text);
  }
  await waitShown(page, 2);
  assert.equal(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), true, 'no horizontal scroll');
  const box = await page.locator('#composer').boundingBox();
  assert.ok(box && box.y + box.height <= 844 && box.width <= 390, `composer on screen: ${JSON.stringify(box)}`);
  // The room list slides in from the menu button, and a tap on a room closes it.
  await page.click('#toggle-rooms');
  await page.waitForFunction(() => document.getElementById('app').classList.contains('rooms-open'));
  await sleep(400); // the slide-in
  await page.screenshot({ path: shot('chat-phone-rooms.png') });
  await page.click(`#room-list button:has-text("#${room}")`);
  assert.equal(await page.evaluate(() => document.getElementById('app').classList.contains('rooms-open')), false);
  await sleep(400); // the slide-out
  await page.screenshot({ path: shot('chat-phone.png') });
  assert.deepEqual(problems, []);
});

test('chat page: 5,000 messages of history scroll back page by page', T, async (t) => {
  const server = await startServer({ shards: 2, args: ['--max-publish-rate', '0'] }, t);
  const room = uniqueRoom('long');
  const n = 5000;
  const pub = await connectClient(null, server.wsUrl, { login: 'frank' });
  t.after(() => deactivate(pub.client));
  for (let i = 1; i < n; i++) pub.client.publish({ destination: `/topic/${room}`, body: `message ${i}` });
  await publishConfirmed(pub.client, { destination: `/topic/${room}`, body: `message ${n}` });

  const browser = await launchBrowser(t);
  const { page, problems } = await person(browser, { width: 1000, height: 700 });
  const pages = [];
  page.on('request', (r) => {
    if (r.url().includes(`/api/rooms/${room}/messages`)) pages.push(r.url());
  });
  await join(page, base(server), { name: 'gina', room });
  const first = await waitShown(page, 50);
  assert.deepEqual(first.at(-1), [n, 'frank', `message ${n}`], 'the newest is at the bottom');
  const started = Date.now();
  let jumps = 0;
  for (let round = 0; round < 400; round++) {
    if (await page.$('#messages li.start')) break;
    // Scroll to the top; the page fetches the previous page and keeps the
    // message that was at the top where it was.
    const before = await page.evaluate(() => {
      const ol = document.getElementById('messages');
      ol.scrollTop = 0;
      const li = ol.querySelector('li[data-seq]');
      return { seq: li.dataset.seq, top: li.getBoundingClientRect().top, count: ol.children.length };
    });
    await page.waitForFunction((c) => document.getElementById('messages').children.length > c, before.count, { timeout: WAIT_MS });
    const after = await page.evaluate((seq) => document.querySelector(`#messages li[data-seq="${seq}"]`).getBoundingClientRect().top, before.seq);
    if (Math.abs(after - before.top) > 2) jumps++;
  }
  const took = Date.now() - started;
  const all = await shown(page);
  assert.equal(all.length, n, 'every message once');
  assert.deepEqual(all.map((m) => m[0]), Array.from({ length: n }, (_, i) => i + 1), 'in order');
  assert.equal(all[0][2], 'message 1');
  assert.equal(jumps, 0, 'prepending a page never moves what the reader looks at');
  assert.ok(pages.length >= (n - 50) / 50 && pages.length <= (n - 50) / 50 + 5, `paged by 50 through the API: ${pages.length} requests`);
  assert.ok(pages.every((u) => /before=\d+&limit=50/.test(u)), pages[0]);
  assert.ok(took < 60_000, `scrolling back through ${n} took ${took} ms`);
  console.log(`# history: ${n} messages scrolled back in ${took} ms over ${pages.length} pages`);
  await page.screenshot({ path: shot('chat-history-start.png') });
  assert.deepEqual(problems, []);
});

function jwt(secret, sub) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600 });
  const sig = crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

test('chat page: with --auth jwt a token from the URL fragment signs in', T, async (t) => {
  const secret = 'a-chat-page-test-secret-of-32-bytes-or-more';
  const server = await startServer({ args: ['--auth', 'jwt'], env: { STAMPEDE_JWT_SECRET: secret } }, t);
  const browser = await launchBrowser(t);
  const room = uniqueRoom('jwt');
  const { page, problems } = await person(browser);
  await page.goto(`${base(server)}/#room=${room}&token=${jwt(secret, 'heidi')}`);
  assert.equal(await page.isVisible('#name'), false, 'no name field: the token says who');
  assert.equal(new URL(page.url()).hash, '', 'the token is taken out of the address bar');
  await page.press('#room', 'Enter');
  await page.waitForSelector('#state[data-state="online"]');
  assert.equal(await page.textContent('#me'), 'heidi');
  await say(page, 'signed in');
  assert.deepEqual(await waitShown(page, 1), [[1, 'heidi', 'signed in']]);
  // A bad token is refused with a reason, back at the sign-in.
  const other = await person(browser);
  await other.page.goto(`${base(server)}/#room=${room}&token=${jwt('another-secret-that-is-32-bytes-long!!', 'ivan')}`);
  await other.page.press('#room', 'Enter');
  await other.page.waitForSelector('#login:not([hidden])');
  await other.page.waitForFunction(() => /Signed out/.test(document.getElementById('login-error').textContent));
  assert.deepEqual(problems, []);
});
