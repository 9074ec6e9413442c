// The generated client against the real chat example (examples/chat), started as a process on a
// free loopback port: typed calls and errors, room pushes, request timeouts, reconnect after the
// server restarts, and a close() that leaves nothing running. Every wait has a deadline.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createServer, type Socket } from "node:net";
import { once } from "node:events";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { WebSocket as NodeWebSocket } from "ws";

import { connect, type ChatMessage } from "./generated/chat.js";
import { backoffDelay, PlexusError } from "../src/index.js";
import { within } from "./util.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const CHAT_BIN = process.env.CHAT_BIN ?? path.join(here, "..", "..", "..", "..", "target", "release", "chat-example");
const WAIT = 10_000;

interface Chat {
  port: number;
  url: string;
  stop(): Promise<void>;
}

/** Starts the chat example on `port` (0: any free one) and waits until it listens. */
async function startChat(port = 0): Promise<Chat> {
  const child: ChildProcess = spawn(CHAT_BIN, [String(port)], { stdio: ["ignore", "pipe", "inherit"] });
  const listening = new Promise<number>((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      const match = /chat listening on [\d.]+:(\d+)/.exec(out);
      if (match) resolve(Number(match[1]));
    });
    child.once("exit", (code) => reject(new Error(`chat-example exited with ${code} before listening`)));
    child.once("error", reject);
  });
  const actual = await within(WAIT, "chat-example to listen", listening);
  return {
    port: actual,
    url: `ws://127.0.0.1:${actual}/app/app-key?protocol=7`,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = once(child, "exit");
      child.kill("SIGTERM");
      await within(WAIT, "chat-example to exit", exited);
    },
  };
}

/** Resolves on the next `connected` event of `client`. */
function nextConnected(client: { on(e: "connected", f: () => void): () => void }): Promise<void> {
  return new Promise((resolve) => {
    const off = client.on("connected", () => {
      off();
      resolve();
    });
  });
}

test("backoff doubles from 1 s to a 30 s cap, jittered within the upper half", () => {
  const low = () => 0;
  const high = () => 0.999999;
  assert.equal(backoffDelay(0, 1000, 30000, low), 500);
  assert.ok(backoffDelay(0, 1000, 30000, high) < 1000);
  assert.equal(backoffDelay(3, 1000, 30000, low), 4000);
  assert.equal(backoffDelay(5, 1000, 30000, low), 15000);
  assert.ok(backoffDelay(50, 1000, 30000, high) < 30000);
});

test("typed actions, typed errors and room pushes against the chat example", { timeout: 30_000 }, async () => {
  const server = await startChat();
  const alice = connect(server.url);
  const bob = connect(server.url);
  try {
    const aliceChat = alice.channel("chat", { room: "ts" });
    const bobChat = bob.channel("chat", { room: "ts" });
    assert.deepEqual(await within(WAIT, "alice's welcome", aliceChat.ready()), { room: "ts", messages: 0 });
    await within(WAIT, "bob's welcome", bobChat.ready());
    assert.deepEqual(await aliceChat.send("history"), []);

    await assert.rejects(aliceChat.send("send", { text: "too early" }), (e: PlexusError) => e.code === "unauthenticated");
    await assert.rejects(aliceChat.send("authenticate", { token: "nope" }), (e: PlexusError) => e.code === "bad_token");
    assert.deepEqual(await aliceChat.send("authenticate", { token: "token-alice" }), { user: "alice" });
    await assert.rejects(
      aliceChat.send("send", { text: 5 } as unknown as { text: string }),
      (e: PlexusError) => e.code === "invalid_input" && e.message.includes("`text`"),
    );

    const pushed = new Promise<ChatMessage>((resolve) => bobChat.subscribe("room:ts", resolve));
    const sent = await aliceChat.send("send", { text: "hello from TypeScript" });
    assert.deepEqual(sent, { id: 1, room: "ts", user: "alice", text: "hello from TypeScript" });
    assert.deepEqual(await within(WAIT, "bob to get alice's message", pushed), sent);
    assert.deepEqual(await bobChat.send("history"), [sent]);
  } finally {
    await alice.close();
    await bob.close();
    await server.stop();
  }
});

