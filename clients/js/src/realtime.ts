/**
 * The SDK's `realtime` face: typed event streams over the Pusher endpoint, for services that
 * hand events to browsers and Node processes with API keys (README: "API keys for event-stream
 * consumers", "Server-side filters", "History and resume").
 *
 * ```ts
 * type Events = { "message.received": { chat: { id: string }; text: string } };
 * const client = createClient({ url: "ws://127.0.0.1:6001", appKey: "app-key", apiKey: "sk_live_…" });
 * const stream = client.realtime.events<Events>({
 *   channels: ["instance-inst_1"],
 *   filters: { events: ["message.received"], where: { "chat.id": "c1" } },
 * });
 * stream.on("message.received", (message, meta) => console.log(meta.channel, message.text));
 * stream.onGap(({ channel }) => reload(channel));        // events were missed: reload
 * await stream.connect();                                 // every channel subscribed
 * await stream.close();
 * ```
 *
 * Each stream is one connection (`Connection` owns reconnecting and pings). This module owns
 * what rides on it: subscribing every channel with its filter, remembering the last position
 * seen per channel and subscribing again from it after a reconnect (the server replays what was
 * missed, then says `plexus:resume`), and turning refusals into errors the app sees.
 */

import { Connection, parseData, socketFactory, type ConnectionStatus, type Frame, type SocketFactory } from "./connection.js";
import { PlexusError, SubscriptionError } from "./errors.js";

/** Sent as `version=` in the connection URL. */
export const SDK_VERSION = "0.1.0";

export type JsonValue = string | number | boolean | null | JsonValue[] | { [field: string]: JsonValue };

/** Event names to their data, e.g. `{ "message.received": Message }`. */
export type EventMap = Record<string, unknown>;

export interface CreateClientOptions {
  /** The server: `ws://host:port` or `wss://…` (`http(s)://` is taken as `ws(s)://`). */
  url: string;
  appKey: string;
  /** Sent as `?api_key=` (browsers cannot set headers on a WebSocket). */
  apiKey?: string;
  /** A signed token, sent as `?token=`; a function is asked again before every connection, and
   * makes a 4009 close (token expired) a reason to fetch a new one and reconnect. */
  token?: string | (() => string | Promise<string>);
  /** WebSocket constructor; default `globalThis.WebSocket`. */
  WebSocket?: SocketFactory;
  /** Reconnect delays: `initialMs` (1 000) doubling to `maxMs` (30 000); `jitter` (default true)
   * draws each delay from the upper half of that. */
  backoff?: { initialMs?: number; maxMs?: number; jitter?: boolean };
  /** Source of jitter in [0, 1); default `Math.random`. */
  random?: () => number;
  /** Silence after which we ping the server: the smaller of this and the server's
   * `activity_timeout`. Default: the server's. */
  activityTimeoutMs?: number;
  /** How long to wait for any frame after our ping before taking the connection for dead.
   * Default 30 000. */
  pongTimeoutMs?: number;
}

export interface Filters<E extends EventMap> {
  /** Keep only these events. */
  events?: (keyof E & string)[];
  /** Keep only events whose data has each dotted field equal to the value. */
  where?: Record<string, JsonValue>;
}

export interface EventsOptions<E extends EventMap> {
  channels: string[];
  filters?: Filters<E>;
}

/** What came with an event beside its data. */
export interface EventMeta {
  event: string;
  channel: string;
  /** `"<epoch>:<offset>"` on channels with a history, else null. */
  position: string | null;
  /** Replayed after a reconnect (it was published while the stream was away). */
  replayed: boolean;
}

/** How a channel came back after a reconnect. `recovered: false` means events may have been
 * missed (the history no longer reached back, the server restarted, the channel keeps none, or
 * no event had arrived to resume from): reload what the app shows. `position` is the channel's
 * latest position (the stream resumes from it next time), `from` the one we asked to resume from. */
export interface Resume {
  channel: string;
  recovered: boolean;
  position: string | null;
  from: string | null;
}

