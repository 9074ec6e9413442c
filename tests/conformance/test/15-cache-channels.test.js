// 15. Cache channels: a subscriber gets pusher:cache_miss while nothing is cached, and the last
//     event published through the HTTP API once there is one; `info=cache` on the channel
//     (digest §5.6, §10.5).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  useServer, subscribe, record, unique, sdkAuthorizer, sdkFor, apiGet, waitUntil, APP1, APP2,
} from './helpers.js';

// app-1: default TTL (1800 s), client events on. app-2: a 1 s TTL, to watch an entry expire.
const CONFIG = `
[server]
host = "127.0.0.1"
port = 0

[[apps]]
id = "${APP1.id}"
key = "${APP1.key}"
secret = "${APP1.secret}"
enable_client_messages = true

[[apps]]
id = "${APP2.id}"
key = "${APP2.key}"
secret = "${APP2.secret}"
cache_ttl_secs = 1
`;

describe('cache channels', () => {
  const ctx = useServer({ before, after }, { config: CONFIG });

  /**
   * Subscribes with a recorder bound before any reply can arrive (the cache replay follows
   * subscription_succeeded immediately). Resolves with `{ channel, data, rec }`.
   */
  async function subscribeRecorded(client, name) {
    const rec = record(client.subscribe(name));
    const { channel, data } = await subscribe(client, name);
    return { channel, data, rec };
  }

  const cacheInfo = (ch, sdk = ctx.sdk) => apiGet(sdk, `/channels/${ch}`, { info: 'cache' });

  /** Runs the miss → publish → hit sequence on `ch` with clients made by `makeClient`. */
  async function missThenHit(ch, makeClient) {
    // Nothing cached yet.
    assert.deepEqual(await cacheInfo(ch), { occupied: false, cache: null }, 'info=cache before anything');
    const first = await makeClient();
    const a = await subscribeRecorded(first, ch);
    await a.rec.waitFor('pusher:cache_miss');
    assert.deepEqual(a.rec.names().slice(0, 2), ['pusher:subscription_succeeded', 'pusher:cache_miss'],
      'cache_miss must follow subscription_succeeded');
    const empty = await cacheInfo(ch);
    assert.equal(empty.occupied, true);
    assert.equal(empty.cache, null, `info=cache on an empty cache channel: ${JSON.stringify(empty)}`);

    await ctx.sdk.trigger(ch, 'old', { n: 0 });
    await ctx.sdk.trigger(ch, 'price', { n: 1 });
    await a.rec.waitFor('price');

    const info = await cacheInfo(ch);
    assert.equal(info.occupied, true);
    assert.equal(typeof info.cache, 'object', `info=cache: ${JSON.stringify(info)}`);
    assert.notEqual(info.cache, null, 'info=cache is null after an API publish');
    assert.equal(typeof info.cache.data, 'string', `cache.data must be a string: ${JSON.stringify(info.cache)}`);
    assert.deepEqual(JSON.parse(info.cache.data), { n: 1 }, 'cache holds the last event');
    assert.equal(typeof info.cache.ttl, 'number');
    assert.ok(info.cache.ttl > 1700 && info.cache.ttl <= 1800, `ttl ${info.cache.ttl} (configured 1800 s)`);

    // A late subscriber gets the last event right after subscription_succeeded, and no miss.
    const late = await makeClient();
    const b = await subscribeRecorded(late, ch);
    const hit = await b.rec.waitFor('price');
    assert.deepEqual(hit.data, { n: 1 });
    await ctx.sdk.trigger(ch, 'marker', {});
    await b.rec.waitFor('marker');
    assert.deepEqual(b.rec.before('marker').map((e) => e.name), ['pusher:subscription_succeeded', 'price'],
      'late subscriber: exactly the cached event after subscription_succeeded');
    // The replay goes to the new subscriber only.
    await a.rec.waitFor('marker');
    assert.deepEqual(a.rec.before('marker').map((e) => e.name),
      ['pusher:subscription_succeeded', 'pusher:cache_miss', 'old', 'price'],
      'the existing subscriber got a replay meant for the new one');
    return { first, late, a, b };
  }

  it('public cache- channel: miss, then the last API event for a late subscriber', async () => {
    await missThenHit(unique('cache-'), () => ctx.pool.connect());
  });

  it('private-cache- channel: miss then hit; client events are never cached', async () => {
    const ch = unique('private-cache-');
    const make = () => ctx.pool.connect(APP1.key, { channelAuthorization: sdkAuthorizer(ctx.sdk) });
    const { first, b } = await missThenHit(ch, make);

    // (missThenHit's own marker, an API event, is now the cached one.) Publish a fresh API
    // event, then a client event: the client event is relayed but must not replace the cache.
    await ctx.sdk.trigger(ch, 'price', { n: 2 });
    await b.rec.waitFor('price', { filter: (d) => d.n === 2 });
    assert.equal(first.channel(ch).trigger('client-typing', { who: 'first' }), true);
    await b.rec.waitFor('client-typing');
    assert.deepEqual(JSON.parse((await cacheInfo(ch)).cache.data), { n: 2 }, 'a client event replaced the cache');
    const third = await make();
    const c = await subscribeRecorded(third, ch);
    const hit = await c.rec.waitFor('price');
    assert.deepEqual(hit.data, { n: 2 });
    await ctx.sdk.trigger(ch, 'marker', {});
    await c.rec.waitFor('marker');
    assert.deepEqual(c.rec.before('marker').map((e) => e.name), ['pusher:subscription_succeeded', 'price'],
      'a client event was cached or replayed');
  });

  it('presence-cache- channel: miss then hit alongside the member list', async () => {
    let n = 0;
    const make = () => {
      n += 1;
      const user = `u${n}`;
      return ctx.pool.connect(APP1.key, { channelAuthorization: sdkAuthorizer(ctx.sdk, () => ({ user_id: user })) });
    };
    const ch = unique('presence-cache-');
    const first = await make();
    const a = await subscribeRecorded(first, ch);
    assert.equal(a.data.count, 1);
    await a.rec.waitFor('pusher:cache_miss');
    await ctx.sdk.trigger(ch, 'state', { v: 'x' });
    await a.rec.waitFor('state');
    const late = await make();
    const b = await subscribeRecorded(late, ch);
    assert.equal(b.data.count, 2);
    const hit = await b.rec.waitFor('state');
    assert.deepEqual(hit.data, { v: 'x' });
    assert.equal(b.rec.count('pusher:cache_miss'), 0);
  });

  it('private-encrypted-cache- channel: the cached ciphertext decrypts for a late subscriber', async () => {
    const esdk = sdkFor(ctx.server, APP1, { encryptionMasterKeyBase64: randomBytes(32).toString('base64') });
    const make = () => ctx.pool.connect(APP1.key, { channelAuthorization: sdkAuthorizer(esdk) });
    const ch = unique('private-encrypted-cache-');
    const a = await subscribeRecorded(await make(), ch);
    await a.rec.waitFor('pusher:cache_miss');
    await esdk.trigger(ch, 'secret', { s: 'hidden' });
    await a.rec.waitFor('secret');
    const b = await subscribeRecorded(await make(), ch);
    const hit = await b.rec.waitFor('secret');
    assert.deepEqual(hit.data, { s: 'hidden' });
  });

  it('an entry expires after cache_ttl_secs (app-2: 1 s) and subscribers miss again', async () => {
    const sdk2 = sdkFor(ctx.server, APP2);
    const ch = unique('cache-');
    const first = await ctx.pool.connect(APP2.key);
    const a = await subscribeRecorded(first, ch);
    await a.rec.waitFor('pusher:cache_miss');
    await sdk2.trigger(ch, 'tick', { t: 1 });
    await a.rec.waitFor('tick');
    const fresh = await cacheInfo(ch, sdk2);
    assert.notEqual(fresh.cache, null, 'nothing cached right after the publish');
    assert.ok(fresh.cache.ttl <= 1, `ttl ${fresh.cache.ttl} above the configured 1 s`);

    await waitUntil(async () => (await cacheInfo(ch, sdk2)).cache === null, 'the cache entry to expire',
      { timeout: 5000, interval: 200 });
    const late = await ctx.pool.connect(APP2.key);
    const b = await subscribeRecorded(late, ch);
    await b.rec.waitFor('pusher:cache_miss');
    await sdk2.trigger(ch, 'marker', {});
    await b.rec.waitFor('marker');
    assert.deepEqual(b.rec.before('marker').map((e) => e.name), ['pusher:subscription_succeeded', 'pusher:cache_miss'],
      'an expired entry was replayed');
  });
});
