/** The errors the SDK reports, for typed channels and event streams alike. */

/** An error reply from the server (`code` is e.g. `unauthenticated`, `forbidden`, `invalid_input`),
 * or a client-side failure: `timeout`, `disconnected` (the socket dropped before the reply),
 * `closed` (the client was closed, or the server refused the connection for good). */
export class PlexusError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "PlexusError";
  }
}

/** The server refused a subscription (`pusher:subscription_error`): `message` is its reason,
 * `status` its HTTP-like status (403: the key does not grant the channel or its scope). */
export class SubscriptionError extends PlexusError {
  constructor(
    readonly channel: string,
    readonly status: number,
    readonly type: string,
    message: string,
  ) {
    super("subscription_refused", message);
    this.name = "SubscriptionError";
  }
}
