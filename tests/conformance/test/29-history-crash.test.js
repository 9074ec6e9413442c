// 29. A node that dies at the worst moment for history kept in the bus's store
//     (`[adapter] history = "bus"`), over the real NATS (JetStream) and the real Redis. The
//     node is started with `PLEXUS_CRASH_POINT`, stops at that point of its first append, and is
//     SIGKILLed there:
//     - after the store took the event and before anything was delivered: the publisher's
//       request fails, no live subscriber ever gets the event, and a client resuming on another
//       node gets it at the position the store gave it;
//     - before the append: the request fails, nobody gets the event, the store does not have it,
//       and the channel's positions go on without a hole.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, sdkFor, unique, waitUntil, durableNodeConfig, DURABLE_BUSES, historyItems as items, epochOf, offsetOf, subscribedRaw,
} from './helpers.js';

for (const bus of DURABLE_BUSES) {
  describe(`a node killed around its history append, over ${bus.driver}`, () => {
    const prefix = `c${process.pid}${bus.driver}${Date.now() % 100000}`;
    const nodes = [];
    const sockets = [];
    const start = (env) => startServer({ config: durableNodeConfig(bus, prefix), env });

    after(async () => {
      for (const s of sockets.splice(0)) s.close();
      await Promise.all(nodes.splice(0).map((n) => n.stop({ signal: 'SIGKILL' })));
    });

    for (const [point, stored] of [['after-history-append', true], ['before-history-append', false]]) {
      it(`killed ${point.replace(/-/g, ' ')}: the event is ${stored ? 'replayed, never live' : 'nowhere'}`, async () => {
        const [doomed, other, third] = await Promise.all([
          start({ PLEXUS_CRASH_POINT: point }), start(), start(),
        ]);
        nodes.push(doomed, other, third);
        const ch = unique('feed-');
        const live = await subscribedRaw(other, ch, undefined, sockets);

        assert.equal((await sdkFor(third).trigger(ch, 'item', { i: 0 })).status, 200);
        await waitUntil(() => items(live, ch).length === 1, 'item 0 live');
        const [[, first]] = items(live, ch);

        const stopped = doomed.stderrLine(/plexus stopped at crash point/, 10_000);
        const request = sdkFor(doomed).trigger(ch, 'item', { i: 1 }).then(
          (response) => `answered ${response.status}`,
          () => 'failed',
        );
        await stopped;
        await doomed.stop({ signal: 'SIGKILL' });
        assert.equal(await request, 'failed', 'the publisher was never told the event was published');

        assert.equal((await sdkFor(third).trigger(ch, 'item', { i: 2 })).status, 200);
        await waitUntil(() => items(live, ch).length >= 2, 'item 2 live');
        const last = items(live, ch)[1][1];
        assert.deepEqual(items(live, ch), [[0, first], [2, last]], 'item 1 never reached a live subscriber');
        assert.equal(epochOf(last), epochOf(first));
        assert.equal(offsetOf(last), offsetOf(first) + (stored ? 2 : 1),
          stored ? 'item 1 holds the position between' : 'no position was spent on item 1');

        const resumed = await subscribedRaw(third, ch, first, sockets);
        const answer = JSON.parse((await resumed.waitEvent('plexus:resume', ch, 10_000)).msg.data);
        assert.deepEqual(answer, { recovered: true, position: last });
        const between = `${epochOf(first)}:${offsetOf(first) + 1}`;
        assert.deepEqual(items(resumed, ch), stored ? [[1, between], [2, last]] : [[2, last]]);
      });
    }
  });
}
