/**
 * One Pusher-protocol WebSocket that keeps itself connected: the part the typed-channel `Client`
 * and the `realtime` event streams share. It owns
 * - opening the socket (the URL may be computed per attempt, e.g. with a fresh token);
 * - reconnecting by the close code's class: 4000–4099 final (unless the owner says otherwise,
 *   as a token provider does for 4009), 4100–4199 after a backoff, 4200–4299 at once, anything
 *   else (1006, network errors, a dead connection) after a backoff; the backoff doubles from
 *   `initialMs` to `maxMs` and starts over once a connection is established;
 * - Pusher pings both ways: `pusher:ping` is answered, and after the server's
 *   `activity_timeout` of silence we ping it and give up on the socket when no frame follows
 *   within `pongTimeoutMs`;
 * - `close()`, which clears every timer and resolves once the socket has closed.
 *
 * It knows nothing of channels: the owner gets `open`, every other frame, `drop` and the status.
 */

/**
 * An event handler property of a socket. Declared through a method so that TypeScript compares
 * its parameter bivariantly: a socket whose `onmessage` takes its own, richer `MessageEvent` (the
 * DOM's, or the `ws` package's) still is a `SocketLike`, as it is at run time, since the client
 * only ever assigns handlers that read the fields named here. A plain function type would be
 * compared contravariantly and reject every real WebSocket without a cast.
 */
export type SocketHandler<E> = { handle(event: E): void }["handle"];

/** The subset of the WebSocket API the client uses (browsers, Node ≥ 22, or the `ws` package). */
export interface SocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: SocketHandler<unknown> | null;
  onmessage: SocketHandler<{ data: unknown }> | null;
  onclose: SocketHandler<{ code: number; reason: string }> | null;
  onerror: SocketHandler<unknown> | null;
}

export type SocketFactory = new (url: string) => SocketLike;

/** `given`, or the platform's `WebSocket`. */
export function socketFactory(given?: SocketFactory): SocketFactory {
  const Socket = given ?? (globalThis as { WebSocket?: SocketFactory }).WebSocket;
  if (!Socket) {
    throw new Error("no WebSocket implementation: pass options.WebSocket (e.g. the `ws` package)");
  }
  return Socket;
}

/** A decoded Pusher frame. `data` is as sent: Pusher events carry it as a JSON string. */
export interface Frame {
  event?: string;
  channel?: string;
  data?: unknown;
  [field: string]: unknown;
}

/** Where a connection stands. `reconnecting` reports the attempt (1-based since the last
 * successful connection), the delay before it and the close that caused it; `closed` is final. */
export type ConnectionStatus =
  | { state: "connecting" }
  | { state: "open"; socketId: string }
  | { state: "reconnecting"; attempt: number; delayMs: number; code: number; reason: string }
  | { state: "closed"; code: number; reason: string };

/** The ceiling of the delay before reconnect attempt `attempt` (0-based): `initialMs` doubling
 * up to `maxMs` (1, 2, 4, 8, 16, 30, 30 … s by default). */
export function backoffCeiling(attempt: number, initialMs: number, maxMs: number): number {
  return Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
}

/** The delay before reconnect attempt `attempt` (0-based): the ceiling, then drawn from its
 * upper half so a crowd of clients spreads out. */
export function backoffDelay(attempt: number, initialMs: number, maxMs: number, random: () => number): number {
  const ceiling = backoffCeiling(attempt, initialMs, maxMs);
  return ceiling / 2 + random() * (ceiling / 2);
}

/** How to react to a close with `code` (not one we asked for). */
export function reconnectClass(code: number): "final" | "backoff" | "now" {
  if (code >= 4000 && code < 4100) return "final";
  if (code >= 4200 && code < 4300) return "now";
  return "backoff";
}

