// 3. Private channels: authorization with the SDK's signature; a bad signature is refused.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServer, subscribe, record, unique, sdkAuthorizer, waitForEvent, recordConnectionErrors, APP1,
} from './helpers.js';

describe('private channel', () => {
  const ctx = useServer({ before, after });

  it('subscribes with a valid SDK signature and receives events', async () => {
    const client = await ctx.pool.connect(APP1.key, { channelAuthorization: sdkAuthorizer(ctx.sdk) });
    const name = unique('private-');
    const { channel } = await subscribe(client, name);
    assert.equal(channel.subscribed, true);
    const rec = record(channel);
    await ctx.sdk.trigger(name, 'secret-news', { ok: true, n: 7 });
    const ev = await rec.waitFor('secret-news');
    assert.deepEqual(ev.data, { ok: true, n: 7 });
  });

  it('refuses a bad signature with pusher:subscription_error and delivers nothing', async () => {
    const name = unique('private-');
    const badAuth = {
      customHandler: (_params, cb) => cb(null, { auth: `${APP1.key}:${'0'.repeat(64)}` }),
    };
    const bad = await ctx.pool.connect(APP1.key, { channelAuthorization: badAuth });
    const good = await ctx.pool.connect(APP1.key, { channelAuthorization: sdkAuthorizer(ctx.sdk) });
    const badErrors = recordConnectionErrors(bad);

    const { channel: goodCh } = await subscribe(good, name);
    const goodRec = record(goodCh);

    const badCh = bad.subscribe(name);
    const badRec = record(badCh);
    const badAll = record(bad);
    const { data: errData } = await waitForEvent(badCh, 'pusher:subscription_error');
    assert.equal(badCh.subscribed, false, 'channel marked subscribed despite the bad signature');
    assert.equal(typeof errData, 'object', 'subscription_error data should be an object {type, error, status} (digest §5.5)');
    assert.ok(errData !== null, 'subscription_error data is null');
    assert.equal(badRec.count('pusher:subscription_succeeded'), 0);

    // The socket stays open: it can still subscribe to a public channel.
    const markerChannel = unique('public-marker-');
    await subscribe(bad, markerChannel);
    assert.equal(bad.connection.state, 'connected');

    await ctx.sdk.trigger(name, 'leak', { secret: 1 });
    await goodRec.waitFor('leak'); // proves the event was really published
    await ctx.sdk.trigger(markerChannel, 'marker', {});
    await badAll.waitFor('marker');

    assert.deepEqual(badAll.before('marker').filter((e) => e.name === 'leak'), [],
      'a private event reached the socket whose subscription was refused');
    assert.deepEqual(badRec.events.filter((e) => e.name === 'leak'), []);
    // No fatal error code (4000-4299 would make pusher-js close/reconnect).
    for (const e of badErrors) {
      const code = e?.data?.code ?? e?.error?.data?.code;
      assert.ok(code == null || code >= 4300, `unexpected connection error ${JSON.stringify(e)}`);
    }
  });

  it('refuses a signature made with another app key prefix', async () => {
    const name = unique('private-');
    const sig = ctx.sdk.authorizeChannel; // signature part is right, key prefix wrong
    const wrongKey = {
      customHandler: ({ socketId, channelName }, cb) => {
        const { auth } = sig.call(ctx.sdk, socketId, channelName);
        cb(null, { auth: `not-the-key:${auth.split(':')[1]}` });
      },
    };
    const client = await ctx.pool.connect(APP1.key, { channelAuthorization: wrongKey });
    await assert.rejects(subscribe(client, name), /subscription_error/);
    assert.equal(client.connection.state, 'connected');
  });

  it('refuses a signature made for another socket', async () => {
    const name = unique('private-');
    const stolen = {
      customHandler: ({ channelName }, cb) => cb(null, ctx.sdk.authorizeChannel('1234.5678', channelName)),
    };
    const client = await ctx.pool.connect(APP1.key, { channelAuthorization: stolen });
    await assert.rejects(subscribe(client, name), /subscription_error/);
    assert.equal(client.connection.state, 'connected');
  });
});
