// 6. Client events (client-*): relayed between pusher-js clients on private and presence
//    channels, never echoed, user_id on presence, disabled per app, rate-limited at 10/s.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  useServer, subscribe, record, unique, sdkAuthorizer, sdkFor, waitForEvent, recordConnectionErrors,
  errorCode, APP1, APP2,
} from './helpers.js';

/** Waits for a pusher:error-originated `error` on the client's connection. */
function nextPusherError(client, filter = () => true) {
  return waitForEvent(client.connection, 'error', {
    filter: (e) => e && e.type === 'PusherError' && filter(e),
  }).then(({ data }) => data);
}

describe('client events', () => {
  const ctx = useServer({ before, after });

  const privateClient = (sdk = ctx.sdk, key = APP1.key) =>
    ctx.pool.connect(key, { channelAuthorization: sdkAuthorizer(sdk) });
  const presenceClient = (userId) =>
    ctx.pool.connect(APP1.key, {
      channelAuthorization: sdkAuthorizer(ctx.sdk, () => ({ user_id: userId, user_info: { name: userId } })),
    });

  it('relays a client event on a private channel to the other member, not back to the sender', async () => {
    const ch = unique('private-chat-');
    const a = await privateClient();
    const b = await privateClient();
    const { channel: aCh } = await subscribe(a, ch);
    const { channel: bCh } = await subscribe(b, ch);
    const aRec = record(aCh);
    const bRec = record(bCh);

    assert.equal(aCh.trigger('client-typing', { on: true, who: 'a' }), true, 'pusher-js could not send');
    const got = await bRec.waitFor('client-typing');
    assert.deepEqual(got.data, { on: true, who: 'a' });

    await ctx.sdk.trigger(ch, 'marker', {});
    await aRec.waitFor('marker');
    assert.deepEqual(aRec.before('marker').filter((e) => e.name === 'client-typing'), [],
      'the client event was echoed to its sender');
  });

  it('relays on a presence channel with metadata.user_id of the sender, not echoed', async () => {
    const ch = unique('presence-chat-');
    const alice = await presenceClient('alice');
    const bob = await presenceClient('bob');
    const { channel: aCh } = await subscribe(alice, ch);
    const { channel: bCh } = await subscribe(bob, ch);
    const aRec = record(aCh);

    const received = waitForEvent(bCh, 'client-wave');
    aCh.trigger('client-wave', { hello: 'bob' });
    const { data, metadata } = await received;
    assert.deepEqual(data, { hello: 'bob' });
    assert.equal(metadata?.user_id, 'alice', `metadata was ${JSON.stringify(metadata)}`);

    await ctx.sdk.trigger(ch, 'marker', {});
    await aRec.waitFor('marker');
    assert.deepEqual(aRec.before('marker').filter((e) => e.name === 'client-wave'), [],
      'the client event was echoed to its sender');
  });

  it('rejects client events when the app disables them (app-2): pusher:error, not delivered', async () => {
    const sdk2 = sdkFor(ctx.server, APP2);
    const ch = unique('private-chat-');
    const a = await privateClient(sdk2, APP2.key);
    const b = await privateClient(sdk2, APP2.key);
    const { channel: aCh } = await subscribe(a, ch);
    await subscribe(b, ch);
    const bAll = record(b);

    const err = nextPusherError(a);
    aCh.trigger('client-forbidden', { nope: true });
    const e = await err;
    assert.equal(typeof e.data?.message, 'string', `pusher:error without message: ${JSON.stringify(e)}`);

    await sdk2.trigger(ch, 'marker', {});
    await bAll.waitFor('marker');
    assert.deepEqual(bAll.before('marker').filter((x) => x.name === 'client-forbidden'), [],
      'a client event was relayed although the app disables client events');
    assert.equal(a.connection.state, 'connected');
  });

  it('rejects the 11th client event within one second with 4301 and keeps the socket open', async () => {
    const ch = unique('private-burst-');
    const a = await privateClient();
    const b = await privateClient();
    const { channel: aCh } = await subscribe(a, ch);
    const { channel: bCh } = await subscribe(b, ch);
    const aErrors = recordConnectionErrors(a);
    const aRec = record(aCh);
    const bRec = record(bCh);

    const limited = nextPusherError(a, (x) => errorCode(x) === 4301);
    for (let i = 0; i < 11; i++) aCh.trigger('client-burst', { i });
    const e = await limited;
    assert.equal(errorCode(e), 4301);

    await ctx.sdk.trigger(ch, 'marker', {});
    await bRec.waitFor('marker');
    const delivered = bRec.before('marker').filter((x) => x.name === 'client-burst').map((x) => x.data.i);
    assert.deepEqual(delivered, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'exactly the first 10 should be relayed');

    // Still connected and still receiving.
    await aRec.waitFor('marker');
    assert.equal(a.connection.state, 'connected');
    assert.deepEqual(aErrors.filter((x) => errorCode(x) !== 4301), [], 'unexpected other errors');
  });

  describe('server-side checks (frames sent with pusher.send_event, bypassing pusher-js guards)', () => {
    /**
     * Sends `bad` (a client event the server must refuse) from `a`, then a valid client event
     * `client-marker` on `markerCh`; returns what b saw before the marker and the error a got.
     */
    async function refusedThenMarker(a, b, bad, markerCh) {
      const bAll = record(b);
      const err = nextPusherError(a);
      assert.ok(a.send_event(bad.event, bad.data, bad.channel));
      a.send_event('client-marker', {}, markerCh);
      await bAll.waitFor('client-marker');
      const leaked = bAll.before('client-marker').filter((x) => x.name === bad.event);
      return { leaked, error: await err };
    }

    it('refuses client events on public channels', async () => {
      const pub = unique('public-');
      const priv = unique('private-');
      const a = await privateClient();
      const b = await privateClient();
      for (const c of [a, b]) {
        await subscribe(c, pub);
        await subscribe(c, priv);
      }
      const { leaked, error } = await refusedThenMarker(a, b, { event: 'client-pub', data: {}, channel: pub }, priv);
      assert.deepEqual(leaked, [], 'client event relayed on a public channel');
      assert.equal(error.type, 'PusherError');
      assert.equal(a.connection.state, 'connected');
    });

    it('refuses client events on channels the sender has not subscribed to', async () => {
      const target = unique('private-');
      const shared = unique('private-');
      const a = await privateClient();
      const b = await privateClient();
      await subscribe(a, shared);
      await subscribe(b, shared);
      await subscribe(b, target);
      const { leaked } = await refusedThenMarker(a, b, { event: 'client-intrude', data: {}, channel: target }, shared);
      assert.deepEqual(leaked, [], 'client event relayed from a socket not subscribed to the channel');
      assert.equal(a.connection.state, 'connected');
    });

    it('refuses client events on encrypted channels', async () => {
      const esdk = sdkFor(ctx.server, APP1, { encryptionMasterKeyBase64: randomBytes(32).toString('base64') });
      const enc = unique('private-encrypted-');
      const shared = unique('private-');
      const a = await privateClient(esdk);
      const b = await privateClient(esdk);
      for (const c of [a, b]) {
        await subscribe(c, enc);
        await subscribe(c, shared);
      }
      const { leaked } = await refusedThenMarker(a, b, { event: 'client-enc', data: { x: 1 }, channel: enc }, shared);
      assert.deepEqual(leaked, [], 'client event relayed on an encrypted channel');
      assert.equal(a.connection.state, 'connected');
    });

    it('refuses client event data larger than the app limit (10 KB)', async () => {
      const ch = unique('private-');
      const a = await privateClient();
      const b = await privateClient();
      await subscribe(a, ch);
      await subscribe(b, ch);
      const big = { blob: 'x'.repeat(11 * 1024) };
      const { leaked } = await refusedThenMarker(a, b, { event: 'client-big', data: big, channel: ch }, ch);
      assert.deepEqual(leaked.map((x) => x.name), [], 'an oversized client event was relayed');
      assert.equal(a.connection.state, 'connected');
    });
  });
});
