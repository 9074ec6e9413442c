// The realtime face (createClient().realtime.events) against a real `plexus serve`, started by
// the test with an app that takes API keys, scopes a channel prefix and keeps history; events
// are published through the signed HTTP API. Connection trouble is made by a TCP proxy between
// client and server that the test can cut, make refuse, or freeze. Every wait has a deadline.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from "node:fs";
import { createServer, connect as tcpConnect, type Server, type Socket } from "node:net";
import { once } from "node:events";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { within } from "./util.js";

import {
  createClient,
  PlexusError,
  SubscriptionError,
  type ConnectionStatus,
  type CreateClientOptions,
  type EventMeta,
  type EventStream,
  type Resume,
} from "../src/index.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const PLEXUS_BIN = process.env.PLEXUS_BIN ?? path.join(here, "..", "..", "..", "..", "target", "release", "plexus");
const WAIT = 10_000;
const APP = { id: "stream-app", key: "stream-key", secret: "stream-secret" };
const READER = "sk_test_reader_0123456789";

/** The server both SDKs' realtime tests use (the Rust client's tests read the same file). */
const CONFIG = readFileSync(path.join(here, "..", "..", "..", "..", "tests", "fixtures", "realtime-server.toml"), "utf8");

type Events = {
  "message.received": { chat: { id: string }; text: string };
  typing: { chat: { id: string } };
  item: { i: number };
};

/** Resolves once `check()` holds, checking after each call of the returned `poke`. */
function until(what: string, check: () => boolean): { poke: () => void; done: Promise<void> } {
  let resolve!: () => void;
  const done = new Promise<void>((r) => (resolve = r));
  const poke = () => {
    if (check()) resolve();
  };
  return { poke, done: within(WAIT, what, done) };
}

interface Plexus {
  port: number;
  stop(): Promise<void>;
}

const dirs: string[] = [];

/** Starts `plexus serve` with CONFIG on `port` (0: any free one) and waits until it listens. */
async function startPlexus(port = 0): Promise<Plexus> {
  const dir = mkdtempSync(path.join(tmpdir(), "plexus-realtime-"));
  dirs.push(dir);
  const file = path.join(dir, "plexus.toml");
  writeFileSync(file, CONFIG);
  const child: ChildProcess = spawn(PLEXUS_BIN, ["serve", "--config", file, "--port", String(port)], {
    cwd: dir,
    stdio: ["ignore", "pipe", "inherit"],
  });
  const listening = new Promise<number>((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      const match = /plexus listening on [\d.]+:(\d+)/.exec(out);
      if (match) resolve(Number(match[1]));
    });
    child.once("exit", (code) => reject(new Error(`plexus exited with ${code} before listening`)));
    child.once("error", reject);
  });
  const actual = await within(WAIT, "plexus to listen", listening);
  return {
    port: actual,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, "exit");
      child.kill("SIGTERM");
      await within(WAIT, "plexus to exit", exited);
    },
  };
}