export type StatusListener = (status: ConnectionStatus) => void;

type Callback = (data: never, meta: EventMeta) => void;

interface ChannelState {
  position: string | null;
  subscribed: boolean;
  /** The position sent with the current subscription (replay until `plexus:resume`). */
  resumingFrom: string | null;
  /** Refused on the current connection. */
  refused: boolean;
}

/** The client `createClient` returns. */
export interface PlexusClient {
  realtime: {
    /** A stream of the channels' events; it connects on `connect()`. */
    events<E extends EventMap = EventMap>(options: EventsOptions<E>): EventStream<E>;
  };
}

export function createClient(options: CreateClientOptions): PlexusClient {
  const Socket = socketFactory(options.WebSocket);
  return {
    realtime: {
      events: <E extends EventMap>(events: EventsOptions<E>) => new EventStream<E>(options, Socket, events),
    },
  };
}

/** The URL of one connection attempt. */
export async function connectionUrl(options: CreateClientOptions): Promise<string> {
  const base = options.url.replace(/^http/, "ws").replace(/\/+$/, "");
  let url = `${base}/app/${encodeURIComponent(options.appKey)}?protocol=7&client=js&version=${SDK_VERSION}`;
  if (options.apiKey !== undefined) {
    url += `&api_key=${encodeURIComponent(options.apiKey)}`;
  }
  const token = typeof options.token === "function" ? await options.token() : options.token;
  if (token !== undefined) {
    url += `&token=${encodeURIComponent(token)}`;
  }
  return url;
}

/** One connection's subscriptions to `channels`, with typed listeners. */
export class EventStream<E extends EventMap> {
  private readonly connection: Connection;
  private readonly channels = new Map<string, ChannelState>();
  private readonly filter: { events?: string[]; where?: Record<string, JsonValue> } | undefined;
  private readonly listeners = new Map<string, Set<Callback>>();
  private readonly statusListeners = new Set<StatusListener>();
  private readonly errorListeners = new Set<(error: PlexusError) => void>();
  private readonly resumeListeners = new Set<(resume: Resume) => void>();
  private readonly gapListeners = new Set<(resume: Resume) => void>();
  private started = false;
  /** Connections established so far; every one after the first is a reconnect. */
  private opens = 0;
  private current: ConnectionStatus = { state: "connecting" };
  /** Settled once every channel is subscribed on the first connection (or that cannot happen). */
  private ready: Promise<void>;
  private settleReady: { resolve: () => void; reject: (e: PlexusError) => void } | null = null;

  /** @internal Use `createClient(…).realtime.events(…)`. */
  constructor(options: CreateClientOptions, Socket: SocketFactory, events: EventsOptions<E>) {
    if (!events.channels.length) {
      throw new TypeError("realtime.events needs at least one channel");
    }
    for (const channel of events.channels) {
      this.channels.set(channel, { position: null, subscribed: false, resumingFrom: null, refused: false });
    }
    const { events: names, where } = events.filters ?? {};
    this.filter = names || where ? { ...(names && { events: names }), ...(where && { where }) } : undefined;
    this.ready = new Promise((resolve, reject) => {
      this.settleReady = { resolve, reject };
    });
    // connect() hands it out; until then a rejection must not count as unhandled.
    this.ready.catch(() => {});
    const provider = typeof options.token === "function";
    this.connection = new Connection(
      {
        url: () => connectionUrl(options),
        Socket,
        initialMs: options.backoff?.initialMs ?? 1_000,
        maxMs: options.backoff?.maxMs ?? 30_000,
        jitter: options.backoff?.jitter ?? true,
        random: options.random ?? Math.random,
        activityTimeoutMs: options.activityTimeoutMs ?? Infinity,
        pongTimeoutMs: options.pongTimeoutMs ?? 30_000,
        // 4009 is "unauthorized": final for a fixed credential, but a provider may have a fresh one.
        retryFinal: (code) => provider && code === 4009,
      },
      {
        open: () => this.subscribeAll(),
        frame: (frame) => this.receive(frame),
        drop: () => {
          for (const state of this.channels.values()) {
            state.subscribed = false;
            state.resumingFrom = null;
          }
        },
        status: (status) => this.statusChanged(status),
        error: (error) => this.fail(new PlexusError("connect_failed", error.message)),
      },
    );
  }

