// 2. Public channel: subscribe, pusher:subscription_succeeded, SDK trigger delivers the data.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, subscribe, record, unique } from './helpers.js';

describe('public channel', () => {
  const ctx = useServer({ before, after });

  it('subscribes and receives an event triggered through the SDK', async () => {
    const client = await ctx.pool.connect();
    const name = unique('public-');
    const { channel } = await subscribe(client, name);
    assert.equal(channel.subscribed, true);

    const rec = record(channel);
    const payload = { text: 'hello', n: 42, nested: { list: [1, 'two', null] }, unicode: 'héllo ✓' };
    const res = await ctx.sdk.trigger(name, 'greeting', payload);
    assert.equal(res.status, 200);
    assert.equal(typeof (await res.json()), 'object');

    const ev = await rec.waitFor('greeting');
    assert.deepEqual(ev.data, payload);
  });

  it('delivers string data verbatim and only to subscribers of that channel', async () => {
    const a = await ctx.pool.connect();
    const b = await ctx.pool.connect();
    const chA = unique('public-a-');
    const chB = unique('public-b-');
    const { channel: subA } = await subscribe(a, chA);
    const { channel: subB } = await subscribe(b, chB);
    const recA = record(subA);
    const recB = record(subB);
    const recBAll = record(b);

    await ctx.sdk.trigger(chA, 'only-a', 'just a string');
    await ctx.sdk.trigger(chB, 'marker', {});

    const got = await recA.waitFor('only-a');
    assert.equal(got.data, 'just a string');
    await recB.waitFor('marker');
    assert.deepEqual(recBAll.before('marker').filter((e) => e.name === 'only-a'), [],
      'event for channel A reached a client subscribed only to B');
  });

  it('delivers nothing after pusher:unsubscribe', async () => {
    const client = await ctx.pool.connect();
    const gone = unique('public-gone-');
    const kept = unique('public-kept-');
    await subscribe(client, gone);
    await subscribe(client, kept);
    const all = record(client);
    client.unsubscribe(gone);
    // The unsubscribe frame and the later subscribe share the socket, so once `again` is
    // confirmed the server has processed the unsubscribe.
    await subscribe(client, unique('public-again-'));

    await ctx.sdk.trigger(gone, 'after-unsubscribe', {});
    await ctx.sdk.trigger(kept, 'marker', {});
    await all.waitFor('marker');
    assert.deepEqual(all.before('marker').filter((e) => e.name === 'after-unsubscribe'), []);
  });
});
