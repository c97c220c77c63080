// Interop tests: @stomp/stompjs (over the `ws` WebSocket) against a stampede server.
// Contract: /tmp/contract.md (copied into the project as the black-box contract).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import WebSocket from 'ws';

import {
  deferred,
  harness,
  parseFrame,
  publishConfirmed,
  sleep,
  subscribeLive,
  uniqueRoom,
  waitFor,
  withTimeout,
} from './helpers/stomp.mjs';

const T = { timeout: 30_000 };

/** Raw MESSAGE frames (parsed from the WS messages the client received) with their WS opcode. */
function rawMessages(state) {
  const out = [];
  for (const m of state.wsMessages) {
    const f = parseFrame(m.data);
    if (f && f.command === 'MESSAGE') out.push({ ...f, isBinary: m.isBinary });
  }
  return out;
}

function rawMessageById(state, messageId) {
  return rawMessages(state).find((f) => f.headers['message-id'] === messageId);
}

function assertNoErrors(...states) {
  for (const s of states) {
    assert.deepEqual(
      s.errors.map((e) => `${e.headers.message} ${e.body}`),
      [],
      `unexpected STOMP ERROR frames (client ${s.login ?? 'anonymous'})`,
    );
    assert.deepEqual(s.closes, [], `unexpected WebSocket close (client ${s.login ?? 'anonymous'})`);
    assert.deepEqual(
      s.unhandled.map((f) => `${f.command} ${JSON.stringify(f.headers)}`),
      [],
      `unexpected unhandled frames (client ${s.login ?? 'anonymous'})`,
    );
  }
}

async function waitStompError(state, ms = 5000) {
  await waitFor(() => state.errors.length > 0, ms, 'STOMP ERROR frame');
  return state.errors[0];
}

// ---------------------------------------------------------------------------
// 1. text round trip

test('text body round trip between two clients with MESSAGE headers', T, async (t) => {
  const h = await harness(t);
  const room = uniqueRoom('text');
  const dest = `/topic/${room}`;

  const alice = await h.client({ login: 'alice' });
  const bob = await h.client({ login: 'bob' });

  // handshake details
  assert.equal(bob.ws.protocol, 'v12.stomp', 'server must echo the highest offered subprotocol');
  const ch = bob.connected.headers;
  assert.equal(ch.version, '1.2');
  assert.match(ch.server ?? '', /^stampede\/\S+/);
  assert.match(ch.session ?? '', /^\d+-\d+$/);
  assert.equal(ch['heart-beat'], '10000,10000', 'CONNECTED heart-beat = server defaults');

  const got = [];
  await subscribeLive(bob.client, dest, (m) => got.push(m), { id: 'bob-sub-1' });

  const body = 'héllo wörld ✓ — stampede 🚀';
  const before = Date.now();
  await publishConfirmed(alice.client, {
    destination: dest,
    body,
    headers: {
      'x-custom': 'custom value',
      // (a backslash followed by c, n or r would not survive stompjs' own unescaping,
      // which handles "\c" before "\\"; the value avoids that client-side bug)
      'x-escaped': 'a:b\\z\nd',
      'content-type': 'text/plain;charset=utf-8',
      // server-owned names: the server must set these itself
      'x-sender': 'mallory',
      'x-seq': '999',
    },
  });
  await waitFor(() => got.length >= 1, 5000, 'bob receives the message');
  const after = Date.now();
  const m = got[0];

  assert.equal(m.command, 'MESSAGE');
  assert.equal(m.body, body);
  assert.equal(m.headers.destination, dest);
  assert.equal(m.headers.subscription, 'bob-sub-1');
  assert.equal(m.headers['message-id'], `${room}:1`);
  assert.equal(m.headers['x-seq'], '1');
  assert.equal(m.headers['x-sender'], 'alice');
  assert.match(m.headers['x-timestamp'] ?? '', /^\d+$/);
  const ts = Number(m.headers['x-timestamp']);
  assert.ok(ts >= before - 2000 && ts <= after + 2000, `x-timestamp ${ts} not in [${before}, ${after}]`);
  assert.equal(m.headers['x-custom'], 'custom value');
  assert.equal(m.headers['x-escaped'], 'a:b\\z\nd', '1.2 header escaping round trip');
  assert.equal(m.headers['content-type'], 'text/plain;charset=utf-8');
  assert.equal(m.headers['content-length'], String(Buffer.byteLength(body, 'utf8')));
  assert.equal(m.headers.ack, undefined, 'no ack header in auto mode');
  assert.equal(m.headers.receipt, undefined, 'receipt header must not be forwarded');

  // Raw view: one frame per WS message, text opcode for UTF-8, single copy of server headers.
  const raw = rawMessageById(bob, `${room}:1`);
  assert.ok(raw, 'raw MESSAGE frame seen on the socket');
  assert.equal(raw.isBinary, false, 'valid UTF-8 frame must be sent as a text WS message');
  for (const name of ['x-sender', 'x-seq', 'x-timestamp', 'destination', 'subscription', 'message-id', 'content-length']) {
    assert.equal(
      raw.headerList.filter(([k]) => k === name).length,
      1,
      `exactly one ${name} header in ${JSON.stringify(raw.headerList)}`,
    );
  }

  // anonymous sender + per-room sequence continues
  const anon = await h.client({});
  await publishConfirmed(anon.client, { destination: dest, body: 'from anon' });
  await waitFor(() => got.length >= 2, 5000, 'bob receives the anonymous message');
  assert.equal(got[1].body, 'from anon');
  assert.equal(got[1].headers['x-sender'], 'anonymous');
  assert.equal(got[1].headers['x-seq'], '2');
  assert.equal(got[1].headers['message-id'], `${room}:2`);

  assertNoErrors(alice, bob, anon);
});

