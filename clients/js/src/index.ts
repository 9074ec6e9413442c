/**
 * @plexus/channels — the TypeScript SDK: this module is the runtime of the generated typed client
 * for plexus typed channels (`Client`); `realtime.ts` is the event-stream face (`createClient`),
 * `connection.ts` the reconnecting Pusher socket both stand on.
 *
 * One WebSocket (the Pusher endpoint `/app/{key}`) carries every typed channel; the wire format is
 * docs/typed-channels.md. The client
 * - opens each channel the application asked for, and opens them again after every reconnect;
 * - sends actions as `plexus:action` with a ref and settles the promise with the `plexus:reply`
 *   (output, or a `PlexusError` with the server's code), or `timeout` after `requestTimeoutMs`;
 * - reconnects with exponential backoff and jitter (1 s doubling to a 30 s cap, each delay drawn
 *   from its upper half), at once after 4200–4299, never after a close the server marks final
 *   (4000–4099), and answers the server's `pusher:ping` (all of it `Connection`'s, shared with
 *   the `realtime` event streams of `createClient`);
 * - on `close()`, settles everything pending, clears every timer and resolves once the socket has
 *   closed, so nothing keeps a Node process alive.
 *
 * The session is the connection's: after a reconnect, authenticate again (listen for `connected`).
 */

import { Connection, socketFactory, type Frame, type SocketFactory } from "./connection.js";
import { PlexusError } from "./errors.js";

export {
  backoffCeiling,
  backoffDelay,
  type ConnectionStatus,
  type Frame,
  type SocketFactory,
  type SocketLike,
} from "./connection.js";
export { PlexusError, SubscriptionError } from "./errors.js";
export * from "./realtime.js";

/** One action's types. */
export interface ActionSpec {
  input: unknown;
  output: unknown;
}

/** One channel's types, as the generated `Channels` map gives them. */
export interface ChannelSpec {
  params: unknown;
  welcome: unknown;
  actions: Record<string, ActionSpec>;
  topics: Record<string, unknown>;
}

export type ChannelMap = Record<string, ChannelSpec>;

export interface ClientOptions {
  /** WebSocket constructor; default `globalThis.WebSocket`. */
  WebSocket?: SocketFactory;
  /** Per-request deadline, including time spent waiting for a connection. Default 10 000. */
  requestTimeoutMs?: number;
  /** Reconnect delays: `initialMs` (default 1 000) doubling up to `maxMs` (default 30 000). */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Source of jitter in [0, 1); default `Math.random`. */
  random?: () => number;
}

type InputArgs<I> = [I] extends [void] ? [input?: null] : [input: I];
type Listener = (data: unknown) => void;

interface Pending {
  resolve: (data: ReplyData) => void;
  reject: (error: PlexusError) => void;
  timer: ReturnType<typeof setTimeout>;
  frame: Frame;
  /** Sent on the current socket (a drop rejects it); queued ones wait for the next connection. */
  sent: boolean;
}

interface ReplyData {
  ref: string;
  ok: boolean;
  id?: string;
  output?: unknown;
  error?: { code: string; message: string };
}

type ClientEvent = "connected" | "disconnected";

/** A typed-channel client over one WebSocket. */
export class Client<C extends ChannelMap> {
  private readonly connection: Connection;
  private readonly timeoutMs: number;
  private closing = false;
  private nextRef = 0;
  private readonly pending = new Map<string, Pending>();
  /** Requests waiting for a connection, in order. */
  private queue: string[] = [];
  private readonly channels = new Map<string, TypedChannel<ChannelSpec>>();
  private readonly listeners = new Map<ClientEvent, Set<() => void>>();

  constructor(url: string, options: ClientOptions = {}) {
    this.timeoutMs = options.requestTimeoutMs ?? 10_000;
    this.connection = new Connection(
      {
        url: () => url,
        Socket: socketFactory(options.WebSocket),
        initialMs: options.backoff?.initialMs ?? 1_000,
        maxMs: options.backoff?.maxMs ?? 30_000,
        jitter: true,
        random: options.random ?? Math.random,
        activityTimeoutMs: Infinity,
        pongTimeoutMs: 30_000,
        retryFinal: () => false,
      },
      {
        open: () => this.opened(),
        frame: (frame) => this.receive(frame),
        drop: (wasOpen) => this.dropped(wasOpen),
        status: (status) => {
          if (status.state === "closed" && !this.closing) {
            // The server says reconnecting cannot help (unknown app key, app disabled, …).
            this.closing = true;
            const message = `the server refused the connection: ${status.code} ${status.reason}`;
            this.failPending(() => true, "closed", message);
          }
        },
        error: () => {},
      },
    );
    this.connection.start();
  }