  /** The connection's current status. */
  get status(): ConnectionStatus {
    return this.current;
  }

  /** Connects (once) and resolves when every channel is subscribed; rejects with a
   * `SubscriptionError` when the server refuses one, or a `PlexusError` `closed` when the
   * connection ends for good first. Reconnecting afterwards is automatic. */
  connect(): Promise<void> {
    if (!this.started) {
      this.started = true;
      this.connection.start();
    }
    return this.ready;
  }

  /** Calls `callback` with the data of every `name` event on the stream's channels (JSON data
   * parsed) and its metadata. Returns a function that removes it. */
  on<N extends keyof E & string>(name: N, callback: (data: E[N], meta: EventMeta) => void): () => void {
    let set = this.listeners.get(name);
    if (!set) {
      set = new Set();
      this.listeners.set(name, set);
    }
    set.add(callback as Callback);
    return () => this.off(name, callback);
  }

  off<N extends keyof E & string>(name: N, callback: (data: E[N], meta: EventMeta) => void): void {
    this.listeners.get(name)?.delete(callback as Callback);
  }

  /** connecting, open, reconnecting (attempt, delay, the close that caused it), closed. */
  onStatus(listener: StatusListener): () => void {
    return add(this.statusListeners, listener);
  }

  /** Refused subscriptions (`SubscriptionError`, with the server's reason), `pusher:error`s and
   * failed connection attempts. Without a listener they go to `console.error`. */
  onError(listener: (error: PlexusError) => void): () => void {
    return add(this.errorListeners, listener);
  }

  /** Every channel's `Resume` after a reconnect, recovered or not. */
  onResume(listener: (resume: Resume) => void): () => void {
    return add(this.resumeListeners, listener);
  }

  /** The `Resume`s with `recovered: false`: events may have been missed on that channel. */
  onGap(listener: (resume: Resume) => void): () => void {
    return add(this.gapListeners, listener);
  }

  /** Stops for good: resolves once the socket is closed; no timer is left behind. */
  close(): Promise<void> {
    this.settleReady?.reject(new PlexusError("closed", "the stream was closed"));
    this.settleReady = null;
    return this.connection.close();
  }

  private subscribeAll(): void {
    const reconnect = ++this.opens > 1;
    for (const [channel, state] of this.channels) {
      state.refused = false;
      state.resumingFrom = reconnect ? state.position : null;
      const data: Record<string, unknown> = { channel };
      if (this.filter) data.filter = this.filter;
      if (state.resumingFrom) data.position = state.resumingFrom;
      this.connection.send({ event: "pusher:subscribe", data });
    }
  }

