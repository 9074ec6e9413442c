// 25. Server-side subscription filters (plexus extension of pusher:subscribe): `events` and
//     `where` (dotted fields equal to JSON values) decide what a socket receives; filtered-out
//     events never cross the wire; a pusher-js client on the same channel without a filter gets
//     everything; a malformed filter is refused with a clear error and the socket stays.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, rawPool, subscribe, record, unique } from './helpers.js';

describe('subscription filters', () => {
  const ctx = useServer({ before, after });
  const raws = rawPool(() => ctx.server);
  after(() => raws.closeAll());

  it('only matching events reach a filtering socket; others on the channel get everything', async () => {
    const ch = unique('instance-');
    const filtered = await raws.open();
    await filtered.established();
    filtered.send({
      event: 'pusher:subscribe',
      data: { channel: ch, filter: { events: ['message.received', 'marker'], where: { 'chat.id': 'c1' } } },
    });
    await filtered.waitEvent('pusher_internal:subscription_succeeded', ch);
    const plain = await ctx.pool.connect();
    const { channel } = await subscribe(plain, ch);
    const everything = record(channel);

    const send = (name, data) => ctx.sdk.trigger(ch, name, data);
    await send('message.received', { chat: { id: 'c1' }, n: 1 });
    await send('message.received', { chat: { id: 'c2' }, n: 2 });
    await send('typing', { chat: { id: 'c1' }, n: 3 });
    await send('message.received', { chat: { id: 'c1' }, n: 4 });
    await send('message.received', 'not json at all');
    await send('marker', { chat: { id: 'c1' } });

    await filtered.waitEvent('marker', ch);
    await everything.waitFor('marker');
    const got = filtered.frames.map((f) => f.msg).filter((m) => m?.channel === ch && !m.event.startsWith('pusher'))
      .map((m) => [m.event, JSON.parse(m.data).n ?? null]);
    assert.deepEqual(got, [['message.received', 1], ['message.received', 4], ['marker', null]]);
    assert.equal(everything.events.filter((e) => !e.name.startsWith('pusher')).length, 6, 'the unfiltered client lost events');
  });

  it('a malformed filter is refused with a reason and the socket stays open', async () => {
    const s = await raws.open();
    await s.established();
    const ch = unique('instance-bad-');
    s.send({ event: 'pusher:subscribe', data: { channel: ch, filter: { evnts: ['x'] } } });
    const err = await s.waitEvent('pusher:error');
    assert.match(JSON.stringify(err.msg.data), /evnts/);
    const many = Array.from({ length: 40 }, (_, i) => `e${i}`);
    s.send({ event: 'pusher:subscribe', data: { channel: ch, filter: { events: many } } });
    const refused = await s.waitEvent('pusher:subscription_error', ch);
    assert.match(JSON.stringify(refused.msg.data), /at most 32/);
    assert.ok(s.isOpen);
  });
});