test('brokerURL with a global WebSocket (ws) also works', T, async (t) => {
  const h = await harness(t);
  const dest = `/topic/${uniqueRoom('broker')}`;
  const hadGlobal = Object.prototype.hasOwnProperty.call(globalThis, 'WebSocket');
  const prev = globalThis.WebSocket;
  Object.assign(globalThis, { WebSocket });
  t.after(() => {
    if (hadGlobal) globalThis.WebSocket = prev;
    else delete globalThis.WebSocket;
  });

  const c = await h.client({ login: 'carol', useBrokerURL: true });
  assert.equal(c.connected.headers.version, '1.2');
  assert.equal(c.ws.protocol, 'v12.stomp');
  const got = [];
  await subscribeLive(c.client, dest, (m) => got.push(m));
  await publishConfirmed(c.client, { destination: dest, body: 'echo' });
  await waitFor(() => got.length === 1, 5000, 'own message echoed back');
  assert.equal(got[0].body, 'echo');
  assert.equal(got[0].headers['x-sender'], 'carol');
  assertNoErrors(c);
});

// ---------------------------------------------------------------------------
// 2. binary bodies

test('binary bodies with NUL bytes arrive byte-identical', T, async (t) => {
  const h = await harness(t);
  const room = uniqueRoom('bin');
  const dest = `/topic/${room}`;
  const pub = await h.client({ login: 'pub' });
  const sub = await h.client({ login: 'sub' });

  const got = [];
  await subscribeLive(sub.client, dest, (m) => got.push(m), { id: 'bin' });

  // not valid UTF-8 (0xff, lone continuation, truncated sequence) -> binary WS message
  const invalid = new Uint8Array([0x00, 0x01, 0x02, 0x00, 0xff, 0xfe, 0x80, 0x00, 0x7f, 0xc3, 0x00]);
  // valid UTF-8 containing NULs -> text WS message (content-length delimits the body)
  const validWithNuls = new Uint8Array(Buffer.from('a\u0000b\u0000\u0000c ✓\u0000', 'utf8'));
  // larger body with every byte value, well under max-frame-size (65536)
  const big = new Uint8Array(40_000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 31 + (i >> 8)) & 0xff;
  const only0 = new Uint8Array([0x00]);

  const bodies = [invalid, validWithNuls, big, only0];
  for (const b of bodies) {
    await publishConfirmed(pub.client, {
      destination: dest,
      binaryBody: b,
      headers: { 'content-type': 'application/octet-stream' },
    });
  }
  await waitFor(() => got.length >= bodies.length, 10_000, () => `${bodies.length} messages (got ${got.length})`);

  for (let i = 0; i < bodies.length; i++) {
    const m = got[i];
    assert.equal(m.headers['x-seq'], String(i + 1));
    assert.equal(m.headers['content-length'], String(bodies[i].length), `content-length of body #${i}`);
    assert.ok(
      Buffer.from(m.binaryBody).equals(Buffer.from(bodies[i])),
      `body #${i} differs: got ${Buffer.from(m.binaryBody).subarray(0, 32).toString('hex')}... (${m.binaryBody.length} bytes)`,
    );
    assert.equal(m.headers['content-type'], 'application/octet-stream');
  }

  const opcode = (i) => rawMessageById(sub, `${room}:${i + 1}`)?.isBinary;
  assert.equal(opcode(0), true, 'non-UTF-8 frame must be sent as a binary WS message');
  assert.equal(opcode(1), false, 'valid UTF-8 frame (even with NULs) must be sent as a text WS message');
  assert.equal(opcode(2), true, 'non-UTF-8 frame must be sent as a binary WS message');
  assert.equal(opcode(3), false, 'valid UTF-8 frame (even with NULs) must be sent as a text WS message');

  assertNoErrors(pub, sub);
});