export interface ConnectionConfig {
  /** The URL of the next attempt; a rejection counts as a failed attempt. */
  url: () => string | Promise<string>;
  Socket: SocketFactory;
  initialMs: number;
  maxMs: number;
  /** false: exactly the backoff ceilings (what tests want). */
  jitter: boolean;
  random: () => number;
  /** Upper bound on the server's `activity_timeout`. */
  activityTimeoutMs: number;
  pongTimeoutMs: number;
  /** Whether a close in 4000–4099 should be retried (after a backoff) rather than be final. */
  retryFinal: (code: number) => boolean;
}

export interface ConnectionEvents {
  /** The server sent `pusher:connection_established`. */
  open(socketId: string): void;
  /** Any frame but connection_established, ping and pong. */
  frame(frame: Frame): void;
  /** The socket went away; `wasOpen` when it had been established. */
  drop(wasOpen: boolean): void;
  status(status: ConnectionStatus): void;
  /** A failure that is not a close (the URL could not be made, e.g. a token provider threw). */
  error(error: Error): void;
}

const CONNECTING = 0;
const CLOSED = 3;

/** See the module doc. Starts connecting on `start()`. */
export class Connection {
  private socket: SocketLike | null = null;
  private established = false;
  private stopping = false;
  private finished = false;
  /** Failed attempts since the last established connection: the backoff exponent. */
  private failures = 0;
  /** Reconnect attempts since the last established connection. */
  private attempts = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private activityTimer: ReturnType<typeof setTimeout> | null = null;
  private pongTimer: ReturnType<typeof setTimeout> | null = null;
  private activityMs: number;
  private closed: Promise<void> | null = null;
  private socketClosed: (() => void) | null = null;

  constructor(
    private readonly config: ConnectionConfig,
    private readonly events: ConnectionEvents,
  ) {
    this.activityMs = config.activityTimeoutMs;
  }

  /** Whether the server has accepted the current socket. */
  get open(): boolean {
    return this.established;
  }

  /** Whether the connection has stopped for good (`close()` or a final close). */
  get stopped(): boolean {
    return this.stopping || this.finished;
  }

  start(): void {
    void this.attempt();
  }

  /** Sends `frame` if a socket is open; returns whether it was sent. */
  send(frame: Frame): boolean {
    if (!this.socket || this.socket.readyState !== 1 /* OPEN */) {
      return false;
    }
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  /** Stops for good; resolves once the socket is closed and no timer is left. */
  close(): Promise<void> {
    if (this.closed) {
      return this.closed;
    }
    this.stopping = true;
    this.clearTimers();
    if (this.reconnectTimer) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
    }
    const socket = this.socket;
    this.closed = new Promise<void>((resolve) => {
      const done = () => {
        if (!this.finished) {
          this.finished = true;
          this.events.status({ state: "closed", code: 1000, reason: "closed by the client" });
        }
        resolve();
      };
      if (!socket || socket.readyState === CLOSED) {
        done();
        return;
      }
      if (socket.readyState === CONNECTING) {
        // Aborts the attempt. Some implementations (Node 20's) report nothing until the attempt
        // fails on its own, so do not wait for them; no handler of ours runs after this.
        socket.onclose = socket.onmessage = socket.onerror = null;
        this.socket = null;
        socket.close();
        done();
        return;
      }
      this.socketClosed = done;
      socket.close(1000, "client closed");
    });
    return this.closed;
  }

  private async attempt(): Promise<void> {
    this.reconnectTimer = null;
    this.events.status({ state: "connecting" });
    let url: string;
    try {
      url = await this.config.url();
    } catch (error) {
      if (this.stopping) return;
      const message = error instanceof Error ? error.message : String(error);
      this.events.error(new Error(`could not prepare the connection: ${message}`));
      this.scheduleReconnect(0, message);
      return;
    }
    if (this.stopping) return;
    const socket = new this.config.Socket(url);
    this.socket = socket;
    socket.onmessage = (event) => {
      if (this.socket === socket) this.receive(String(event.data));
    };
    // An error event means the connection failed (per the WebSocket spec a 1006 close follows,
    // but Node 20's implementation never sends it for a failed handshake), so act on it here.
    socket.onerror = () => this.abandon(socket, "the connection failed");
    socket.onclose = (event) => this.closedBy(socket, event.code, event.reason);
  }

