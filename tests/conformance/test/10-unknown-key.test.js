// 10. Unknown app key: pusher:error 4001, pusher-js gives up (no reconnect loop).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, waitForState, waitUntil, recordConnectionErrors, errorCode } from './helpers.js';

// pusher-js's longest automatic retry delay for a closed socket is 1 s ("backoff"); watching
// for 1.5 s after it gave up covers every retry path it has (there is no event to mark
// "did not reconnect", so this bounded window is the check).
const NO_RETRY_WINDOW_MS = 1500;

describe('unknown app key', () => {
  const ctx = useServer({ before, after });

  it('is refused with error 4001 and pusher-js does not reconnect', async () => {
    const client = ctx.pool.create('nope');
    const errors = recordConnectionErrors(client);
    const states = [];
    client.connection.bind('state_change', ({ current }) => states.push(current));

    await waitUntil(() => errors.some((e) => errorCode(e) === 4001),
      `a connection error with code 4001 (got ${JSON.stringify(errors)})`);
    // `disconnected` is reached only through pusher-js's "refused" path (4001-4099 / 43xx);
    // any other close code keeps it in `connecting` and retrying.
    const state = await waitForState(client, ['disconnected', 'failed']);
    assert.ok(['disconnected', 'failed'].includes(state));
    assert.ok(!states.includes('connected'), `reached connected: ${states}`);

    const seen = states.length;
    await new Promise((r) => setTimeout(r, NO_RETRY_WINDOW_MS));
    assert.deepEqual(states.slice(seen), [], `pusher-js kept reconnecting: ${states}`);
    assert.ok(['disconnected', 'failed'].includes(client.connection.state));
    // pusher-js enters `connecting` inside its constructor, before the listener was bound, so
    // any `connecting` recorded here is a second attempt.
    assert.ok(!states.includes('connecting'), `pusher-js retried: ${states}`);
  });

  it('the 4001 error carries a message', async () => {
    const client = ctx.pool.create('also-unknown');
    const errors = recordConnectionErrors(client);
    const e = await waitUntil(() => errors.find((x) => errorCode(x) === 4001), 'error 4001');
    const data = e.data ?? e.error?.data;
    assert.equal(typeof data.message, 'string');
    assert.ok(data.message.length > 0);
  });
});