// ---------------------------------------------------------------------------
// 3. receipts

test('receipts for SUBSCRIBE, SEND, UNSUBSCRIBE and DISCONNECT', T, async (t) => {
  const h = await harness(t);
  const dest = `/topic/${uniqueRoom('rcpt')}`;
  const c = await h.client({ login: 'r' });

  const receipts = {};
  const watch = (id) => {
    const d = deferred();
    c.client.watchForReceipt(id, (f) => {
      receipts[id] = f;
      d.resolve(f);
    });
    return withTimeout(d.promise, 5000, `RECEIPT ${id}`);
  };

  const got = [];
  const subR = watch('rcpt-sub-1');
  const sub = c.client.subscribe(dest, (m) => got.push(m), { id: 's1', receipt: 'rcpt-sub-1' });
  assert.equal((await subR).headers['receipt-id'], 'rcpt-sub-1');
  assert.equal(receipts['rcpt-sub-1'].command, 'RECEIPT');

  const sendR = watch('rcpt-send-1');
  c.client.publish({ destination: dest, body: 'hello', headers: { receipt: 'rcpt-send-1' } });
  assert.equal((await sendR).headers['receipt-id'], 'rcpt-send-1');
  await waitFor(() => got.length === 1, 5000, 'own message via subscription');
  assert.equal(got[0].headers.receipt, undefined);

  const unsubR = watch('rcpt-unsub-1');
  sub.unsubscribe({ receipt: 'rcpt-unsub-1' });
  assert.equal((await unsubR).headers['receipt-id'], 'rcpt-unsub-1');

  // After UNSUBSCRIBE's receipt, nothing more is delivered to s1.
  await withTimeout(
    (async () => {
      const r = watch('rcpt-send-2');
      c.client.publish({ destination: dest, body: 'after unsub', headers: { receipt: 'rcpt-send-2' } });
      await r;
    })(),
    5000,
    'send after unsubscribe',
  );
  await sleep(200);
  assert.equal(got.length, 1, 'no delivery after UNSUBSCRIBE receipt');
  assertNoErrors(c);

  // DISCONNECT: stompjs sends disconnectHeaders and itself watches for that receipt
  // (watchForReceipt(disconnectHeaders.receipt, ...)) then fires onDisconnect(RECEIPT).
  c.client.configure({ disconnectHeaders: { receipt: 'rcpt-bye-1' } });
  await withTimeout(c.client.deactivate(), 5000, 'deactivate with DISCONNECT receipt');
  assert.equal(c.disconnects.length, 1, 'onDisconnect called once with the DISCONNECT RECEIPT');
  assert.equal(c.disconnects[0].command, 'RECEIPT');
  assert.equal(c.disconnects[0].headers['receipt-id'], 'rcpt-bye-1');
  assert.equal(c.errors.length, 0);
});