/** Publishes through the HTTP API, signed as the Pusher SDKs sign. */
async function publish(port: number, channel: string, name: string, data: unknown): Promise<void> {
  const body = JSON.stringify({ name, channels: [channel], data: JSON.stringify(data) });
  const route = `/apps/${APP.id}/events`;
  const params = new URLSearchParams({
    auth_key: APP.key,
    auth_timestamp: String(Math.floor(Date.now() / 1000)),
    auth_version: "1.0",
    body_md5: createHash("md5").update(body).digest("hex"),
  });
  params.sort();
  const query = decodeURIComponent(params.toString());
  const signature = createHmac("sha256", APP.secret).update(`POST\n${route}\n${query}`).digest("hex");
  const response = await fetch(`http://127.0.0.1:${port}${route}?${query}&auth_signature=${signature}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
  });
  assert.equal(response.status, 200, `publish answered ${response.status}: ${await response.text()}`);
}

/** A TCP proxy to `port` that can drop every connection, refuse new ones, or go silent. */
interface Proxy {
  port: number;
  /** Server-to-client bytes seen so far (server frames are unmasked, so text is readable). */
  downstream: string;
  onData: () => void;
  cut(): void;
  refuse(on: boolean): void;
  freeze(on: boolean): void;
  close(): Promise<void>;
}

async function startProxy(target: number): Promise<Proxy> {
  const pairs = new Set<[Socket, Socket]>();
  let refusing = false;
  let frozen = false;
  const proxy: Proxy = {
    port: 0,
    downstream: "",
    onData: () => {},
    cut() {
      for (const [a, b] of pairs) {
        a.destroy();
        b.destroy();
      }
      pairs.clear();
    },
    refuse(on) {
      refusing = on;
    },
    freeze(on) {
      frozen = on;
    },
    async close() {
      proxy.cut();
      server.close();
      await once(server, "close");
    },
  };
  const server: Server = createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = tcpConnect(target, "127.0.0.1");
    const pair: [Socket, Socket] = [client, upstream];
    pairs.add(pair);
    // Frozen: what was in flight is dropped, as on a dead link (new connections are not frozen).
    let dead = frozen;
    const isDead = () => dead || (dead = frozen);
    client.on("data", (chunk) => isDead() || upstream.write(chunk));
    upstream.on("data", (chunk) => {
      if (isDead()) return;
      proxy.downstream += chunk.toString("latin1");
      client.write(chunk);
      proxy.onData();
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.on("close", end).on("error", end);
    upstream.on("close", end).on("error", end);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  proxy.port = (server.address() as { port: number }).port;
  return proxy;
}

let plexus: Plexus;
let seq = 0;
const unique = (prefix: string) => `${prefix}${process.pid}-${++seq}-${randomBytes(3).toString("hex")}`;

before(async () => {
  plexus = await startPlexus();
});

after(async () => {
  await plexus.stop();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function options(port: number, extra: Partial<CreateClientOptions> = {}): CreateClientOptions {
  return {
    url: `ws://127.0.0.1:${port}`,
    appKey: APP.key,
    apiKey: READER,
    backoff: { initialMs: 20, maxMs: 80, jitter: false },
    ...extra,
  };
}

/** Every status and every event of `name` the stream reports, with a poke on each. */
function record<N extends keyof Events & string>(stream: EventStream<Events>, name: N) {
  const events: { data: Events[N]; meta: EventMeta }[] = [];
  const statuses: ConnectionStatus[] = [];
  const resumes: Resume[] = [];
  const errors: PlexusError[] = [];
  const waiters = new Set<() => void>();
  const poke = () => waiters.forEach((w) => w());
  stream.on(name, (data, meta) => {
    events.push({ data, meta });
    poke();
  });
  stream.onStatus((status) => {
    statuses.push(status);
    poke();
  });
  stream.onResume((resume) => {
    resumes.push(resume);
    poke();
  });
  // Errors poke too: a refusal may arrive after the promise a test awaited has already settled.
  stream.onError((error) => {
    errors.push(error);
    poke();
  });
  const wait = (what: string, check: () => boolean) => {
    const { poke: p, done } = until(what, check);
    waiters.add(p);
    p();
    return done.finally(() => waiters.delete(p));
  };
  return { events, statuses, resumes, errors, wait };
}

test("typed .on gets each published event with its channel and position", { timeout: 30_000 }, async () => {
  const [a, b] = [unique("feed-"), unique("feed-")];
  const stream = createClient(options(plexus.port)).realtime.events<Events>({ channels: [a, b] });
  const got = record(stream, "message.received");
  try {
    await within(WAIT, "both channels subscribed", stream.connect());
    assert.equal(stream.status.state, "open");
    await publish(plexus.port, a, "message.received", { chat: { id: "c1" }, text: "on a" });
    await publish(plexus.port, b, "message.received", { chat: { id: "c2" }, text: "on b" });
    await got.wait("two messages", () => got.events.length === 2);
    assert.deepEqual(
      got.events.map((e) => [e.data, e.meta.channel, e.meta.event, e.meta.replayed]),
      [
        [{ chat: { id: "c1" }, text: "on a" }, a, "message.received", false],
        [{ chat: { id: "c2" }, text: "on b" }, b, "message.received", false],
      ],
    );
    for (const { meta } of got.events) assert.match(meta.position ?? "", /^\d+:\d+$/);
  } finally {
    await stream.close();
  }
});

