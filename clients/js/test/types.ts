// Compile-time contract of the generated client: every line after `@ts-expect-error` must fail to
// compile. test/typecheck.mjs also checks that, without those markers, each of them does fail.
import { connect, type ChatMessage, type Welcome } from "./generated/chat.js";

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
