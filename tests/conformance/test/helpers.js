// Shared harness for the plexus conformance suite.
//
// * startServer() writes a TOML config to a temp dir, spawns `plexus serve --config FILE`,
//   waits for the `plexus listening on HOST:PORT` line on stdout and returns a handle.
// * Clients are the real pusher-js (Node build) and the real `pusher` server SDK.
// * Every wait is a promise with a deadline; nothing sleeps and hopes.

import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

import PusherClient from 'pusher-js';
import PusherServer from 'pusher';

export { PusherClient, PusherServer };

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..', '..');

/** The binary under test: $PLEXUS_BIN, else target/release/plexus of this repository. */
export const PLEXUS_BIN = process.env.PLEXUS_BIN || path.join(repoRoot, 'target', 'release', 'plexus');

/** Default wait for anything that should happen "promptly". */
export const TIMEOUT = Number(process.env.CONFORMANCE_TIMEOUT_MS || 5000);

if (process.env.PUSHER_LOG) PusherClient.logToConsole = true;

export const APP1 = Object.freeze({ id: 'app-1', key: 'key-1', secret: 'secret-1' });
export const APP2 = Object.freeze({ id: 'app-2', key: 'key-2', secret: 'secret-2' });

/** The config every file uses unless it passes its own. */
export const DEFAULT_CONFIG = `
[server]
host = "127.0.0.1"
port = 0

[[apps]]
id = "${APP1.id}"
key = "${APP1.key}"
secret = "${APP1.secret}"
enable_client_messages = true
max_client_events_per_second = 10
max_presence_members = 100
max_event_payload_kb = 10

[[apps]]
id = "${APP2.id}"
key = "${APP2.key}"
secret = "${APP2.secret}"
enable_client_messages = false
`;

// ---------------------------------------------------------------------------------------------
// Small promise utilities