test("filters.events and filters.where keep only matching events", { timeout: 30_000 }, async () => {
  const channel = unique("feed-");
  const stream = createClient(options(plexus.port)).realtime.events<Events>({
    channels: [channel],
    filters: { events: ["message.received"], where: { "chat.id": "c1" } },
  });
  const got = record(stream, "message.received");
  const typing: unknown[] = [];
  stream.on("typing", (data) => typing.push(data));
  try {
    await within(WAIT, "subscribed", stream.connect());
    // Published first, in order on one channel: had they passed, they would arrive first.
    await publish(plexus.port, channel, "typing", { chat: { id: "c1" } });
    await publish(plexus.port, channel, "message.received", { chat: { id: "c2" }, text: "other chat" });
    await publish(plexus.port, channel, "message.received", { chat: { id: "c1" }, text: "match" });
    await got.wait("the matching message", () => got.events.length > 0);
    assert.deepEqual(got.events.map((e) => e.data.text), ["match"]);
    assert.deepEqual(typing, []);
  } finally {
    await stream.close();
  }
});

test("a channel outside the key's grant or scope is refused with the server's reason", { timeout: 30_000 }, async () => {
  const granted = unique("feed-");
  const [outside, unscoped] = [unique("secret-"), unique("news-")];
  const stream = createClient(options(plexus.port)).realtime.events<Events>({
    channels: [granted, outside, unscoped],
  });
  const got = record(stream, "item");
  const errors = got.errors;
  try {
    const refused = await within(WAIT, "connect() to fail", stream.connect().then(() => null, (e: unknown) => e));
    assert.ok(refused instanceof SubscriptionError, `connect() rejected with ${String(refused)}`);
    await got.wait("both refusals", () => errors.length >= 2);
    const byChannel = new Map(errors.map((e) => [(e as SubscriptionError).channel, e as SubscriptionError]));
    assert.equal(byChannel.get(outside)?.status, 403);
    assert.match(byChannel.get(outside)?.message ?? "", /grants no access to channel/);
    assert.equal(byChannel.get(unscoped)?.status, 403);
    assert.match(byChannel.get(unscoped)?.message ?? "", /lacks scope "news:read"/);
    assert.equal(errors.length, 2, `only the refusals, once each: ${errors.map((e) => e.message).join("; ")}`);
    // The socket stays: the granted channel still delivers.
    await publish(plexus.port, granted, "item", { i: 1 });
    await got.wait("an event on the granted channel", () => got.events.length === 1);
  } finally {
    await stream.close();
  }
});

test("after a dropped connection the stream backs off, resumes and gets the missed events once, in order", { timeout: 60_000 }, async () => {
  const proxy = await startProxy(plexus.port);
  const [channel, quiet] = [unique("feed-"), unique("feed-")];
  const stream = createClient(options(proxy.port)).realtime.events<Events>({ channels: [channel, quiet] });
  const got = record(stream, "item");
  const gaps: Resume[] = [];
  stream.onGap((gap) => gaps.push(gap));
  const reconnects = () => got.statuses.filter((s) => s.state === "reconnecting");
  const opens = () => got.statuses.filter((s) => s.state === "open").length;
  try {
    await within(WAIT, "subscribed", stream.connect());
    await publish(plexus.port, channel, "item", { i: 0 });
    await got.wait("item 0", () => got.events.length === 1);
    const seen = got.events[0]!.meta.position;

    proxy.refuse(true);
    proxy.cut();
    await got.wait("four failed attempts", () => reconnects().length >= 4);
    for (let i = 1; i <= 3; i++) await publish(plexus.port, channel, "item", { i });
    assert.deepEqual(reconnects().slice(0, 4).map((s) => s.state === "reconnecting" && s.delayMs), [20, 40, 80, 80]);
    assert.deepEqual(
      reconnects().slice(0, 4).map((s) => s.state === "reconnecting" && s.attempt),
      [1, 2, 3, 4],
    );
    proxy.refuse(false);

    await got.wait("both channels resumed", () => got.resumes.length === 2);
    const resumed = got.resumes.find((r) => r.channel === channel)!;
    assert.equal(resumed.recovered, true);
    assert.equal(resumed.from, seen);
    assert.deepEqual(
      got.events.map((e) => [e.data.i, e.meta.replayed]),
      [[0, false], [1, true], [2, true], [3, true]],
    );
    assert.equal(resumed.position, got.events[3]!.meta.position);
    // Nothing had arrived on the quiet channel, so there was no position to resume from.
    assert.deepEqual(gaps, [{ channel: quiet, recovered: false, position: null, from: null }]);

    await publish(plexus.port, channel, "item", { i: 4 });
    await got.wait("a live event after the resume", () => got.events.length === 5);
    assert.deepEqual(got.events.map((e) => e.data.i), [0, 1, 2, 3, 4], "each event once");
    assert.equal(got.events[4]!.meta.replayed, false);

    // The backoff starts over after a successful connection.
    const before = reconnects().length;
    proxy.cut();
    await got.wait("reconnected again", () => opens() === 3);
    const again = reconnects().slice(before);
    assert.equal(again[0]?.state === "reconnecting" && again[0].delayMs, 20);
  } finally {
    await stream.close();
    await proxy.close();
  }
});

