// 16. Subscription counts: with `enable_subscription_count`, subscribers of non-presence
//     channels get `pusher_internal:subscription_count`, which pusher-js emits as
//     `pusher:subscription_count` and stores as `channel.subscriptionCount`; nothing without the
//     flag, nothing on presence channels (digest §12.1).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, subscribe, record, unique, sdkAuthorizer, sdkFor, waitUntil, APP1, APP2 } from './helpers.js';

// app-1 counts; app-2 does not.
const CONFIG = `
[server]
host = "127.0.0.1"
port = 0

[[apps]]
id = "${APP1.id}"
key = "${APP1.key}"
secret = "${APP1.secret}"
enable_subscription_count = true

[[apps]]
id = "${APP2.id}"
key = "${APP2.key}"
secret = "${APP2.secret}"
`;

const COUNT = 'pusher:subscription_count';

describe('subscription counts', () => {
  const ctx = useServer({ before, after }, { config: CONFIG });

  /** Subscribes with a recorder bound before any reply can arrive; `{ channel, rec }`. */
  async function subscribeRecorded(client, name) {
    const rec = record(client.subscribe(name));
    const { channel } = await subscribe(client, name);
    return { channel, rec };
  }

  /** The counts a recorder has seen, in order. */
  const counts = (rec) => rec.events.filter((e) => e.name === COUNT).map((e) => e.data?.subscription_count);

  /** Waits for the (`seen`+1)-th `pusher:subscription_count` and asserts its value is `n`. */
  async function countOf(rec, n, seen) {
    await waitUntil(() => counts(rec).length > seen, `subscription_count #${seen + 1} (so far ${counts(rec)})`);
    assert.equal(counts(rec)[seen], n, `subscription_count #${seen + 1} (all: ${counts(rec)})`);
  }

  async function countsGoUpAndDown(ch, make, sdk = ctx.sdk) {
    const a = await subscribeRecorded(await make(), ch);
    const one = await a.rec.waitFor(COUNT);
    assert.deepEqual(one.data, { subscription_count: 1 });
    assert.equal(a.channel.subscriptionCount, 1);
    assert.deepEqual(a.rec.names().slice(0, 2), ['pusher:subscription_succeeded', COUNT]);

    const bClient = await make();
    const b = await subscribeRecorded(bClient, ch);
    const bTwo = await b.rec.waitFor(COUNT);
    assert.deepEqual(bTwo.data, { subscription_count: 2 }, 'the joining subscriber learns the new count');
    assert.equal(b.channel.subscriptionCount, 2);
    await countOf(a.rec, 2, 1);
    assert.equal(a.channel.subscriptionCount, 2);

    bClient.unsubscribe(ch);
    await countOf(a.rec, 1, 2);
    assert.equal(a.channel.subscriptionCount, 1);

    // No stray counts: exactly 1, 2, 1 before a later marker.
    await sdk.trigger(ch, 'marker', {});
    await a.rec.waitFor('marker');
    assert.deepEqual(a.rec.before('marker').filter((e) => e.name === COUNT).map((e) => e.data.subscription_count),
      [1, 2, 1]);
  }

  it('public channel: counts sent on every change and stored as channel.subscriptionCount', async () => {
    await countsGoUpAndDown(unique('counted-'), () => ctx.pool.connect());
  });

  it('private channel: counts sent too', async () => {
    await countsGoUpAndDown(unique('private-counted-'), () =>
      ctx.pool.connect(APP1.key, { channelAuthorization: sdkAuthorizer(ctx.sdk) }));
  });

  it('counts connections on a disconnect as well as an unsubscribe', async () => {
    const ch = unique('counted-');
    const a = await subscribeRecorded(await ctx.pool.connect(), ch);
    const leaver = await ctx.pool.connect();
    await subscribeRecorded(leaver, ch);
    await countOf(a.rec, 2, 1);
    leaver.disconnect();
    await countOf(a.rec, 1, 2);
    assert.equal(a.channel.subscriptionCount, 1);
  });

  it('presence channels get no subscription_count', async () => {
    const ch = unique('presence-');
    const make = (id) =>
      ctx.pool.connect(APP1.key, { channelAuthorization: sdkAuthorizer(ctx.sdk, () => ({ user_id: id })) });
    const a = await subscribeRecorded(await make('a'), ch);
    await subscribeRecorded(await make('b'), ch);
    await a.rec.waitFor('pusher:member_added');
    await ctx.sdk.trigger(ch, 'marker', {});
    await a.rec.waitFor('marker');
    assert.deepEqual(a.rec.before('marker').filter((e) => e.name === COUNT), [],
      'subscription_count sent on a presence channel');
  });

  it('nothing is sent when the app does not enable it (app-2)', async () => {
    const sdk2 = sdkFor(ctx.server, APP2);
    const ch = unique('uncounted-');
    const a = await subscribeRecorded(await ctx.pool.connect(APP2.key), ch);
    await subscribeRecorded(await ctx.pool.connect(APP2.key), ch);
    await sdk2.trigger(ch, 'marker', {});
    await a.rec.waitFor('marker');
    assert.deepEqual(a.rec.before('marker').filter((e) => e.name === COUNT), [],
      'subscription_count sent although the app does not enable it');
    assert.equal(a.channel.subscriptionCount ?? null, null, 'channel.subscriptionCount was set');
  });
});