/** Resolves with `promise`, or rejects after `ms` with an error naming `what`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/** Polls `fn` (sync or async) until it returns a truthy value; returns that value. */
export async function waitUntil(fn, what, { timeout = TIMEOUT, interval = 50 } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) {
      throw new Error(`timed out after ${timeout} ms waiting until ${what} (last: ${inspect(last)})`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

function inspect(v) {
  if (v instanceof Error) return v.message;
  try {
    return JSON.stringify(v);
  } catch {
    return String(v);
  }
}

// ---------------------------------------------------------------------------------------------
// The server process

/**
 * Starts plexus with `config` (TOML text). Returns
 * `{ port, proc, stop(), exited, stderrTail() }`; `exited` resolves with `{code, signal}`.
 */
/**
 * Starts the plexus binary on `config`. `env` adds variables to its environment (those starting
 * with `PLEXUS_` are otherwise removed: the file is the contract).
 */
export async function startServer({ config = DEFAULT_CONFIG, startTimeout = 15000, env: extraEnv = {} } = {}) {
  if (!existsSync(PLEXUS_BIN)) {
    throw new Error(
      `plexus binary not found at ${PLEXUS_BIN}; build it with ` +
        '`cargo build --release -p plexus-server` or set PLEXUS_BIN',
    );
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'plexus-conformance-'));
  const configPath = path.join(dir, 'plexus.toml');
  // `@SERVER_DIR@` in the config stands for this server's own temp dir (removed on stop), e.g.
  // for `[webhooks] data_dir`.
  writeFileSync(configPath, config.replaceAll('@SERVER_DIR@', dir));

  // Settings from the environment would override the file; the file is the contract here.
  const env = { ...process.env };
  for (const k of Object.keys(env)) {
    if (k.startsWith('PLEXUS_') && k !== 'PLEXUS_BIN') delete env[k];
  }
  // Any free port for the metrics listener, so a server still exiting never blocks the next one.
  env.PLEXUS_METRICS_PORT = '0';
  Object.assign(env, extraEnv);

  const proc = spawn(PLEXUS_BIN, ['serve', '--config', configPath], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });

  const stderrLines = [];
  const stderrWaiters = new Set();
  createInterface({ input: proc.stderr }).on('line', (line) => {
    for (const waiter of stderrWaiters) waiter(line);
    stderrLines.push(line);
    if (stderrLines.length > 200) stderrLines.shift();
    if (process.env.PLEXUS_LOG) process.stderr.write(`[plexus] ${line}\n`);
  });
  const stderrTail = () => stderrLines.slice(-30).join('\n');

  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => resolve({ code, signal }));
  });
  const spawnError = new Promise((_, reject) => proc.on('error', reject));

  const listening = new Promise((resolve) => {
    const rl = createInterface({ input: proc.stdout });
    rl.on('line', (line) => {
      if (process.env.PLEXUS_LOG) process.stderr.write(`[plexus stdout] ${line}\n`);
      const m = /^plexus listening on (.+):(\d+)\s*$/.exec(line);
      if (m) resolve(Number(m[2]));
    });
  });
  const diedEarly = exited.then(({ code, signal }) => {
    throw new Error(
      `plexus exited before listening (code ${code}, signal ${signal}); stderr:\n${stderrTail()}`,
    );
  });

  let port;
  try {
    port = await withTimeout(
      Promise.race([listening, diedEarly, spawnError]),
      startTimeout,
      'the "plexus listening on" line',
    );
  } catch (e) {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  diedEarly.catch(() => {}); // later exits are reported by stop()/crashed()

  let stopping = false;
  return {
    port,
    proc,
    exited,
    stderrTail,
    /** Resolves with the first stderr line (from now on) that matches `pattern`. */
    stderrLine(pattern, timeout = TIMEOUT) {
      let waiter;
      const seen = new Promise((resolve) => {
        waiter = (line) => {
          if (pattern.test(line)) resolve(line);
        };
        stderrWaiters.add(waiter);
      });
      return withTimeout(seen, timeout, `a stderr line matching ${pattern}`).finally(() => stderrWaiters.delete(waiter));
    },
    /** True when the process ended although nobody asked it to. */
    crashed: () => !stopping && (proc.exitCode !== null || proc.signalCode !== null),
    /** Sends `signal` (SIGTERM) and waits for the exit; SIGKILLs after `timeout` ms. */
    async stop({ signal = 'SIGTERM', timeout = 15000 } = {}) {
      const wasCrashed = !stopping && (proc.exitCode !== null || proc.signalCode !== null);
      stopping = true;
      try {
        if (proc.exitCode !== null || proc.signalCode !== null) {
          return { ...(await exited), crashed: wasCrashed };
        }
        proc.kill(signal);
        try {
          return { ...(await withTimeout(exited, timeout, `plexus to exit after ${signal}`)), crashed: false };
        } catch (e) {
          proc.kill('SIGKILL');
          await exited;
          throw e;
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Clients

/** The official server SDK pointed at `server` for `app` (APP1 by default). */
export function sdkFor(server, app = APP1, extra = {}) {
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: '127.0.0.1',
    port: String(server.port),
    useTLS: false,
    ...extra,
  });
}

/** Options that point pusher-js at the local server over plain ws. */
export function clientOptions(server, extra = {}) {
  return {
    wsHost: '127.0.0.1',
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1', // required by pusher-js, ignored because wsHost is set
    disableStats: true,
    ...extra,
  };
}

/** channelAuthorization option that signs with `sdk`; `channelData(channelName)` for presence. */
export function sdkAuthorizer(sdk, channelData) {
  return {
    customHandler: ({ socketId, channelName }, callback) => {
      try {
        const data = channelData ? channelData(channelName) : undefined;
        callback(null, sdk.authorizeChannel(socketId, channelName, data));
      } catch (e) {
        callback(e, null);
      }
    },
  };
}

/** Collects clients so an `after` hook can disconnect all of them. */
export class ClientPool {
  constructor(server) {
    this.server = server;
    this.clients = [];
    this.sockets = new Set();
  }

  /** A pusher-js client (not yet necessarily connected). */
  create(key = APP1.key, extra = {}) {
    const client = new PusherClient(key, clientOptions(this.server, extra));
    this.clients.push(client);
    // Keep each underlying WebSocket (pusher-js's bundled faye-websocket client) for teardown.
    client.connection.bind('connected', () => {
      const socket = client.connection.connection?.transport?.socket;
      if (socket) this.sockets.add(socket);
    });
    return client;
  }

  /** A pusher-js client that has reached `connected`. */
  async connect(key = APP1.key, extra = {}) {
    const client = this.create(key, extra);
    await waitForState(client, 'connected');
    return client;
  }

  disconnectAll() {
    for (const c of this.clients) {
      try {
        c.disconnect();
      } catch {
        // already gone
      }
    }
    this.clients = [];
    // When the server closes a connected socket with a "refused" code (4009 after a failed
    // sign-in or terminate_connections), pusher-js calls close() on the already closed
    // faye-websocket client, which arms a 30 s close timer that nothing clears and that keeps
    // the test process alive. Unref those timers (they do nothing on a closed socket).
    for (const socket of this.sockets) socket._closeTimer?.unref?.();
    this.sockets.clear();
  }
}

/** Resolves when `client` is in `state` (one of a list allowed), rejects on timeout. */
export function waitForState(client, states, timeout = TIMEOUT) {
  const wanted = Array.isArray(states) ? states : [states];
  if (wanted.includes(client.connection.state)) return Promise.resolve(client.connection.state);
  let handler;
  const p = new Promise((resolve) => {
    handler = ({ current }) => {
      if (wanted.includes(current)) resolve(current);
    };
    client.connection.bind('state_change', handler);
  });
  return withTimeout(p, timeout, `connection state ${wanted.join('|')} (now ${client.connection.state})`).finally(
    () => client.connection.unbind('state_change', handler),
  );
}

/**
 * Waits for one `event` on a pusher-js dispatcher (channel, connection, client); resolves
 * with `{ data, metadata }` of the first emission that passes `filter(data, metadata)`.
 */
export function waitForEvent(target, event, { timeout = TIMEOUT, filter = () => true } = {}) {
  let handler;
  const p = new Promise((resolve) => {
    handler = (data, metadata) => {
      if (filter(data, metadata)) resolve({ data, metadata });
    };
    target.bind(event, handler);
  });
  return withTimeout(p, timeout, `event ${event}`).finally(() => target.unbind(event, handler));
}

/**
 * Subscribes and waits for `pusher:subscription_succeeded`; rejects with the error data when
 * `pusher:subscription_error` arrives instead. Resolves with `{ channel, data }`.
 */
export function subscribe(client, name, timeout = TIMEOUT) {
  const channel = client.subscribe(name);
  let ok;
  let bad;
  const p = new Promise((resolve, reject) => {
    ok = (data) => resolve({ channel, data });
    bad = (err) => reject(Object.assign(new Error(`subscription_error on ${name}: ${inspect(err)}`), { data: err }));
    channel.bind('pusher:subscription_succeeded', ok);
    channel.bind('pusher:subscription_error', bad);
  });
  return withTimeout(p, timeout, `subscription to ${name}`).finally(() => {
    channel.unbind('pusher:subscription_succeeded', ok);
    channel.unbind('pusher:subscription_error', bad);
  });
}

/**
 * Records every event a channel (or the client's global emitter) emits, in arrival order,
 * and lets a test wait for one of them. Used for "not delivered before the marker" checks.
 */
export function record(target) {
  const events = [];
  const waiters = new Set();
  const handler = (name, data) => {
    const ev = { name, data };
    events.push(ev);
    for (const w of waiters) {
      if (w.name === name && w.filter(data)) {
        waiters.delete(w);
        w.resolve(ev);
      }
    }
  };
  target.bind_global(handler);
  return {
    events,
    names: () => events.map((e) => e.name),
    count: (name) => events.filter((e) => e.name === name).length,
    /** Resolves with the first (past or future) event called `name` that passes `filter`. */
    waitFor(name, { timeout = TIMEOUT, filter = () => true } = {}) {
      const seen = events.find((e) => e.name === name && filter(e.data));
      if (seen) return Promise.resolve(seen);
      const w = { name, filter };
      const p = new Promise((resolve) => {
        w.resolve = resolve;
        waiters.add(w);
      });
      return withTimeout(p, timeout, `event ${name} (recorded so far: ${inspect(events.map((e) => e.name))})`).finally(
        () => waiters.delete(w),
      );
    },
    /** Events recorded before the first event called `marker`. */
    before(marker) {
      const i = events.findIndex((e) => e.name === marker);
      return i < 0 ? events.slice() : events.slice(0, i);
    },
    stop: () => target.unbind_global(handler),
  };
}

/** Collects `error` events of a client's connection. */
export function recordConnectionErrors(client) {
  const errors = [];
  client.connection.bind('error', (e) => errors.push(e));
  return errors;
}

/**
 * The Pusher error code carried by a pusher-js connection `error` event, whichever wrapper
 * pusher-js used: `{type:'PusherError', data:{code}}` (pusher:error frame or close event) or
 * `{type:'WebSocketError', error:{type:'PusherError', data:{code}}}` (handshake refusal).
 */
export function errorCode(err) {
  if (!err || typeof err !== 'object') return undefined;
  if (err.data && typeof err.data === 'object' && 'code' in err.data) return err.data.code;
  if (err.error && typeof err.error === 'object') return errorCode(err.error);
  return undefined;
}

/** Hooks the live WebSocket of a connected pusher-js client; resolves with its close event. */
export function transportClosed(client) {
  const conn = client.connection.connection;
  assert.ok(conn && conn.transport, 'client has no live transport to watch');
  return new Promise((resolve) => conn.transport.bind('closed', (ev) => resolve(ev || {})));
}

// ---------------------------------------------------------------------------------------------
// HTTP API helpers

/** GET through the SDK (signed by it); asserts 200 and returns the parsed JSON body. */
export async function apiGet(sdk, pathName, params) {
  const res = await sdk.get({ path: pathName, params });
  assert.equal(res.status, 200, `GET ${pathName} status`);
  return res.json();
}

/**
 * Awaits a request that must fail with HTTP `status` and a JSON body `{ "error": string }`.
 * Returns the parsed body.
 */
export async function expectHttpError(promise, status, what) {
  let err;
  try {
    const res = await promise;
    const text = await res.text().catch(() => '');
    assert.fail(`${what}: expected HTTP ${status}, got ${res.status} ${text}`);
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e;
    err = e;
  }
  assert.equal(err.name, 'PusherRequestError', `${what}: expected an HTTP error, got ${err.stack || err}`);
  assert.equal(err.status, status, `${what}: status (body: ${err.body})`);
  let body;
  try {
    body = JSON.parse(err.body);
  } catch {
    assert.fail(`${what}: error body is not JSON: ${JSON.stringify(err.body)}`);
  }
  assert.equal(typeof body, 'object', `${what}: error body is not a JSON object: ${err.body}`);
  assert.equal(typeof body?.error, 'string', `${what}: error body has no "error" string: ${err.body}`);
  assert.ok(body.error.length > 0, `${what}: "error" is empty`);
  return body;
}

/**
 * The start of a cluster node's config: the server on any free port, the `[adapter]` joining
 * `bus` ({driver, url}) under `prefix`, and APP1 (its `[[apps]]` table left open, so a caller
 * appends app settings and sub-tables).
 */
export function clusterNodeConfig(bus, prefix, { leaseMs = 3000, history = 'memory' } = {}) {
  return `
[server]
host = "127.0.0.1"
port = 0

[adapter]
driver = "${bus.driver}"
url = "${bus.url}"
prefix = "${prefix}"
heartbeat_ms = 500
lease_ms = ${leaseMs}
history = "${history}"

[[apps]]
id = "${APP1.id}"
key = "${APP1.key}"
secret = "${APP1.secret}"
`;
}

/**
 * A cluster node config (see `clusterNodeConfig`) whose app keeps a history of its "feed-"
 * channels: the last 50 events, for 10 minutes.
 */
export function historyNodeConfig(bus, prefix, options = {}) {
  return `${clusterNodeConfig(bus, prefix, options)}
[[apps.history]]
prefix = "feed-"
size = 50
ttl_secs = 600
`;
}

/** The real buses the durable-history suites run over: NATS (JetStream) and Redis (Streams). */
export const DURABLE_BUSES = [
  { driver: 'nats', url: 'nats://127.0.0.1:4222' },
  { driver: 'redis', url: 'redis://127.0.0.1:6379' },
];

/** A node of a cluster over `bus` that keeps history in the bus's store (`history = "bus"`). */
export const durableNodeConfig = (bus, prefix) => historyNodeConfig(bus, prefix, { leaseMs: 3000, history: 'bus' });

/** The `item` events (data `{i}`) a raw socket received on `ch`, as [i, position] in arrival order. */
export const historyItems = (s, ch) => s.frames.map((f) => f.msg)
  .filter((m) => m?.event === 'item' && m.channel === ch)
  .map((m) => [JSON.parse(m.data).i, m.position]);

export const epochOf = (position) => position.split(':')[0];
export const offsetOf = (position) => Number(position.split(':')[1]);

/**
 * A raw socket on `server` subscribed to `ch` (from `position`, when given), once the
 * subscription succeeded; it is added to `sockets`, for the caller to close.
 */
export async function subscribedRaw(server, ch, position, sockets) {
  const s = await RawSocket.open(server);
  sockets.push(s);
  await s.established();
  s.send({ event: 'pusher:subscribe', data: position ? { channel: ch, position } : { channel: ch } });
  await s.waitEvent('pusher_internal:subscription_succeeded', ch);
  return s;
}

/** A name unique within this process, for channels and events. */
let seq = 0;
export function unique(prefix) {
  seq += 1;
  return `${prefix}${process.pid}-${seq}`;
}

/**
 * Standard per-file lifecycle: call inside a describe() body. Returns a holder whose
 * `server`, `pool`, `sdk` fields are set by the before hook.
 */
export function useServer(hooks, options = {}) {
  const ctx = { server: null, pool: null, sdk: null };
  hooks.before(async () => {
    // `options` may be a (possibly async) function, evaluated here, when the config depends on
    // something started by an earlier `before` hook (e.g. a webhook receiver's port).
    ctx.server = await startServer(typeof options === 'function' ? await options() : options);
    ctx.pool = new ClientPool(ctx.server);
    ctx.sdk = sdkFor(ctx.server);
  });
  hooks.after(async () => {
    ctx.pool?.disconnectAll();
    if (ctx.server) {
      const result = await ctx.server.stop();
      assert.ok(!result.crashed, `plexus died during the tests (${inspect(result)}); stderr:\n${ctx.server.stderrTail()}`);
    }
  });
  return ctx;
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket client (for exact wire-format checks pusher-js would paper over)

/**
 * A raw Pusher-protocol socket. `frames` holds every received text frame as
 * `{ text, msg }` (msg = parsed JSON or undefined); `closed` resolves with `{ code, reason }`.
 */
export class RawSocket {
  static async open(server, key = APP1.key, query = 'protocol=7&client=js&version=8.6.0&flash=false', pathName) {
    const { default: WebSocket } = await import('ws');
    const url = `ws://127.0.0.1:${server.port}${pathName ?? `/app/${key}`}${query ? `?${query}` : ''}`;
    const s = new RawSocket(new WebSocket(url));
    await s.opened;
    return s;
  }

  constructor(ws) {
    this.ws = ws;
    this.frames = [];
    this.waiters = new Set();
    this.opened = new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode })));
    });
    this.opened.catch(() => {});
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    ws.on('error', () => {});
    ws.on('message', (data, isBinary) => {
      const text = data.toString();
      let msg;
      try {
        msg = JSON.parse(text);
      } catch {
        msg = undefined;
      }
      const frame = { text, msg, binary: isBinary };
      this.frames.push(frame);
      for (const w of this.waiters) {
        if (w.pred(frame.msg, frame)) {
          this.waiters.delete(w);
          w.resolve(frame);
        }
      }
    });
  }

  /** Resolves with the first (past or future) frame whose parsed message passes `pred`. */
  waitFor(pred, what, timeout = TIMEOUT) {
    const seen = this.frames.find((f) => pred(f.msg, f));
    if (seen) return Promise.resolve(seen);
    const w = { pred };
    const p = new Promise((resolve) => {
      w.resolve = resolve;
      this.waiters.add(w);
    });
    return withTimeout(p, timeout, `${what} (frames so far: ${this.frames.map((f) => f.text).join(' | ')})`).finally(
      () => this.waiters.delete(w),
    );
  }

  /** Waits for a frame with `event` (and `channel`, when given). */
  waitEvent(event, channel, timeout) {
    return this.waitFor((m) => m && m.event === event && (channel === undefined || m.channel === channel), `frame ${event}${channel ? ` on ${channel}` : ''}`, timeout);
  }

  send(obj) {
    this.ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj));
  }

  /** Waits for connection_established and returns the parsed data object. */
  async established() {
    const f = await this.waitEvent('pusher:connection_established');
    return typeof f.msg.data === 'string' ? JSON.parse(f.msg.data) : f.msg.data;
  }

  /** Frames received before the first frame that passes `pred`. */
  before(pred) {
    const i = this.frames.findIndex((f) => pred(f.msg, f));
    return i < 0 ? this.frames.slice() : this.frames.slice(0, i);
  }

  close() {
    try {
      this.ws.close(1000);
    } catch {
      // already closed
    }
  }

  get isOpen() {
    return this.ws.readyState === 1;
  }
}

