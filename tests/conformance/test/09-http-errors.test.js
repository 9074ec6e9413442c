// 9. HTTP API errors: status codes and JSON `{ "error": string }` bodies.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, sdkFor, expectHttpError, subscribe, record, unique, APP1 } from './helpers.js';

describe('HTTP API errors', () => {
  const ctx = useServer({ before, after });

  it('control: a correctly signed request succeeds with 200 and a JSON body', async () => {
    const res = await ctx.sdk.trigger(unique('public-'), 'ok', { fine: true });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.equal(typeof body, 'object');
    assert.ok(body !== null && !Array.isArray(body));
  });

  it('wrong secret → 401', async () => {
    const bad = sdkFor(ctx.server, { ...APP1, secret: 'not-the-secret' });
    await expectHttpError(bad.trigger(unique('public-'), 'e', {}), 401, 'trigger with wrong secret');
    await expectHttpError(bad.get({ path: '/channels' }), 401, 'GET /channels with wrong secret');
  });

  it('key of another app → 401', async () => {
    const bad = sdkFor(ctx.server, { ...APP1, key: 'key-2', secret: 'secret-2' });
    await expectHttpError(bad.trigger(unique('public-'), 'e', {}), 401, 'app-1 path signed with app-2 credentials');
  });

  it('expired auth_timestamp → 401', async () => {
    // Sign with the SDK's own signing code, but with a clock 601 s in the past.
    const realNow = Date.now;
    let promise;
    try {
      Date.now = () => realNow() - 601_000;
      promise = ctx.sdk.get({ path: '/channels' });
    } finally {
      Date.now = realNow;
    }
    await expectHttpError(promise, 401, 'request signed 601 s ago');
  });

  it('unknown app id → 404', async () => {
    const ghost = sdkFor(ctx.server, { ...APP1, id: 'no-such-app' });
    await expectHttpError(ghost.trigger(unique('public-'), 'e', {}), 404, 'trigger on unknown app');
    await expectHttpError(ghost.get({ path: '/channels' }), 404, 'GET /channels on unknown app');
  });

  it('event data over 10 KB → 413 and nothing is delivered; smaller data is accepted', async () => {
    const ch = unique('public-');
    const client = await ctx.pool.connect();
    const { channel } = await subscribe(client, ch);
    const rec = record(channel);

    await expectHttpError(ctx.sdk.trigger(ch, 'too-big', 'x'.repeat(11 * 1024)), 413, 'trigger with 11 KB data');
    await expectHttpError(
      ctx.sdk.triggerBatch([{ channel: ch, name: 'too-big', data: 'x'.repeat(11 * 1024) }]),
      413,
      'batch item with 11 KB data',
    );
    const ok = await ctx.sdk.trigger(ch, 'fits', 'y'.repeat(9 * 1024));
    assert.equal(ok.status, 200);
    const ev = await rec.waitFor('fits');
    assert.equal(ev.data.length, 9 * 1024);
    assert.equal(rec.count('too-big'), 0, 'an oversized event was delivered');
  });

  it('more than 100 channels → 400; exactly 100 is accepted', async () => {
    const names = (n) => Array.from({ length: n }, (_, i) => `public-many-${i}`);
    // The SDK's trigger() refuses >100 client-side, so post the body through its signing code.
    const tooMany = ctx.sdk.post({ path: '/events', body: { name: 'e', data: '{}', channels: names(101) } });
    await expectHttpError(tooMany, 400, 'trigger to 101 channels');

    const res = await ctx.sdk.trigger(names(100), 'e', {});
    assert.equal(res.status, 200);
  });

  it('malformed requests → 400', async () => {
    await expectHttpError(ctx.sdk.post({ path: '/events', body: { data: '{}', channels: ['public-x'] } }), 400,
      'trigger without name');
    await expectHttpError(ctx.sdk.post({ path: '/events', body: { name: 'e', channels: ['public-x'] } }), 400,
      'trigger without data');
    await expectHttpError(ctx.sdk.post({ path: '/events', body: { name: 'e', data: '{}', channels: ['bad channel!'] } }), 400,
      'trigger to an invalid channel name');
    await expectHttpError(ctx.sdk.post({ path: '/events', body: { name: 'e', data: '{}', channels: ['public-x'], socket_id: 'nope' } }), 400,
      'trigger with a malformed socket_id');
    await expectHttpError(ctx.sdk.get({ path: '/channels', params: { info: 'user_count' } }), 400,
      'user_count without a presence- prefix filter');
  });

  it('a tampered body (body_md5 mismatch) → 401', async () => {
    const body = JSON.stringify({ name: 'e', data: '{}', channels: ['public-x'] });
    const qs = ctx.sdk.createSignedQueryString({ method: 'POST', path: `/apps/${APP1.id}/events`, body });
    const tampered = JSON.stringify({ name: 'e', data: '{"evil":1}', channels: ['public-x'] });
    const res = await fetch(`http://127.0.0.1:${ctx.server.port}/apps/${APP1.id}/events?${qs}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: tampered,
    });
    assert.equal(res.status, 401);
    const json = await res.json();
    assert.equal(typeof json.error, 'string');
  });
});