  /** Gives up on `socket` without waiting for its close event and carries on as after a 1006. */
  private abandon(socket: SocketLike, reason: string): void {
    socket.onclose = socket.onmessage = socket.onerror = null;
    try {
      socket.close();
    } catch {
      // Already closing.
    }
    this.closedBy(socket, 1006, reason);
  }

  /** The socket ended (closed by the server, the network, or us giving up on it). */
  private closedBy(socket: SocketLike, code: number, reason: string): void {
    if (this.socket !== socket) return;
    this.socket = null;
    this.clearTimers();
    const wasOpen = this.established;
    this.established = false;
    this.events.drop(wasOpen);
    if (this.stopping) {
      this.socketClosed?.();
      return;
    }
    const kind = reconnectClass(code);
    if (kind === "final" && !this.config.retryFinal(code)) {
      this.finished = true;
      this.events.status({ state: "closed", code, reason });
      return;
    }
    if (kind === "now") {
      this.attempts += 1;
      this.events.status({ state: "reconnecting", attempt: this.attempts, delayMs: 0, code, reason });
      this.reconnectTimer = setTimeout(() => void this.attempt(), 0);
      return;
    }
    this.scheduleReconnect(code, reason);
  }

  private scheduleReconnect(code: number, reason: string): void {
    const { initialMs, maxMs, jitter, random } = this.config;
    const n = this.failures++;
    const delayMs = jitter ? backoffDelay(n, initialMs, maxMs, random) : backoffCeiling(n, initialMs, maxMs);
    this.attempts += 1;
    this.events.status({ state: "reconnecting", attempt: this.attempts, delayMs, code, reason });
    this.reconnectTimer = setTimeout(() => void this.attempt(), delayMs);
  }

  private receive(text: string): void {
    // Any frame proves the connection alive: the pong wait ends and the silence clock restarts.
    if (this.pongTimer) {
      clearTimeout(this.pongTimer);
      this.pongTimer = null;
    }
    let frame: Frame;
    try {
      frame = JSON.parse(text) as Frame;
    } catch {
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    switch (frame.event) {
      case "pusher:connection_established": {
        const data = parseData(frame.data) as { socket_id?: string; activity_timeout?: number } | undefined;
        const serverMs = typeof data?.activity_timeout === "number" ? data.activity_timeout * 1000 : Infinity;
        this.activityMs = Math.min(this.config.activityTimeoutMs, serverMs);
        this.established = true;
        this.failures = 0;
        this.attempts = 0;
        const socketId = String(data?.socket_id ?? "");
        this.armActivity();
        this.events.status({ state: "open", socketId });
        this.events.open(socketId);
        return;
      }
      case "pusher:ping":
        this.armActivity();
        this.send({ event: "pusher:pong", data: {} });
        return;
      case "pusher:pong":
        this.armActivity();
        return;
      default:
        this.armActivity();
        this.events.frame(frame);
    }
  }

  private armActivity(): void {
    if (this.activityTimer) clearTimeout(this.activityTimer);
    if (!this.established) return;
    this.activityTimer = setTimeout(() => {
      this.activityTimer = null;
      const socket = this.socket;
      if (!socket) return;
      this.send({ event: "pusher:ping", data: {} });
      this.pongTimer = setTimeout(() => {
        this.pongTimer = null;
        // The connection is dead: a close handshake would wait on it too.
        this.abandon(socket, `no reply to our ping within ${this.config.pongTimeoutMs} ms`);
      }, this.config.pongTimeoutMs);
    }, this.activityMs);
  }

  private clearTimers(): void {
    if (this.activityTimer) clearTimeout(this.activityTimer);
    if (this.pongTimer) clearTimeout(this.pongTimer);
    this.activityTimer = this.pongTimer = null;
  }
}

/** Pusher sends `data` as a JSON string; anything else (or text that is not JSON) is kept. */
export function parseData(data: unknown): unknown {
  if (typeof data !== "string") return data;
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}