/** Tracks raw sockets so an `after` hook can close them. */
export function rawPool(server) {
  const sockets = [];
  return {
    async open(...args) {
      const s = await RawSocket.open(server(), ...args);
      sockets.push(s);
      return s;
    },
    closeAll() {
      for (const s of sockets.splice(0)) s.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// User authentication (sign-in)

/** pusher-js `userAuthentication` option whose handler signs `userData` with `sdk`. */
export function sdkUserAuthenticator(sdk, userData) {
  return {
    customHandler: ({ socketId }, callback) => {
      try {
        callback(null, sdk.authenticateUser(socketId, userData));
      } catch (e) {
        callback(e, null);
      }
    },
  };
}

/**
 * Records every protocol message a pusher-js client's connection receives (`{event, channel,
 * data}` as pusher-js decoded it), in arrival order; `waitFor(pred, what)` resolves with the
 * first (past or future) message passing `pred`.
 */
export function recordMessages(client) {
  const messages = [];
  const waiters = new Set();
  client.connection.bind('message', (m) => {
    messages.push(m);
    for (const w of waiters) {
      if (w.pred(m)) {
        waiters.delete(w);
        w.resolve(m);
      }
    }
  });
  return {
    messages,
    waitFor(pred, what, timeout = TIMEOUT) {
      const seen = messages.find(pred);
      if (seen) return Promise.resolve(seen);
      const w = { pred };
      const p = new Promise((resolve) => {
        w.resolve = resolve;
        waiters.add(w);
      });
      return withTimeout(p, timeout, `${what} (messages so far: ${inspect(messages.map((m) => m.event))})`).finally(
        () => waiters.delete(w),
      );
    },
  };
}

/**
 * A pusher-js client that called `signin()` with `userData` signed by `sdk`, has received
 * `pusher:signin_success` and has its `#server-to-user-{id}` channel subscribed (which pusher-js
 * does by itself after sign-in). `beforeSignin(client)` runs before `signin()`, so bindings
 * (e.g. on `client.user.watchlist`) miss nothing. `client.messages` is a `recordMessages`.
 */
export async function signedInClient(pool, sdk, userData, { key = APP1.key, extra = {}, beforeSignin } = {}) {
  const client = pool.create(key, { ...extra, userAuthentication: sdkUserAuthenticator(sdk, userData) });
  client.messages = recordMessages(client);
  if (beforeSignin) beforeSignin(client);
  client.signin();
  await waitForState(client, 'connected');
  await client.messages.waitFor((m) => m.event === 'pusher:signin_success', `pusher:signin_success for ${userData.id}`);
  await waitUntil(() => client.user.user_data !== null && client.user.serverToUserChannel?.subscribed,
    `pusher-js to hold user_data and have #server-to-user-${userData.id} subscribed`);
  return client;
}

// ---------------------------------------------------------------------------------------------
// Webhook receiver

/**
 * A real HTTP webhook endpoint on 127.0.0.1 (any free port). Every request is checked with the
 * SDK (`sdk.webhook({headers, rawBody}).isValid()`) and recorded as
 * `{ status, headers, body, valid, events, time }`. The first `failFirst` requests are answered
 * 500, the rest 204. `events` lists every event of every request answered 2xx, in arrival order.
 */
export async function startWebhookReceiver(sdk, { failFirst = 0, path: urlPath = '/webhook' } = {}) {
  const { createServer } = await import('node:http');
  const requests = [];
  const events = [];
  const waiters = new Set();
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const wh = sdk.webhook({ headers: req.headers, rawBody: body });
      let valid = false;
      let whEvents;
      try {
        valid = wh.isValid();
        whEvents = wh.getEvents();
      } catch {
        // recorded as invalid below
      }
      const status = requests.length < failFirst ? 500 : 204;
      const entry = {
        method: req.method,
        url: req.url,
        status,
        headers: req.headers,
        body,
        valid,
        events: Array.isArray(whEvents) ? whEvents : [],
        time: wh.data?.time_ms,
        receivedAt: Date.now(),
      };
      requests.push(entry);
      if (status < 300) {
        for (const ev of entry.events) {
          events.push(ev);
          for (const w of waiters) {
            if (w.pred(ev)) {
              waiters.delete(w);
              w.resolve(ev);
            }
          }
        }
      }
      res.writeHead(status, { 'Content-Type': 'text/plain' });
      res.end(status < 300 ? '' : 'try again');
    });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}${urlPath}`,
    requests,
    events,
    /** Resolves with the first (past or future) delivered event passing `pred`. */
    waitFor(pred, what, timeout = TIMEOUT) {
      const seen = events.find(pred);
      if (seen) return Promise.resolve(seen);
      const w = { pred };
      const p = new Promise((resolve) => {
        w.resolve = resolve;
        waiters.add(w);
      });
      return withTimeout(p, timeout, `webhook ${what} (delivered so far: ${inspect(events)})`).finally(() =>
        waiters.delete(w),
      );
    },
    /** Delivered events before the first one passing `pred`. */
    before(pred) {
      const i = events.findIndex(pred);
      return i < 0 ? events.slice() : events.slice(0, i);
    },
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}