// The README's advice for Node 20 without --experimental-websocket: the `ws` package's
// WebSocket, passed as it is (test/types.ts checks that it type-checks without a cast).
test("the ws package's WebSocket works as options.WebSocket", { timeout: 30_000 }, async () => {
  const server = await startChat();
  const client = connect(server.url, { WebSocket: NodeWebSocket });
  try {
    const chat = client.channel("chat", { room: "ws" });
    assert.deepEqual(await within(WAIT, "the welcome over ws", chat.ready()), { room: "ws", messages: 0 });
    assert.deepEqual(await chat.send("authenticate", { token: "token-bob" }), { user: "bob" });
    const pushed = new Promise<ChatMessage>((resolve) => chat.subscribe("room:ws", resolve));
    const sent = await chat.send("send", { text: "over ws" });
    assert.deepEqual(await within(WAIT, "the push over ws", pushed), sent);
  } finally {
    await client.close();
    await server.stop();
  }
});

test("requests fail with `timeout` when no reply comes in time", { timeout: 20_000 }, async () => {
  // A TCP server that accepts and never answers the WebSocket handshake.
  const sockets = new Set<Socket>();
  const silent = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  silent.listen(0, "127.0.0.1");
  await once(silent, "listening");
  const { port } = silent.address() as { port: number };
  const client = connect(`ws://127.0.0.1:${port}/app/app-key`, { requestTimeoutMs: 200 });
  try {
    const started = Date.now();
    await assert.rejects(client.channel("chat").send("history"), (e: PlexusError) => e.code === "timeout");
    assert.ok(Date.now() - started < 5_000);
  } finally {
    await within(WAIT, "close() of a connecting client", client.close());
    for (const socket of sockets) socket.destroy();
    silent.close();
  }
});

test("after the server restarts, the client reconnects and reopens its channels", { timeout: 60_000 }, async () => {
  let server = await startChat();
  const options = { backoff: { initialMs: 100, maxMs: 1_000 } };
  const alice = connect(server.url, options);
  const bob = connect(server.url, options);
  try {
    const aliceChat = alice.channel("chat", { room: "restart" });
    const bobChat = bob.channel("chat", { room: "restart" });
    await within(WAIT, "first open", Promise.all([aliceChat.ready(), bobChat.ready()]));
    await aliceChat.send("authenticate", { token: "token-alice" });
    await aliceChat.send("send", { text: "before" });

    const reconnected = Promise.all([nextConnected(alice), nextConnected(bob)]);
    await server.stop();
    server = await startChat(server.port);
    await within(WAIT * 2, "both clients to reconnect", reconnected);
    // Reopened with the same params: the new server's welcome (its memory is empty).
    assert.deepEqual(await within(WAIT, "reopen", aliceChat.ready()), { room: "restart", messages: 0 });
    await within(WAIT, "bob's reopen", bobChat.ready());
    // The session was the old connection's.
    await assert.rejects(aliceChat.send("send", { text: "x" }), (e: PlexusError) => e.code === "unauthenticated");
    await aliceChat.send("authenticate", { token: "token-alice" });
    // Bob follows the room again without doing anything.
    const pushed = new Promise<ChatMessage>((resolve) => bobChat.subscribe("room:restart", resolve));
    const sent = await aliceChat.send("send", { text: "after" });
    assert.deepEqual(await within(WAIT, "the push after the restart", pushed), sent);
  } finally {
    await alice.close();
    await bob.close();
    await server.stop();
  }
});

test("close() settles what is pending and leaves no timers or sockets behind", { timeout: 30_000 }, async () => {
  const server = await startChat();
  try {
    const watched = (r: string) => r === "Timeout" || r === "TCPSocketWrap" || r === "TCPWRAP";
    const count = () => process.getActiveResourcesInfo().filter(watched).length;
    const before = count();
    const client = connect(server.url, { requestTimeoutMs: 5_000 });
    const chat = client.channel("chat", { room: "close" });
    await within(WAIT, "open", chat.ready());
    await chat.send("history");
    assert.ok(count() > before, "the live client holds a socket");
    // Left pending across close(): must fail with `closed`, not hang or time out later.
    const inflight = assert.rejects(
      chat.send("authenticate", { token: "token-bob" }),
      (e: PlexusError) => e.code === "closed",
    );
    await within(WAIT, "close()", client.close());
    await inflight;
    await assert.rejects(chat.send("history"), (e: PlexusError) => e.code === "closed");
    // Let the event loop drop handles closed in this turn.
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(count(), before, `left behind: ${process.getActiveResourcesInfo().join(", ")}`);
  } finally {
    await server.stop();
  }
});
