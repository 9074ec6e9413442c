// 28. History kept by the bus itself (`[adapter] history = "bus"`): JetStream on the real NATS
//     (127.0.0.1:4222) and Redis Streams on the real Redis (127.0.0.1:6379). Positions come
//     from the store, so they mean the same on every node and outlive every node: after each
//     node of three is restarted in turn, and then all three are killed at once, a client
//     resumes from a position it read before any restart and gets exactly the events it
//     missed, at the positions first given, in the epoch it knew.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, sdkFor, unique, waitUntil, durableNodeConfig, DURABLE_BUSES, historyItems as items, epochOf, offsetOf, subscribedRaw,
} from './helpers.js';

for (const bus of DURABLE_BUSES) {
  describe(`history that outlives every node, over ${bus.driver}`, () => {
    const prefix = `d${process.pid}${bus.driver}${Date.now() % 100000}`;
    const nodes = [];
    const sockets = [];
    const start = () => startServer({ config: durableNodeConfig(bus, prefix) });

    before(async () => {
      nodes.push(...(await Promise.all([0, 1, 2].map(start))));
    });

    after(async () => {
      for (const s of sockets.splice(0)) s.close();
      await Promise.all(nodes.map((n) => n.stop({ signal: 'SIGKILL' })));
    });

    const subscribed = (n, ch, position) => subscribedRaw(nodes[n], ch, position, sockets);

    /**
     * Publishes item `i` through node `n` and returns its position, as a subscriber there saw it.
     * (The subscriber may also get the item before, published through another node, if the bus
     * brings it after the subscription.)
     */
    async function publish(n, ch, i) {
      const watcher = await subscribed(n, ch);
      const response = await sdkFor(nodes[n]).trigger(ch, 'item', { i });
      assert.equal(response.status, 200);
      const [, position] = await waitUntil(() => items(watcher, ch).find(([seen]) => seen === i),
        `item ${i} delivered on node ${n}`, { timeout: 10_000 });
      watcher.close();
      return position;
    }

    it('events published at once through different nodes reach every subscriber once, in position order', async () => {
      const ch = unique('feed-');
      const watchers = await Promise.all([0, 1, 2].map((n) => subscribed(n, ch)));
      const sdks = nodes.map((node) => sdkFor(node));
      // Every node first learns where the channel's positions stand (a node takes the first
      // event it sees of a channel as where its order starts).
      assert.equal((await sdks[0].trigger(ch, 'item', { i: -1 })).status, 200);
      for (const [n, watcher] of watchers.entries()) {
        await waitUntil(() => items(watcher, ch).length === 1, `the first item on node ${n}`);
      }
      // Ten rounds of three publishes at the same moment, one through each node.
      for (let round = 0; round < 10; round += 1) {
        const responses = await Promise.all(
          [0, 1, 2].map((n) => sdks[n].trigger(ch, 'item', { i: round * 3 + n })),
        );
        for (const response of responses) assert.equal(response.status, 200);
      }
      for (const [n, watcher] of watchers.entries()) {
        await waitUntil(() => items(watcher, ch).length >= 31, `31 items on node ${n}`, { timeout: 10_000 });
        const seen = items(watcher, ch).slice(1);
        const offsets = seen.map(([, position]) => offsetOf(position));
        assert.equal(new Set(seen.map(([i]) => i)).size, 30, `each item once on node ${n}`);
        assert.deepEqual(offsets, offsets.map((_, k) => offsets[0] + k), `node ${n} in position order: ${offsets}`);
        assert.equal(new Set(seen.map(([, position]) => epochOf(position))).size, 1);
      }
      for (const watcher of watchers) watcher.close();
    });

    it('a client resumes across a rolling restart and a restart of every node at once', async () => {
      const ch = unique('feed-');
      const before = [];
      for (let i = 0; i < 3; i += 1) before.push(await publish(i, ch, i));
      const last = before[2];

      const missed = [];
      for (let n = 0; n < 3; n += 1) {
        const result = await nodes[n].stop();
        assert.ok(!result.crashed, `node ${n} died; stderr:\n${nodes[n].stderrTail()}`);
        nodes[n] = await start();
        missed.push([3 + n, await publish(n, ch, 3 + n)]);
      }
      await Promise.all(nodes.map((node) => node.stop({ signal: 'SIGKILL' })));
      nodes.splice(0, 3, ...(await Promise.all([0, 1, 2].map(start))));
      missed.push([6, await publish(0, ch, 6)]);

      const positions = [...before, ...missed.map(([, p]) => p)];
      assert.equal(new Set(positions.map(epochOf)).size, 1, `one epoch through every restart: ${positions}`);
      assert.deepEqual(positions.map(offsetOf), positions.map((_, k) => offsetOf(positions[0]) + k),
        `consecutive offsets: ${positions}`);

      const again = await subscribed(1, ch, last);
      const resumed = JSON.parse((await again.waitEvent('plexus:resume', ch, 10_000)).msg.data);
      assert.equal(resumed.recovered, true, `resume from ${last}: ${JSON.stringify(resumed)}`);
      assert.deepEqual(items(again, ch), missed, 'exactly the missed events, in order, at their positions');
      assert.equal(resumed.position, missed[3][1]);
    });
  });
}