test("filters hold for events replayed after a reconnect too", { timeout: 30_000 }, async () => {
  const proxy = await startProxy(plexus.port);
  const channel = unique("feed-");
  const stream = createClient(options(proxy.port)).realtime.events<Events>({
    channels: [channel],
    filters: { where: { "chat.id": "c1" } },
  });
  const got = record(stream, "message.received");
  try {
    await within(WAIT, "subscribed", stream.connect());
    await publish(plexus.port, channel, "message.received", { chat: { id: "c1" }, text: "first" });
    await got.wait("the first match", () => got.events.length === 1);
    proxy.refuse(true);
    proxy.cut();
    await got.wait("a failed attempt", () => got.statuses.some((s) => s.state === "reconnecting"));
    // The server replays its history unfiltered; the stream must not let these through.
    await publish(plexus.port, channel, "message.received", { chat: { id: "c2" }, text: "other chat" });
    await publish(plexus.port, channel, "message.received", { chat: { id: "c1" }, text: "second" });
    proxy.refuse(false);
    await got.wait("the resume", () => got.resumes.length === 1);
    assert.equal(got.resumes[0]!.recovered, true);
    assert.deepEqual(got.events.map((e) => [e.data.text, e.meta.replayed]), [["first", false], ["second", true]]);
  } finally {
    await stream.close();
    await proxy.close();
  }
});

test("a silent connection is pinged, and dropped when no reply comes", { timeout: 30_000 }, async () => {
  const proxy = await startProxy(plexus.port);
  const channel = unique("feed-");
  const stream = createClient(options(proxy.port, { activityTimeoutMs: 100, pongTimeoutMs: 200 })).realtime.events<Events>({
    channels: [channel],
  });
  const got = record(stream, "item");
  const pongs = () => proxy.downstream.split("pusher:pong").length - 1;
  try {
    await within(WAIT, "subscribed", stream.connect());
    await within(WAIT, "the server to answer two of our pings", new Promise<void>((resolve) => {
      proxy.onData = () => pongs() >= 2 && resolve();
      proxy.onData();
    }));
    assert.deepEqual(got.statuses.filter((s) => s.state === "reconnecting"), [], "answered pings keep the connection");

    proxy.freeze(true);
    await got.wait("the dead connection to be given up", () => got.statuses.some((s) => s.state === "reconnecting"));
    const dropped = got.statuses.find((s) => s.state === "reconnecting");
    assert.ok(dropped?.state === "reconnecting" && /no reply to our ping/.test(dropped.reason), JSON.stringify(dropped));
    proxy.freeze(false);
    await got.wait("a new connection", () => got.resumes.length === 1);
    await publish(plexus.port, channel, "item", { i: 1 });
    await got.wait("an event on it", () => got.events.length === 1);
  } finally {
    await stream.close();
    await proxy.close();
  }
});

test("after a server restart the stream reconnects at once, then reports recovered: false", { timeout: 60_000 }, async () => {
  let server = await startPlexus();
  const channel = unique("feed-");
  const stream = createClient(options(server.port)).realtime.events<Events>({ channels: [channel] });
  const got = record(stream, "item");
  const gaps: Resume[] = [];
  stream.onGap((gap) => gaps.push(gap));
  try {
    await within(WAIT, "subscribed", stream.connect());
    await publish(server.port, channel, "item", { i: 0 });
    await got.wait("item 0", () => got.events.length === 1);
    const seen = got.events[0]!.meta.position;

    await server.stop();
    server = await startPlexus(server.port);
    await got.wait("the resume on the new server", () => got.resumes.length === 1);
    const first = got.statuses.find((s) => s.state === "reconnecting");
    assert.deepEqual(first?.state === "reconnecting" && [first.code, first.delayMs], [4200, 0], "4200: at once");
    // The history was the old process's: the gap is reported, not hidden.
    assert.equal(gaps.length, 1);
    assert.equal(gaps[0]!.recovered, false);
    assert.equal(gaps[0]!.from, seen);
    assert.match(gaps[0]!.position ?? "", /^\d+:\d+$/);
    await publish(server.port, channel, "item", { i: 1 });
    await got.wait("item 1", () => got.events.length === 2);
    assert.notEqual(got.events[1]!.meta.position?.split(":")[0], seen?.split(":")[0], "a new epoch");
  } finally {
    await stream.close();
    await server.stop();
  }
});

