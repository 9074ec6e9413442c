// 8. Batch trigger: POST /batch_events via sdk.triggerBatch delivers every event.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, subscribe, record, unique, sdkAuthorizer, APP1 } from './helpers.js';

describe('batch events', () => {
  const ctx = useServer({ before, after });

  it('delivers each event of a batch to its channel', async () => {
    const chA = unique('public-batch-a-');
    const chB = unique('private-batch-b-');
    const client = await ctx.pool.connect(APP1.key, { channelAuthorization: sdkAuthorizer(ctx.sdk) });
    const { channel: aCh } = await subscribe(client, chA);
    const { channel: bCh } = await subscribe(client, chB);
    const aRec = record(aCh);
    const bRec = record(bCh);

    const res = await ctx.sdk.triggerBatch([
      { channel: chA, name: 'e1', data: { n: 1 } },
      { channel: chB, name: 'e2', data: { n: 2 } },
      { channel: chA, name: 'e3', data: 'plain text' },
    ]);
    assert.equal(res.status, 200);
    assert.equal(typeof (await res.json()), 'object');

    assert.deepEqual((await aRec.waitFor('e1')).data, { n: 1 });
    assert.deepEqual((await bRec.waitFor('e2')).data, { n: 2 });
    assert.equal((await aRec.waitFor('e3')).data, 'plain text');
    // Within one channel the batch order is kept.
    assert.deepEqual(aRec.names().filter((n) => n === 'e1' || n === 'e3'), ['e1', 'e3']);
    assert.equal(bRec.count('e1') + bRec.count('e3'), 0, 'an event reached the wrong channel');
  });

  it('honours socket_id inside a batch item', async () => {
    const ch = unique('public-batch-');
    const a = await ctx.pool.connect();
    const b = await ctx.pool.connect();
    const { channel: aCh } = await subscribe(a, ch);
    const { channel: bCh } = await subscribe(b, ch);
    const aRec = record(aCh);
    const bRec = record(bCh);
    await ctx.sdk.triggerBatch([
      { channel: ch, name: 'skip-a', data: {}, socket_id: a.connection.socket_id },
      { channel: ch, name: 'marker', data: {} },
    ]);
    await bRec.waitFor('skip-a');
    await aRec.waitFor('marker');
    assert.deepEqual(aRec.before('marker').filter((e) => e.name === 'skip-a'), []);
  });

  it('rejects a batch of more than 10 events with 400 and publishes none of it', async () => {
    const ch = unique('public-batch-');
    const client = await ctx.pool.connect();
    const { channel } = await subscribe(client, ch);
    const rec = record(channel);
    const batch = Array.from({ length: 11 }, (_, i) => ({ channel: ch, name: 'too-many', data: String(i) }));
    await assert.rejects(ctx.sdk.triggerBatch(batch), (e) => e.status === 400);
    await ctx.sdk.trigger(ch, 'marker', {});
    await rec.waitFor('marker');
    assert.equal(rec.count('too-many'), 0, 'part of a rejected batch was published');
  });
});