test('raw ws: DISCONNECT with receipt -> RECEIPT, then close code 1000', T, async (t) => {
  const h = await harness(t);
  const r = h.raw();
  const connected = await r.connect({ login: 'raw' });
  assert.equal(connected.headers.version, '1.2');
  r.send('DISCONNECT', { receipt: 'bye-77' });
  const rc = await r.nextFrame('RECEIPT', 5000);
  assert.equal(rc.headers['receipt-id'], 'bye-77');
  const close = await withTimeout(r.closed.promise, 5000, 'server closes after DISCONNECT');
  assert.equal(close.code, 1000);
});

// ---------------------------------------------------------------------------
// 4. heart-beats

test('heart-beats keep an idle stompjs session alive', T, async (t) => {
  const h = await harness(t, { args: ['--heartbeat-send-ms', '200', '--heartbeat-receive-ms', '200'] });
  const dest = `/topic/${uniqueRoom('hb')}`;
  const hb = { heartbeatIncoming: 200, heartbeatOutgoing: 200 };
  const a = await h.client({ login: 'a', ...hb });
  const b = await h.client({ login: 'b', ...hb });
  assert.equal(a.connected.headers['heart-beat'], '200,200');

  const got = [];
  await subscribeLive(b.client, dest, (m) => got.push(m));

  const hbBefore = [a.heartbeats, b.heartbeats];
  await sleep(2500); // idle: > 6x the 400 ms silence limit on either side

  const why = (s) =>
    JSON.stringify({ errors: s.errors.map((e) => e.headers.message), closes: s.closes, lost: s.heartbeatLost });
  assert.equal(a.heartbeatLost + b.heartbeatLost, 0, 'client never saw the server go silent');
  assert.deepEqual(a.closes, [], `a not closed while idle: ${why(a)}`);
  assert.deepEqual(b.closes, [], `b not closed while idle: ${why(b)}`);
  assert.ok(a.client.connected && b.client.connected, 'both still connected');
  // server sends an EOL every 200 ms: expect ~12 in 2.5 s; demand at least 5
  assert.ok(a.heartbeats - hbBefore[0] >= 5, `a received ${a.heartbeats - hbBefore[0]} heart-beats`);
  assert.ok(b.heartbeats - hbBefore[1] >= 5, `b received ${b.heartbeats - hbBefore[1]} heart-beats`);
  const hbWs = a.wsMessages.filter((m) => !m.isBinary && m.data.toString() === '\n').length;
  assert.ok(hbWs >= 5, `heart-beats are WS text messages "\\n" (saw ${hbWs})`);

  await publishConfirmed(a.client, { destination: dest, body: 'still alive' });
  await waitFor(() => got.length === 1, 5000, 'message after idle period');
  assert.equal(got[0].body, 'still alive');
  assertNoErrors(a, b);
});

test('raw ws: silent client with heart-beat:300,0 is closed by the server', T, async (t) => {
  const h = await harness(t, { args: ['--heartbeat-send-ms', '200', '--heartbeat-receive-ms', '200'] });

  const silent = h.raw();
  const quiet = h.raw(); // heart-beat 0,0: no receive check at all -> must stay open
  const c1 = await silent.connect({ 'heart-beat': '300,0' });
  const t0 = Date.now();
  const c2 = await quiet.connect({ 'heart-beat': '0,0' });
  assert.equal(c1.headers['heart-beat'], '200,200');
  assert.equal(c2.headers['heart-beat'], '200,200');

  // expects traffic every max(300, 200) = 300 ms; closes after 2x = 600 ms (100 ms tick)
  const close = await withTimeout(silent.closed.promise, 2500, 'server closes the silent client');
  const elapsed = close.at - t0;
  const err = silent.frames.find((f) => f.command === 'ERROR');
  const detail = `close code ${close.code}, ERROR ${JSON.stringify(err?.headers ?? null)}`;
  assert.ok(elapsed <= 2000, `closed after ${elapsed} ms (expected ~600-700 ms); ${detail}`);
  assert.ok(elapsed >= 500, `closed too early: ${elapsed} ms (limit is 2 x 300 ms); ${detail}`);
  assert.ok(err, 'an ERROR frame precedes the close');
  assert.match(err.headers.message ?? '', /heart-beat/i);
  assert.ok([1002, 1008, 1009].includes(close.code), `close code after ERROR: ${close.code}`);
  // client asked for no heart-beats (cy = 0): the server must not have sent any
  const eols = silent.messages.filter((m) => m.data.toString() === '\n').length;
  assert.equal(eols, 0, 'no heart-beats sent to a client that asked for none');

  await sleep(Math.max(0, 1500 - (Date.now() - t0)));
  assert.equal(quiet.closeInfo, null, 'client with heart-beat:0,0 is not timed out');
});

