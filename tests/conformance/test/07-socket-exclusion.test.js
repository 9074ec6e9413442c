// 7. socket_id exclusion: trigger(..., { socket_id }) skips that socket only.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, subscribe, record, unique, waitUntil } from './helpers.js';

describe('socket_id exclusion', () => {
  const ctx = useServer({ before, after });

  it('does not deliver to the excluded socket but does to the others', async () => {
    const ch = unique('public-excl-');
    const a = await ctx.pool.connect();
    const b = await ctx.pool.connect();
    const { channel: aCh } = await subscribe(a, ch);
    const { channel: bCh } = await subscribe(b, ch);
    const aRec = record(aCh);
    const bRec = record(bCh);

    const res = await ctx.sdk.trigger(ch, 'not-for-a', { n: 1 }, { socket_id: a.connection.socket_id });
    assert.equal(res.status, 200);
    const got = await bRec.waitFor('not-for-a');
    assert.deepEqual(got.data, { n: 1 });

    await ctx.sdk.trigger(ch, 'marker', {});
    await aRec.waitFor('marker');
    assert.deepEqual(aRec.before('marker').filter((e) => e.name === 'not-for-a'), [],
      'the excluded socket received the event');
  });

  it('excludes the socket on every channel of a multi-channel trigger', async () => {
    const ch1 = unique('public-excl-');
    const ch2 = unique('public-excl-');
    const a = await ctx.pool.connect();
    const b = await ctx.pool.connect();
    for (const c of [a, b]) {
      await subscribe(c, ch1);
      await subscribe(c, ch2);
    }
    const aAll = record(a);
    const bAll = record(b);

    await ctx.sdk.trigger([ch1, ch2], 'multi', { m: true }, { socket_id: a.connection.socket_id });
    await waitUntil(() => bAll.count('multi') === 2, 'the other socket got the event on both channels');
    await ctx.sdk.trigger(ch2, 'marker', {});
    await aAll.waitFor('marker');
    assert.deepEqual(aAll.before('marker').filter((e) => e.name === 'multi'), []);
  });

  it('accepts an unknown but well-formed socket_id and still delivers', async () => {
    const ch = unique('public-excl-');
    const a = await ctx.pool.connect();
    const { channel } = await subscribe(a, ch);
    const rec = record(channel);
    const res = await ctx.sdk.trigger(ch, 'ev', { ok: 1 }, { socket_id: '999999.999999' });
    assert.equal(res.status, 200);
    await rec.waitFor('ev');
  });
});