test("final closes end the stream; a 4009 with a token provider fetches a new token and reconnects", { timeout: 30_000 }, async () => {
  // 4001: no such app.
  const unknown = createClient(options(plexus.port, { appKey: "no-such-key" })).realtime.events<Events>({
    channels: [unique("feed-")],
  });
  const lost = record(unknown, "item");
  unknown.onError(() => {});
  const failure = await within(WAIT, "connect() to fail", unknown.connect().then(() => null, (e: unknown) => e));
  assert.ok(failure instanceof PlexusError && failure.code === "closed", String(failure));
  assert.deepEqual(lost.statuses.map((s) => s.state === "closed" ? `closed ${s.code}` : s.state), ["connecting", "closed 4001"]);
  await unknown.close();

  // 4009 (the signin app's authentication timeout) with a fixed token: final.
  const signin = { appKey: "signin-key", apiKey: undefined };
  const fixed = createClient(options(plexus.port, { ...signin, token: "static" })).realtime.events<Events>({
    channels: [unique("feed-")],
  });
  const fixedGot = record(fixed, "item");
  try {
    await within(WAIT, "subscribed", fixed.connect());
    await fixedGot.wait("the 4009 close", () => fixedGot.statuses.some((s) => s.state === "closed"));
    assert.deepEqual(
      fixedGot.statuses.map((s) => s.state === "closed" ? `closed ${s.code}` : s.state),
      ["connecting", "open", "closed 4009"],
    );
  } finally {
    await fixed.close();
  }

  // The same close with a provider: a fresh token, a backoff, a new connection.
  let calls = 0;
  const provided = createClient(
    options(plexus.port, { ...signin, token: async () => `token-${++calls}` }),
  ).realtime.events<Events>({ channels: [unique("feed-")] });
  const providedGot = record(provided, "item");
  provided.onError(() => {});
  try {
    await within(WAIT, "subscribed", provided.connect());
    await providedGot.wait("a second connection", () => providedGot.statuses.filter((s) => s.state === "open").length === 2);
    const retry = providedGot.statuses.find((s) => s.state === "reconnecting");
    assert.deepEqual(retry?.state === "reconnecting" && [retry.code, retry.delayMs], [4009, 20]);
    assert.equal(calls, 2, "the provider was asked again before reconnecting");
  } finally {
    await provided.close();
  }
});

test("close() leaves no timers or sockets, connected or waiting to reconnect", { timeout: 30_000 }, async () => {
  const watched = (r: string) => r === "Timeout" || r === "TCPSocketWrap" || r === "TCPWRAP";
  const count = () => process.getActiveResourcesInfo().filter(watched).length;
  const settle = () => new Promise((resolve) => setImmediate(resolve));
  const proxy = await startProxy(plexus.port);
  try {
    await settle();
    const baseline = count();

    const open = createClient(options(plexus.port, { activityTimeoutMs: 60_000 })).realtime.events<Events>({
      channels: [unique("feed-")],
    });
    await within(WAIT, "subscribed", open.connect());
    assert.ok(count() > baseline, "the live stream holds a socket and its ping timer");
    await within(WAIT, "close()", open.close());
    await settle();
    assert.equal(count(), baseline, `left behind: ${process.getActiveResourcesInfo().join(", ")}`);

    proxy.refuse(true);
    const waiting = createClient(options(proxy.port, { backoff: { initialMs: 60_000, jitter: false } })).realtime.events<Events>({
      channels: [unique("feed-")],
    });
    const got = record(waiting, "item");
    waiting.onError(() => {});
    const connecting = waiting.connect().catch((e: unknown) => e);
    await got.wait("a reconnect scheduled a minute away", () => got.statuses.some((s) => s.state === "reconnecting"));
    await within(WAIT, "close()", waiting.close());
    const ended = await connecting;
    assert.ok(ended instanceof PlexusError && ended.code === "closed");
    assert.deepEqual(got.statuses.at(-1), { state: "closed", code: 1000, reason: "closed by the client" });
    await settle();
    assert.equal(count(), baseline + 0, `left behind: ${process.getActiveResourcesInfo().join(", ")}`);
  } finally {
    await proxy.close();
  }
});