// ---------------------------------------------------------------------------
// 5. ack modes

test('ack mode client-individual with message.ack() and message.nack()', T, async (t) => {
  const h = await harness(t);
  const room = uniqueRoom('ack');
  const dest = `/topic/${room}`;
  const pub = await h.client({ login: 'p' });
  const sub = await h.client({ login: 's' });

  const got = [];
  await subscribeLive(sub.client, dest, (m) => got.push(m), { id: 'ci', ack: 'client-individual' });
  for (let i = 1; i <= 4; i++) await publishConfirmed(pub.client, { destination: dest, body: `m${i}` });
  await waitFor(() => got.length === 4, 5000, '4 messages');

  const ackIds = got.map((m) => m.headers.ack);
  for (const [i, m] of got.entries()) {
    assert.equal(m.body, `m${i + 1}`);
    assert.equal(m.headers.subscription, 'ci');
    assert.equal(m.headers['message-id'], `${room}:${i + 1}`);
    assert.ok(m.headers.ack, `MESSAGE #${i + 1} has an ack header (1.2, client-individual)`);
  }
  assert.equal(new Set(ackIds).size, 4, `ack ids are distinct: ${ackIds}`);

  const receipt = (id) => {
    const d = deferred();
    sub.client.watchForReceipt(id, d.resolve);
    return withTimeout(d.promise, 5000, `RECEIPT ${id}`);
  };
  // individual, out of order: ack m4 must NOT cover m3
  let r = receipt('ack-4');
  got[3].ack({ receipt: 'ack-4' });
  await r;
  r = receipt('nack-2');
  got[1].nack({ receipt: 'nack-2' });
  await r;
  r = receipt('ack-1');
  got[0].ack({ receipt: 'ack-1' });
  await r;
  r = receipt('ack-3');
  got[2].ack({ receipt: 'ack-3' });
  await r;
  assertNoErrors(pub, sub);

  // a new message after all that is still delivered with a fresh ack id
  await publishConfirmed(pub.client, { destination: dest, body: 'm5' });
  await waitFor(() => got.length === 5, 5000, 'm5');
  r = receipt('ack-5');
  got[4].ack({ receipt: 'ack-5' });
  await r;

  // m1 is no longer pending: acking it again is an error
  got[0].ack({ receipt: 'ack-1-again' });
  const err = await waitStompError(sub);
  assert.match(err.headers.message ?? '', /unknown ack/i);
  assert.equal(err.headers['receipt-id'], 'ack-1-again');
  await waitFor(() => sub.closes.length > 0, 5000, 'server closes after ERROR');
  assertNoErrors(pub);
});

test('ack mode client (cumulative): ACK covers earlier messages', T, async (t) => {
  const h = await harness(t);
  const dest = `/topic/${uniqueRoom('cack')}`;
  const pub = await h.client({ login: 'p' });
  const sub = await h.client({ login: 's' });
  const got = [];
  await subscribeLive(sub.client, dest, (m) => got.push(m), { id: 'cum', ack: 'client' });
  for (let i = 1; i <= 3; i++) await publishConfirmed(pub.client, { destination: dest, body: `c${i}` });
  await waitFor(() => got.length === 3, 5000, '3 messages');
  assert.ok(got.every((m) => m.headers.ack), 'ack headers present in client mode');

  const d = deferred();
  sub.client.watchForReceipt('cum-ack-3', d.resolve);
  got[2].ack({ receipt: 'cum-ack-3' });
  await withTimeout(d.promise, 5000, 'RECEIPT cum-ack-3');
  assertNoErrors(sub);

  got[0].ack(); // covered by the cumulative ACK of c3
  const err = await waitStompError(sub);
  assert.match(err.headers.message ?? '', /unknown ack/i);
  assertNoErrors(pub);
});

