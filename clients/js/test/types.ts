// Compile-time contract of the generated client and the realtime face: every line after
// `@ts-expect-error` must fail to compile. test/typecheck.mjs also checks that, without those
// markers, each of them does fail.
import { connect, type ChatMessage, type Welcome } from "./generated/chat.js";
import { createClient, type EventMeta } from "../src/index.js";
import { WebSocket as NodeWebSocket } from "ws";

const client = connect("ws://127.0.0.1:1/app/app-key");
const chat = client.channel("chat", { room: "lobby" });

export async function wellTyped(): Promise<void> {
  const welcome: Welcome = await chat.ready();
  const me: { user: string } = await chat.send("authenticate", { token: "token-alice" });
  const sent: ChatMessage = await chat.send("send", { text: "hi" });
  const history: ChatMessage[] = await chat.send("history");
  chat.subscribe("room:lobby", (message: ChatMessage) => message.text.toUpperCase());
  void [welcome, me, sent, history];
}

export async function illTyped(): Promise<void> {
  // @ts-expect-error: no such channel
  client.channel("chats");
  // @ts-expect-error: opening params have no `rooms`
  client.channel("chat", { rooms: "x" });
  // @ts-expect-error: no such action
  await chat.send("sned", { text: "hi" });
  // @ts-expect-error: wrong field name
  await chat.send("send", { txt: "hi" });
  // @ts-expect-error: wrong field type
  await chat.send("send", { text: 5 });
  // @ts-expect-error: an extra field
  await chat.send("send", { text: "hi", extra: true });
  // @ts-expect-error: missing input
  await chat.send("authenticate");
  // @ts-expect-error: the output is a ChatMessage, not a string
  const wrong: string = await chat.send("send", { text: "hi" });
  // @ts-expect-error: not a topic of this channel
  chat.subscribe("todos:updated", () => {});
  // @ts-expect-error: topic events are ChatMessages
  chat.subscribe("room:lobby", (message: { title: string }) => message);
  void wrong;
}

// The realtime face: event names and data come from the `Events` map.
type Events = {
  "message.received": { chat: { id: string }; text: string };
  typing: { chat: { id: string } };
};
const stream = createClient({ url: "ws://127.0.0.1:1", appKey: "k", apiKey: "sk" }).realtime.events<Events>({
  channels: ["instance-1"],
  filters: { events: ["message.received"], where: { "chat.id": "c1", n: 2, deep: { ok: [true, null] } } },
});

export function realtimeWellTyped(): void {
  const off = stream.on("message.received", (message, meta: EventMeta) => {
    const text: string = message.text;
    const position: string | null = meta.position;
    void [text, position, meta.channel];
  });
  off();
  stream.onStatus((status) => (status.state === "reconnecting" ? status.delayMs + status.attempt : 0));
  stream.onGap((gap) => gap.recovered);
  createClient({ url: "ws://h", appKey: "k", token: async () => "t" });
}

export function realtimeIllTyped(): void {
  // @ts-expect-error: not an event of the map
  stream.on("message.recieved", () => {});
  // @ts-expect-error: message.received data has no `title`
  stream.on("message.received", (message) => message.title);
  // @ts-expect-error: typing data is not a message
  stream.on("typing", (data: { text: string }) => data);
  // @ts-expect-error: filters name events of the map only
  createClient({ url: "ws://h", appKey: "k" }).realtime.events<Events>({ channels: ["c"], filters: { events: ["nope"] } });
  // @ts-expect-error: where values are JSON
  createClient({ url: "ws://h", appKey: "k" }).realtime.events<Events>({ channels: ["c"], filters: { where: { a: () => 1 } } });
  // @ts-expect-error: a token is a string or a function returning one
  createClient({ url: "ws://h", appKey: "k", token: 42 });
}

// Node 20 without `--experimental-websocket`: the `ws` package's WebSocket is accepted as it is,
// by both faces (no cast), and so is the platform's; something that is not a socket is not.
export function socketsAccepted(): void {
  connect("ws://127.0.0.1:1/app/app-key", { WebSocket: NodeWebSocket });
  createClient({ url: "ws://h", appKey: "k", WebSocket: NodeWebSocket });
  connect("ws://127.0.0.1:1/app/app-key", { WebSocket: globalThis.WebSocket });
  // @ts-expect-error: a class without the socket's members is not a WebSocket
  connect("ws://127.0.0.1:1/app/app-key", { WebSocket: class { constructor(readonly url: string) {} } });
}