  private receive(frame: Frame): void {
    const channel = typeof frame.channel === "string" ? frame.channel : undefined;
    const state = channel === undefined ? undefined : this.channels.get(channel);
    const event = String(frame.event ?? "");
    if (event === "pusher:error") {
      const data = parseData(frame.data) as { code?: number | null; message?: string } | undefined;
      // A refused subscription is also announced as a pusher:error; it was reported already.
      if (state?.refused) return;
      const message = String(data?.message ?? "unknown error");
      this.fail(new PlexusError("server_error", typeof data?.code === "number" ? `${data.code}: ${message}` : message));
      return;
    }
    if (!state || channel === undefined) return;
    switch (event) {
      case "pusher_internal:subscription_succeeded":
        state.subscribed = true;
        if (this.opens > 1 && !state.resumingFrom) {
          // Nothing to resume from: the server cannot say what was missed.
          this.resumed({ channel, recovered: false, position: null, from: null });
        }
        if ([...this.channels.values()].every((s) => s.subscribed)) {
          this.settleReady?.resolve();
          this.settleReady = null;
        }
        return;
      case "pusher:subscription_error": {
        const data = parseData(frame.data) as { type?: string; error?: string; status?: number } | undefined;
        state.refused = true;
        const error = new SubscriptionError(
          channel,
          Number(data?.status ?? 0),
          String(data?.type ?? ""),
          String(data?.error ?? "subscription refused"),
        );
        if (this.settleReady) {
          this.settleReady.reject(error);
          this.settleReady = null;
        }
        this.fail(error);
        return;
      }
      case "plexus:resume": {
        const data = parseData(frame.data) as { recovered?: boolean; position?: string | null } | undefined;
        const from = state.resumingFrom;
        state.resumingFrom = null;
        const position = typeof data?.position === "string" ? data.position : null;
        // Not recovered: the app reloads, so the next resume starts from the channel's head.
        if (position !== null) state.position = position;
        this.resumed({ channel, recovered: data?.recovered === true, position, from });
        return;
      }
      default:
        if (event.startsWith("pusher:") || event.startsWith("pusher_internal:") || event.startsWith("plexus:")) {
          return;
        }
        this.deliver(state, channel, event, frame);
    }
  }

  private deliver(state: ChannelState, channel: string, event: string, frame: Frame): void {
    const position = typeof frame.position === "string" ? frame.position : null;
    if (position !== null) {
      if (state.position !== null && !isAfter(position, state.position)) {
        return; // seen already
      }
      state.position = position;
    }
    const data = parseData(frame.data);
    // Replayed history is not filtered by the server, so the filter is checked here too.
    if (this.filter && !passes(this.filter, event, data)) return;
    const meta: EventMeta = { event, channel, position, replayed: state.resumingFrom !== null };
    for (const callback of this.listeners.get(event) ?? []) {
      (callback as (data: unknown, meta: EventMeta) => void)(data, meta);
    }
  }

  private statusChanged(status: ConnectionStatus): void {
    this.current = status;
    if (status.state === "closed" && this.settleReady) {
      this.settleReady.reject(
        new PlexusError("closed", `the server closed the connection for good: ${status.code} ${status.reason}`),
      );
      this.settleReady = null;
    }
    for (const listener of this.statusListeners) listener(status);
  }

  private resumed(resume: Resume): void {
    for (const listener of this.resumeListeners) listener(resume);
    if (!resume.recovered) {
      for (const listener of this.gapListeners) listener(resume);
    }
  }

  private fail(error: PlexusError): void {
    if (!this.errorListeners.size) {
      console.error(`plexus realtime: ${error.message}`);
      return;
    }
    for (const listener of this.errorListeners) listener(error);
  }
}

function add<T>(set: Set<T>, item: T): () => void {
  set.add(item);
  return () => set.delete(item);
}

/** Whether `position` comes after `seen`. Positions of another epoch (a restarted server) are
 * new by definition. */
function isAfter(position: string, seen: string): boolean {
  const [epoch, offset] = position.split(":");
  const [seenEpoch, seenOffset] = seen.split(":");
  if (epoch !== seenEpoch || offset === undefined || seenOffset === undefined) return true;
  return Number(offset) > Number(seenOffset);
}

/** The server's filter rule (README "Server-side filters"), for events it does not filter. */
function passes(filter: { events?: string[]; where?: Record<string, JsonValue> }, event: string, data: unknown): boolean {
  if (filter.events && !filter.events.includes(event)) return false;
  for (const [path, wanted] of Object.entries(filter.where ?? {})) {
    let current: unknown = data;
    for (const key of path.split(".")) {
      current = current !== null && typeof current === "object" && !Array.isArray(current)
        ? (current as Record<string, unknown>)[key]
        : undefined;
    }
    if (!jsonEqual(current, wanted)) return false;
  }
  return true;
}

function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== "object" || typeof b !== "object") return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return (
    ka.length === kb.length &&
    ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && jsonEqual((a as never)[k], (b as never)[k]))
  );
}
