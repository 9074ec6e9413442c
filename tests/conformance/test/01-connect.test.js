// 1. Connection: pusher-js reaches `connected` and gets a Pusher-shaped socket id.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, waitForState, waitForEvent, APP2 } from './helpers.js';

describe('connect', () => {
  const ctx = useServer({ before, after });

  it('pusher-js reaches state connected with a socket_id like 123.456', async () => {
    const client = ctx.pool.create();
    const state = await waitForState(client, 'connected');
    assert.equal(state, 'connected');
    assert.match(client.connection.socket_id, /^\d+\.\d+$/);
    assert.equal(client.connection.state, 'connected');
  });

  it('gives every connection its own socket_id', async () => {
    const a = await ctx.pool.connect();
    const b = await ctx.pool.connect();
    const c = await ctx.pool.connect(APP2.key);
    const ids = [a, b, c].map((x) => x.connection.socket_id);
    for (const id of ids) assert.match(id, /^\d+\.\d+$/);
    assert.equal(new Set(ids).size, 3, `socket ids not unique: ${ids}`);
  });

  it('advertises a positive activity_timeout (pusher-js adopts min(120 s, server value))', async () => {
    const client = await ctx.pool.connect();
    const t = client.connection.activityTimeout;
    assert.ok(Number.isInteger(t) && t > 0 && t <= 120000, `activityTimeout = ${t}`);
  });

  it('answers pusher:ping with pusher:pong', async () => {
    const client = await ctx.pool.connect();
    const pong = waitForEvent(client.connection, 'message', {
      filter: (msg) => msg && msg.event === 'pusher:pong',
    });
    assert.ok(client.send_event('pusher:ping', {}), 'pusher-js could not send the ping');
    const { data } = await pong;
    assert.equal(data.event, 'pusher:pong');
    assert.equal(client.connection.state, 'connected');
  });
});