// ---------------------------------------------------------------------------
// 6. transactions

test('transactions: committed messages arrive, aborted ones do not', T, async (t) => {
  const h = await harness(t);
  const dest = `/topic/${uniqueRoom('tx')}`;
  const pub = await h.client({ login: 'p' });
  const sub = await h.client({ login: 's' });
  const got = [];
  await subscribeLive(sub.client, dest, (m) => got.push(m));
  const bodies = () => got.map((m) => m.body);
  const marker = async (name) => {
    await publishConfirmed(pub.client, { destination: dest, body: name });
    await waitFor(() => bodies().includes(name), 5000, () => `${name} (have ${bodies()})`);
  };

  const tx1 = pub.client.begin();
  pub.client.publish({ destination: dest, body: 'tx1-a', headers: { transaction: tx1.id } });
  pub.client.publish({ destination: dest, body: 'tx1-b', headers: { transaction: tx1.id } });
  await marker('marker-1');
  assert.deepEqual(bodies(), ['marker-1'], 'transactional SENDs are held until COMMIT');
  tx1.commit();
  await marker('marker-2');
  assert.deepEqual(bodies(), ['marker-1', 'tx1-a', 'tx1-b', 'marker-2']);

  const tx2 = pub.client.begin();
  pub.client.publish({ destination: dest, body: 'tx2-a', headers: { transaction: tx2.id } });
  pub.client.publish({ destination: dest, body: 'tx2-b', headers: { transaction: tx2.id } });
  tx2.abort();
  await marker('marker-3');
  await sleep(300);
  assert.deepEqual(bodies(), ['marker-1', 'tx1-a', 'tx1-b', 'marker-2', 'marker-3'], 'aborted SENDs dropped');

  // sequence numbers stay dense: held/aborted messages never consumed a seq
  assert.deepEqual(
    got.map((m) => m.headers['x-seq']),
    ['1', '2', '3', '4', '5'],
  );

  // a transaction left open at DISCONNECT is dropped
  const pub2 = await h.client({ login: 'p2' });
  const tx3 = pub2.client.begin();
  pub2.client.publish({ destination: dest, body: 'tx3-a', headers: { transaction: tx3.id } });
  await publishConfirmed(pub2.client, { destination: dest, body: 'p2-plain' });
  await withTimeout(pub2.client.deactivate(), 5000, 'p2 disconnect');
  await marker('marker-4');
  await sleep(300);
  assert.ok(!bodies().includes('tx3-a'), 'open transaction dropped on disconnect');

  assertNoErrors(sub, pub);

  // the aborted transaction is gone: COMMIT of it is an error
  pub.client.commit(tx2.id);
  const err = await waitStompError(pub);
  assert.match(err.headers.message ?? '', /unknown transaction/i);
});

// ---------------------------------------------------------------------------
// 7. fan-out ordering