  /** Whether the server has accepted the current connection. */
  get connected(): boolean {
    return this.connection.open;
  }

  /** The channel `name`, opened with `params` now and after every reconnect. Calling it again
   * returns the same channel. */
  channel<N extends keyof C & string>(name: N, params?: C[N]["params"]): TypedChannel<C[N]> {
    let channel = this.channels.get(name);
    if (!channel) {
      channel = new TypedChannel<ChannelSpec>(this as unknown as Client<ChannelMap>, name, params ?? {});
      this.channels.set(name, channel);
      if (this.connection.open) {
        channel.open();
      }
    }
    return channel as unknown as TypedChannel<C[N]>;
  }

  /** `connected`: the server accepted a (re)connection and channels are being reopened;
   * `disconnected`: the socket dropped. Returns a function that removes the listener. */
  on(event: ClientEvent, listener: () => void): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Stops for good: pending requests fail with `closed`, timers are cleared, and the promise
   * resolves once the socket is closed. */
  close(): Promise<void> {
    this.closing = true;
    this.failPending(() => true, "closed", "the client was closed");
    this.queue = [];
    return this.connection.close();
  }

  /** @internal Sends a request and settles with its reply. */
  request(event: string, data: Record<string, unknown>): Promise<ReplyData> {
    if (this.closing) {
      return Promise.reject(new PlexusError("closed", "the client was closed"));
    }
    const ref = String(++this.nextRef);
    const frame = { event, data: { ...data, ref } };
    return new Promise<ReplyData>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        this.queue = this.queue.filter((r) => r !== ref);
        reject(new PlexusError("timeout", `no reply to ${event} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.pending.set(ref, { resolve, reject, timer, frame, sent: false });
      if (this.connection.open) {
        this.transmit(ref);
      } else {
        this.queue.push(ref);
      }
    });
  }

  private transmit(ref: string): void {
    const pending = this.pending.get(ref);
    if (pending && this.connection.send(pending.frame)) {
      pending.sent = true;
    }
  }

  private emit(event: ClientEvent): void {
    for (const listener of this.listeners.get(event) ?? []) {
      listener();
    }
  }

  private failPending(which: (p: Pending) => boolean, code: string, message: string): void {
    for (const [ref, pending] of this.pending) {
      if (which(pending)) {
        clearTimeout(pending.timer);
        this.pending.delete(ref);
        pending.reject(new PlexusError(code, message));
      }
    }
  }

  private opened(): void {
    // Opens first, then what waited: the server serves a connection's requests in order.
    for (const channel of this.channels.values()) {
      channel.open();
    }
    for (const ref of this.queue.splice(0)) {
      this.transmit(ref);
    }
    this.emit("connected");
  }

  private dropped(wasOpen: boolean): void {
    // What was sent on this socket may or may not have run: the caller decides to retry.
    this.failPending((p) => p.sent, "disconnected", "the connection dropped before the reply");
    for (const channel of this.channels.values()) {
      channel.dropped();
    }
    if (wasOpen) {
      this.emit("disconnected");
    }
  }

  private receive(frame: Frame): void {
    switch (frame.event) {
      case "plexus:reply": {
        const data = frame.data as ReplyData;
        const pending = this.pending.get(String(data.ref));
        if (pending) {
          clearTimeout(pending.timer);
          this.pending.delete(String(data.ref));
          pending.resolve(data);
        }
        break;
      }
      case "plexus:event": {
        const data = frame.data as { channel: string; topic?: string; data: unknown };
        this.channels.get(data.channel)?.deliver(data.topic, data.data);
        break;
      }
      case "plexus:closed": {
        const data = frame.data as { channel: string };
        this.channels.get(data.channel)?.stop(`the server closed channel ${data.channel}`);
        break;
      }
      default:
        break;
    }
  }
}

/** One typed channel of a [`Client`]. */
export class TypedChannel<S extends ChannelSpec> {
  private readonly topicListeners = new Map<string, Set<Listener>>();
  private readonly eventListeners = new Set<Listener>();
  private opened: Promise<S["welcome"]> | null = null;
  /** Callers of ready() while no open is under way: settled by the next open. */
  private waiting: { resolve: (w: S["welcome"]) => void; reject: (e: unknown) => void }[] = [];
  private wanted = true;

  /** @internal */
  constructor(
    private readonly client: Client<ChannelMap>,
    readonly name: string,
    private readonly params: unknown,
  ) {}

  /** The welcome of the current open (what the channel's `on_connect` returned). */
  ready(): Promise<S["welcome"]> {
    if (!this.wanted) {
      return Promise.reject(new PlexusError("closed", `channel ${this.name} was closed`));
    }
    return this.opened ?? new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  /** Calls `action` with `input`; resolves with its output, rejects with a `PlexusError`. */
  async send<A extends keyof S["actions"] & string>(
    action: A,
    ...args: InputArgs<S["actions"][A]["input"]>
  ): Promise<S["actions"][A]["output"]> {
    if (!this.wanted) {
      throw new PlexusError("closed", `channel ${this.name} was closed`);
    }
    const reply = await this.client.request("plexus:action", {
      channel: this.name,
      action,
      input: args[0] ?? null,
    });
    if (!reply.ok) {
      throw new PlexusError(reply.error?.code ?? "internal", reply.error?.message ?? "request failed");
    }
    return reply.output as S["actions"][A]["output"];
  }

  /** Calls `listener` with every event of `topic` this connection follows (the server decides
   * what it follows). Returns a function that removes the listener. */
  subscribe<T extends keyof S["topics"] & string>(topic: T, listener: (event: S["topics"][T]) => void): () => void {
    let set = this.topicListeners.get(topic);
    if (!set) {
      set = new Set();
      this.topicListeners.set(topic, set);
    }
    const entry = listener as Listener;
    set.add(entry);
    return () => set.delete(entry);
  }

  /** Calls `listener` with every event sent to this channel alone (`ctx.send` on the server). */
  onEvent(listener: (data: unknown) => void): () => void {
    this.eventListeners.add(listener);
    return () => this.eventListeners.delete(listener);
  }

  /** Closes the channel (not the connection); it is not reopened after reconnects. */
  async close(): Promise<void> {
    this.stop(`channel ${this.name} was closed`);
    const reply = await this.client.request("plexus:close", { channel: this.name });
    if (!reply.ok && reply.error?.code !== "not_open") {
      throw new PlexusError(reply.error?.code ?? "internal", reply.error?.message ?? "close failed");
    }
  }

  /** @internal Sends `plexus:open` (on creation when connected, and after each connection),
   * unless the channel was closed. */
  open(): void {
    if (!this.wanted) {
      return;
    }
    const opened = this.client
      .request("plexus:open", { channel: this.name, params: this.params })
      .then((reply) => {
        if (!reply.ok) {
          throw new PlexusError(reply.error?.code ?? "internal", reply.error?.message ?? "open failed");
        }
        return reply.output as S["welcome"];
      });
    this.opened = opened;
    for (const waiter of this.waiting.splice(0)) {
      opened.then(waiter.resolve, waiter.reject);
    }
    // A failed open is reported through ready(); it must not be an unhandled rejection.
    opened.catch(() => {});
  }

  /** @internal The socket dropped: the next connection opens the channel again. */
  dropped(): void {
    this.opened = null;
  }

  /** @internal The channel is closed for good (by the server, or by `close()`). */
  stop(message: string): void {
    this.wanted = false;
    this.opened = null;
    const error = new PlexusError("closed", message);
    for (const waiter of this.waiting.splice(0)) {
      waiter.reject(error);
    }
  }

  /** @internal */
  deliver(topic: string | undefined, data: unknown): void {
    const listeners = topic === undefined ? this.eventListeners : this.topicListeners.get(topic);
    for (const listener of listeners ?? []) {
      listener(data);
    }
  }
}
