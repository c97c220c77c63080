// Client-side helpers: @stomp/stompjs clients with bookkeeping, a tiny raw
// STOMP-over-ws client, and timing utilities. Side-effect free on import.

import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

import { startServer } from './server.mjs';

export const STOMP_PROTOCOLS = ['v12.stomp', 'v11.stomp', 'v10.stomp'];

/** Reject if `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, label) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${label}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `pred` every 10 ms until it returns truthy; reject after `ms` with `label()`/`label`. */
export async function waitFor(pred, ms, label) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = pred();
    if (v) return v;
    if (Date.now() > deadline) {
      const l = typeof label === 'function' ? label() : label;
      throw new Error(`timeout after ${ms} ms waiting for: ${l}`);
    }
    await sleep(10);
  }
}

/** A promise plus its resolve/reject. */
export function deferred() {
  let resolve, reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/**
 * Create, activate and await CONNECTED for a @stomp/stompjs Client using a `ws` WebSocket.
 *
 * Bookkeeping on the returned object:
 *   client, connected (CONNECTED frame), ws (the raw ws socket), errors (ERROR frames),
 *   closes (close events), disconnects (onDisconnect frames), heartbeats (count),
 *   wsMessages ([{isBinary, data: Buffer}] every raw WS message received),
 *   unhandled (MESSAGE/RECEIPT/frames with no handler).
 * The client is deactivated in t.after (bounded, forced if the graceful path hangs).
 */
export async function connectClient(t, url, opts = {}) {
  const {
    login,
    connectHeaders = {},
    timeoutMs = 10_000,
    useBrokerURL = false,
    debug = false,
    onCreate,
    ...clientConfig
  } = opts;
  const state = {
    login,
    client: null,
    connected: null,
    ws: null,
    errors: [],
    closes: [],
    disconnects: [],
    heartbeats: 0,
    heartbeatLost: 0,
    wsErrors: [],
    wsMessages: [],
    unhandled: [],
    log: [],
  };
  const connected = deferred();

  const hdrs = { ...connectHeaders };
  if (login !== undefined) hdrs.login = login;

  const attachSpy = (ws) => {
    state.ws = ws;
    // stompjs sets ws.onmessage; an extra listener sees the WS opcode too.
    ws.on('message', (data, isBinary) => {
      const buf = Array.isArray(data)
        ? Buffer.concat(data)
        : Buffer.isBuffer(data)
          ? data
          : Buffer.from(data);
      state.wsMessages.push({ isBinary, data: buf });
    });
    return ws;
  };

  const config = {
    connectHeaders: hdrs,
    reconnectDelay: 0, // never reconnect: a reconnect would hide server-side closes
    heartbeatIncoming: 0,
    heartbeatOutgoing: 0,
    connectionTimeout: timeoutMs,
    debug: (msg) => {
      if (debug) console.error(`[stomp ${login ?? ''}] ${msg}`);
      if (state.log.length < 2000) state.log.push(msg);
    },
    onConnect: (frame) => {
      state.connected = frame;
      connected.resolve(frame);
    },
    onStompError: (frame) => {
      state.errors.push(frame);
      connected.reject(
        new Error(`STOMP ERROR before CONNECTED: ${frame.headers.message} ${frame.body}`),
      );
    },
    onWebSocketClose: (evt) => {
      state.closes.push({ code: evt.code, reason: evt.reason, wasClean: evt.wasClean, at: Date.now() });
      connected.reject(new Error(`WebSocket closed before CONNECTED (code ${evt.code})`));
    },
    onWebSocketError: (evt) => {
      state.wsErrors.push(evt);
    },
    onDisconnect: (frame) => state.disconnects.push(frame),
    onHeartbeatReceived: () => {
      state.heartbeats += 1;
    },
    onHeartbeatLost: () => {
      state.heartbeatLost += 1;
    },
    onUnhandledMessage: (m) => state.unhandled.push(m),
    onUnhandledReceipt: (f) => state.unhandled.push(f),
    onUnhandledFrame: (f) => state.unhandled.push(f),
    ...clientConfig,
  };

  if (useBrokerURL) {
    config.brokerURL = url;
  } else {
    config.webSocketFactory = () => attachSpy(new WebSocket(url, STOMP_PROTOCOLS));
  }

  const client = new Client(config);
  state.client = client;
  if (onCreate) onCreate(client);
  if (t) t.after(() => deactivate(client));
  client.activate();
  await withTimeout(connected.promise, timeoutMs, `CONNECTED for ${login ?? 'client'} at ${url}`);
  if (useBrokerURL) {
    // stompjs created the socket itself; the handler exposes it.
    state.ws = client.webSocket;
  }
  return state;
}

/** Deactivate a stompjs client; never hangs longer than `ms`. */
export async function deactivate(client, ms = 3000) {
  try {
    await withTimeout(client.deactivate(), ms, 'client.deactivate()');
  } catch {
    try {
      await withTimeout(client.deactivate({ force: true }), 1000, 'client.deactivate({force})');
    } catch {
      /* give up: the server is killed anyway */
    }
  }
}

/** Subscribe and wait for the subscription RECEIPT (so it is live on every shard). */
export async function subscribeLive(client, destination, onMessage, headers = {}, ms = 5000) {
  const receipt = headers.receipt ?? `sub-rcpt-${Math.random().toString(36).slice(2)}`;
  const got = deferred();
  client.watchForReceipt(receipt, (frame) => got.resolve(frame));
  const sub = client.subscribe(destination, onMessage, { ...headers, receipt });
  await withTimeout(got.promise, ms, `RECEIPT ${receipt} for SUBSCRIBE ${destination}`);
  return sub;
}

/** Publish with a receipt and wait for it. */
export async function publishConfirmed(client, params, ms = 5000) {
  const receipt =
    params.headers?.receipt ?? `send-rcpt-${Math.random().toString(36).slice(2)}`;
  const got = deferred();
  client.watchForReceipt(receipt, (frame) => got.resolve(frame));
  client.publish({ ...params, headers: { ...(params.headers || {}), receipt } });
  return withTimeout(got.promise, ms, `RECEIPT ${receipt} for SEND to ${params.destination}`);
}

/** Unique room name per test. */
let roomCounter = 0;
export function uniqueRoom(prefix = 'room') {
  roomCounter += 1;
  return `${prefix}-${process.pid}-${roomCounter}-${Date.now().toString(36)}`;
}

// ---------------------------------------------------------------------------
// Minimal raw STOMP-over-WebSocket client (for behaviour stompjs hides).

const UNESCAPE_12 = { r: '\r', n: '\n', c: ':', '\\': '\\' };

/** Undo STOMP 1.2 header escaping (1.1: no \r). Unknown escapes are left as-is. */
export function unescapeHeader(v, version = '1.2') {
  return v.replace(/\\(.)/gs, (all, c) =>
    c === 'r' && version !== '1.2' ? all : (UNESCAPE_12[c] ?? all),
  );
}

/**
 * Parse one STOMP frame (as sent by the server: one frame per WS message).
 * Header values are unescaped per `version` ('1.2' default, '1.1', or '1.0' = none);
 * CONNECTED is never unescaped.
 */
export function parseFrame(buf, version = '1.2') {
  if (!Buffer.isBuffer(buf)) buf = Buffer.from(buf);
  let i = 0;
  // skip leading EOLs (heart-beats)
  while (i < buf.length && (buf[i] === 0x0a || buf[i] === 0x0d)) i++;
  if (i >= buf.length) return null; // heart-beat only
  const readLine = () => {
    const nl = buf.indexOf(0x0a, i);
    if (nl < 0) throw new Error(`malformed frame: ${JSON.stringify(buf.toString('latin1'))}`);
    let end = nl;
    if (end > i && buf[end - 1] === 0x0d) end--;
    const line = buf.subarray(i, end).toString('utf8');
    i = nl + 1;
    return line;
  };
  const command = readLine();
  const headers = {};
  const headerList = [];
  for (;;) {
    const line = readLine();
    if (line === '') break;
    const c = line.indexOf(':');
    const unesc = (x) =>
      command === 'CONNECTED' || version === '1.0' ? x : unescapeHeader(x, version);
    const k = unesc(line.slice(0, c));
    const v = unesc(line.slice(c + 1));
    headerList.push([k, v]);
    if (!(k in headers)) headers[k] = v;
  }
  let body;
  if (headers['content-length'] !== undefined) {
    const n = Number(headers['content-length']);
    body = buf.subarray(i, i + n);
  } else {
    const z = buf.indexOf(0x00, i);
    body = buf.subarray(i, z < 0 ? buf.length : z);
  }
  return { command, headers, headerList, body: Buffer.from(body) };
}

/** Serialize a STOMP frame (no header escaping: callers pass safe values). */
export function buildFrame(command, headers = {}, body = '') {
  const head = [command, ...Object.entries(headers).map(([k, v]) => `${k}:${v}`)].join('\n');
  const b = Buffer.isBuffer(body) ? body : Buffer.from(body, 'utf8');
  return Buffer.concat([Buffer.from(`${head}\n\n`, 'utf8'), b, Buffer.from([0])]);
}

export class RawStompWs {
  constructor(url, protocols = STOMP_PROTOCOLS) {
    this.url = url;
    this.frames = [];
    this.messages = []; // {isBinary, data, at}
    this.waiters = [];
    this.closed = deferred();
    this.closeInfo = null;
    this.ws = new WebSocket(url, protocols);
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('error', reject);
    });
    this.ws.on('error', () => {});
    this.ws.on('message', (data, isBinary) => {
      const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
      this.messages.push({ isBinary, data: buf, at: Date.now() });
      const f = parseFrame(buf);
      if (f) {
        f.at = Date.now();
        this.frames.push(f);
        this._wake();
      }
    });
    this.ws.on('close', (code, reason) => {
      this.closeInfo = { code, reason: reason.toString(), at: Date.now() };
      this.closed.resolve(this.closeInfo);
      this._wake();
    });
  }

  _wake() {
    const ws = this.waiters;
    this.waiters = [];
    ws.forEach((w) => w());
  }

  send(command, headers = {}, body = '') {
    this.ws.send(buildFrame(command, headers, body));
  }

  /** Wait for the next frame of `command` (consumes frames up to and including it). */
  async nextFrame(command, ms = 5000) {
    const deadline = Date.now() + ms;
    for (;;) {
      const idx = this.frames.findIndex((f) => !command || f.command === command);
      if (idx >= 0) return this.frames.splice(0, idx + 1)[idx];
      if (this.closeInfo) throw new Error(`socket closed (code ${this.closeInfo.code}) while waiting for ${command}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout waiting for ${command} frame`);
      await new Promise((r) => {
        const timer = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          r();
        });
      });
    }
  }

  async connect(headers = {}, ms = 5000) {
    await withTimeout(this.opened, ms, `ws open ${this.url}`);
    this.send('CONNECT', { 'accept-version': '1.2', host: 'localhost', ...headers });
    return this.nextFrame('CONNECTED', ms);
  }

  terminate() {
    try {
      this.ws.terminate();
    } catch {
      /* ignore */
    }
  }
}

// ---------------------------------------------------------------------------
// Per-test harness: one server, tracked clients, one ordered cleanup.

/**
 * Start a server for test `t` and return helpers bound to it. Cleanup (in t.after):
 * raw sockets terminated, stompjs clients deactivated (bounded), then the server stopped.
 */
export async function harness(t, serverOpts = {}) {
  const clients = [];
  const raws = [];
  let server = null;
  t.after(async () => {
    for (const r of raws) r.terminate();
    await Promise.all(clients.map((c) => deactivate(c.client)));
    if (server) await server.stop();
  });
  server = await startServer(serverOpts);
  return {
    server,
    url: server.wsUrl,
    async client(opts = {}) {
      try {
        return await connectClient(null, server.wsUrl, {
          ...opts,
          onCreate: (c) => clients.push({ client: c }),
        });
      } catch (e) {
        throw new Error(`${e.message}\n--- server stderr (tail) ---\n${server.stderr().slice(-4000)}`);
      }
    },
    raw(path = '/ws', protocols = STOMP_PROTOCOLS) {
      const r = new RawStompWs(`ws://${server.httpHost}:${server.httpPort}${path}`, protocols);
      raws.push(r);
      return r;
    },
  };
}
