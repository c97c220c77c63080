// Start/stop a stampede server binary for black-box tests.
//
// Side-effect free on import (node --test also loads this file as a "test file"
// because it lives under test/; it then simply reports ok with no subtests).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
// tests/node/test/helpers -> repo root
export const REPO_ROOT = path.resolve(here, '..', '..', '..', '..');
export const STAMPEDE_BIN =
  process.env.STAMPEDE_BIN || path.join(REPO_ROOT, 'target', 'release', 'stampede');

const READY_TIMEOUT_MS = 20_000;
const KILL_GRACE_MS = 5_000;
const STDERR_KEEP = 64 * 1024;

const READY_RE = /^stampede ready http=(\S+):(\d+) stomp=(\S+)$/;

const live = new Set();
let exitHookInstalled = false;
function installExitHook() {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort: never leave a server behind if the test process dies.
  process.on('exit', () => {
    for (const child of live) {
      try {
        child.kill('SIGKILL');
      } catch {
        /* ignore */
      }
    }
  });
}

/**
 * Start a stampede server.
 *
 * @param {object} [opts]
 * @param {string[]} [opts.args]   extra command-line flags
 * @param {number}  [opts.shards] value for --shards (default env STAMPEDE_SHARDS or 4; null = omit)
 * @param {object}  [opts.env]    extra environment variables
 * @param {string}  [opts.listen] --listen address (default 127.0.0.1:0)
 * @param {string}  [opts.dataDir] data directory, kept at stop (default: a fresh one, removed)
 * @param {import('node:test').TestContext} [t] if given, the server is stopped in t.after()
 * @returns {Promise<{wsUrl:string, httpHost:string, httpPort:number, stomp:string,
 *                    stderr:()=>string, stop:()=>Promise<void>, child:any, dataDir:string}>}
 */
export async function startServer(opts = {}, t = undefined) {
  if (!fs.existsSync(STAMPEDE_BIN)) {
    throw new Error(
      `stampede binary not found at ${STAMPEDE_BIN} (set STAMPEDE_BIN or run cargo build --release)`,
    );
  }
  installExitHook();

  // A data dir of the caller's is kept at stop (a restart reuses it).
  const ownDataDir = !opts.dataDir;
  const dataDir = opts.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'stampede-node-'));
  const shards =
    opts.shards === null
      ? null
      : String(opts.shards ?? process.env.STAMPEDE_SHARDS ?? 4);
  const args = [
    '--listen',
    opts.listen ?? '127.0.0.1:0',
    '--stomp-listen',
    '127.0.0.1:0',
    ...(shards === null ? [] : ['--shards', shards]),
    '--data-dir',
    dataDir,
    ...(opts.args || []),
  ];

  const child = spawn(STAMPEDE_BIN, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...(opts.env || {}) },
  });
  live.add(child);

  let stderrBuf = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => {
    stderrBuf += d;
    if (stderrBuf.length > STDERR_KEEP) stderrBuf = stderrBuf.slice(-STDERR_KEEP);
  });

  let exited = null; // {code, signal}
  const exitPromise = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      exited = { code, signal };
      live.delete(child);
      resolve(exited);
    });
  });

  const describe = () =>
    `command: ${STAMPEDE_BIN} ${args.join(' ')}\n--- server stderr ---\n${stderrBuf}\n--- end stderr ---`;

  const ready = await new Promise((resolve, reject) => {
    let stdoutBuf = '';
    let done = false;
    const finish = (err, val) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      child.off('error', onError);
      child.off('exit', onExit);
      if (err) reject(err);
      else resolve(val);
    };
    const onError = (e) => finish(new Error(`failed to spawn stampede: ${e.message}\n${describe()}`));
    const onExit = (code, signal) =>
      // give stderr a moment to flush before reporting
      setTimeout(
        () =>
          finish(
            new Error(
              `stampede exited before ready (code=${code} signal=${signal}); stdout so far: ${JSON.stringify(stdoutBuf)}\n${describe()}`,
            ),
          ),
        50,
      );
    const timer = setTimeout(
      () =>
        finish(
          new Error(
            `stampede did not print its ready line within ${READY_TIMEOUT_MS} ms; stdout so far: ${JSON.stringify(stdoutBuf)}\n${describe()}`,
          ),
        ),
      READY_TIMEOUT_MS,
    );
    child.on('error', onError);
    child.on('exit', onExit);
    child.stdout.setEncoding('utf8');
    const onData = (d) => {
      if (done) return;
      stdoutBuf += d;
      const nl = stdoutBuf.indexOf('\n');
      if (nl < 0) return;
      const line = stdoutBuf.slice(0, nl).replace(/\r$/, '');
      const m = READY_RE.exec(line);
      if (!m) {
        finish(new Error(`unexpected first stdout line ${JSON.stringify(line)}\n${describe()}`));
        return;
      }
      finish(null, { httpHost: m[1], httpPort: Number(m[2]), stomp: m[3] });
    };
    child.stdout.on('data', onData);
  }).catch(async (err) => {
    await killChild(child, exitPromise, () => exited);
    if (ownDataDir) fs.rmSync(dataDir, { recursive: true, force: true });
    throw err;
  });

  // Keep draining stdout so the server can never block on a full pipe.
  child.stdout.resume();

  let stopped = null;
  const server = {
    child,
    dataDir,
    httpHost: ready.httpHost,
    httpPort: ready.httpPort,
    stomp: ready.stomp,
    wsUrl: `ws://${ready.httpHost}:${ready.httpPort}/ws`,
    stderr: () => stderrBuf,
    exited: () => exited,
    stop: () => {
      if (!stopped) {
        stopped = (async () => {
          await killChild(child, exitPromise, () => exited);
          if (ownDataDir) fs.rmSync(dataDir, { recursive: true, force: true });
        })();
      }
      return stopped;
    },
  };
  if (t) t.after(() => server.stop());
  return server;
}

async function killChild(child, exitPromise, getExited) {
  if (getExited()) return;
  try {
    child.kill('SIGTERM');
  } catch {
    /* ignore */
  }
  const timedOut = await Promise.race([
    exitPromise.then(() => false),
    new Promise((r) => setTimeout(() => r(true), KILL_GRACE_MS).unref()),
  ]);
  if (timedOut && !getExited()) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* ignore */
    }
    await exitPromise;
  }
}