test('50 subscribers in one room all see the same ordered 200 messages', { timeout: 120_000 }, async (t) => {
  const h = await harness(t);
  const room = uniqueRoom('fan');
  const dest = `/topic/${room}`;
  const N_SUBS = 50;
  const PER_PUB = 100; // two publishers x 100 = 200 messages

  const subs = await Promise.all(
    Array.from({ length: N_SUBS }, (_, i) => h.client({ login: `sub${i}`, timeoutMs: 20_000 })),
  );
  const received = subs.map(() => []);
  await Promise.all(
    subs.map((s, i) => subscribeLive(s.client, dest, (m) => received[i].push(m), { id: `fan-${i}` }, 20_000)),
  );
  const pubA = await h.client({ login: 'pubA' });
  const pubB = await h.client({ login: 'pubB' });

  const blast = async (pub, tag) => {
    for (let i = 0; i < PER_PUB; i++) {
      pub.client.publish({ destination: dest, body: `${tag}-${i}`, headers: { 'x-n': String(i) } });
      if (i % 25 === 24) await sleep(0); // let the socket drain a little
    }
    await publishConfirmed(pub.client, { destination: `/topic/${room}-done`, body: tag }, 20_000);
  };
  await Promise.all([blast(pubA, 'A'), blast(pubB, 'B')]);

  const total = 2 * PER_PUB;
  await waitFor(
    () => received.every((r) => r.length >= total),
    60_000,
    () => `all subscribers receive ${total} (min ${Math.min(...received.map((r) => r.length))})`,
  );
  await sleep(200);

  const reference = received[0].map((m) => m.body);
  const seqs = received[0].map((m) => Number(m.headers['x-seq']));
  assert.equal(reference.length, total);
  assert.deepEqual(seqs, Array.from({ length: total }, (_, i) => i + 1), 'x-seq is 1..200 in delivery order');
  for (const tag of ['A', 'B']) {
    assert.deepEqual(
      reference.filter((b) => b.startsWith(`${tag}-`)),
      Array.from({ length: PER_PUB }, (_, i) => `${tag}-${i}`),
      `publisher ${tag}'s order preserved`,
    );
  }
  for (let i = 0; i < N_SUBS; i++) {
    assert.equal(received[i].length, total, `subscriber ${i} got exactly ${total}`);
    assert.deepEqual(
      received[i].map((m) => m.body),
      reference,
      `subscriber ${i} sees the same order as subscriber 0`,
    );
    assert.ok(
      received[i].every((m, k) => m.headers['message-id'] === `${room}:${k + 1}` && m.headers.subscription === `fan-${i}`),
      `subscriber ${i}: message-id/subscription headers`,
    );
    const senders = received[i].map((m) => m.headers['x-sender']);
    assert.ok(
      senders.every((s, k) => s === (reference[k].startsWith('A-') ? 'pubA' : 'pubB')),
      `subscriber ${i}: x-sender matches publisher`,
    );
  }
  assertNoErrors(...subs, pubA, pubB);
});

// ---------------------------------------------------------------------------
// 8. history: resuming after a reconnect

test('a stompjs client resumes a room with x-since-seq: stored messages, then live', T, async (t) => {
  const h = await harness(t);
  const dest = `/topic/${uniqueRoom('resume')}`;
  const pub = await h.client({ login: 'writer' });
  for (let i = 1; i <= 5; i++) {
    // A RECEIPT means the message is stored.
    await publishConfirmed(pub.client, { destination: dest, body: `m${i}`, headers: { 'x-n': String(i) } });
  }
  // A client that saw up to seq 2 before it lost its connection.
  const back = await h.client({ login: 'reader' });
  const got = [];
  await subscribeLive(back.client, dest, (m) => got.push(m), { id: 'resume', 'x-since-seq': '2' });
  await waitFor(() => got.length >= 3, 5000, () => `3 replayed messages (have ${got.length})`);
  await publishConfirmed(pub.client, { destination: dest, body: 'live' });
  await waitFor(() => got.length >= 4, 5000, () => `the live message (have ${got.length})`);
  await sleep(200);
  assert.deepEqual(got.map((m) => m.headers['x-seq']), ['3', '4', '5', '6']);
  assert.deepEqual(got.map((m) => m.body), ['m3', 'm4', 'm5', 'live']);
  assert.equal(got[0].headers['x-n'], '3');
  assert.equal(got[0].headers['x-sender'], 'writer');

  // x-replay-last:2 gives the last two, then live.
  const last = await h.client({ login: 'latecomer' });
  const tail = [];
  await subscribeLive(last.client, dest, (m) => tail.push(m), { id: 'tail', 'x-replay-last': '2' });
  await waitFor(() => tail.length >= 2, 5000, () => `2 replayed messages (have ${tail.length})`);
  assert.deepEqual(tail.map((m) => m.body), ['m5', 'live']);
  assertNoErrors(pub, back, last);
});
