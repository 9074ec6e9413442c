// 27. History across a cluster, over the real NATS (127.0.0.1:4222) and Redis (127.0.0.1:6379)
//     servers. One node numbers each history channel's events, so every node records the same
//     event at the same position: subscribers on different nodes see one sequence, and a client
//     resumes on any node from a position it read on another, including a node that joined
//     after the position was given. When the numbering node dies, a
//     survivor takes over; a resume from before then gets exactly the missed events or
//     `recovered: false` — never a silent hole.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, sdkFor, unique, apiGet, waitUntil, historyNodeConfig, historyItems as items, epochOf, offsetOf,
  subscribedRaw,
} from './helpers.js';

const LEASE_MS = 3000;

const CONFIG = (bus, prefix) => historyNodeConfig(bus, prefix, { leaseMs: LEASE_MS });

for (const bus of [
  { driver: 'nats', url: 'nats://127.0.0.1:4222' },
  { driver: 'redis', url: 'redis://127.0.0.1:6379' },
]) {
  describe(`history across three nodes over ${bus.driver}`, () => {
    const prefix = `h${process.pid}${bus.driver}${Date.now() % 100000}`;
    const nodes = [];
    const sdks = [];
    const sockets = [];

    before(async () => {
      const started = await Promise.all([0, 1, 2].map(() => startServer({ config: CONFIG(bus, prefix) })));
      for (const server of started) {
        nodes.push(server);
        sdks.push(sdkFor(server));
      }
    });

    after(async () => {
      for (const s of sockets.splice(0)) s.close();
      const results = await Promise.all(nodes.map((n) => n.stop()));
      for (const [i, r] of results.entries()) {
        assert.ok(!r.crashed, `node ${i} died during the tests; stderr:\n${nodes[i].stderrTail()}`);
      }
    });

    const subscribed = (n, ch, position) => subscribedRaw(nodes[n], ch, position, sockets);

    const waitItems = (s, ch, count, what) => waitUntil(() => items(s, ch).length >= count, what, { timeout: 10_000 });

    it('subscribers on every node see the same events at the same positions, in one order', async () => {
      const ch = unique('feed-');
      const subs = await Promise.all([0, 1, 2].map((n) => subscribed(n, ch)));
      for (let i = 0; i < 9; i += 1) await sdks[i % 3].trigger(ch, 'item', { i });
      for (const [n, s] of subs.entries()) await waitItems(s, ch, 9, `nine items on node ${n}`);

      const views = subs.map((s) => items(s, ch));
      assert.deepEqual(views[1], views[0], 'node 1 saw the same (event, position) sequence as node 0');
      assert.deepEqual(views[2], views[0], 'node 2 saw the same (event, position) sequence as node 0');
      assert.deepEqual(views[0].map(([i]) => i).sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7, 8], 'each event once');
      const positions = views[0].map(([, p]) => p);
      assert.equal(new Set(positions.map(epochOf)).size, 1, `one epoch: ${positions}`);
      const offsets = positions.map(offsetOf);
      assert.deepEqual(offsets, offsets.map((_, k) => offsets[0] + k), `consecutive offsets: ${positions}`);
    });

    it('a client resumes on another node from a position it read on the first', async () => {
      const ch = unique('feed-');
      const first = await subscribed(0, ch);
      for (let i = 0; i < 3; i += 1) await sdks[i].trigger(ch, 'item', { i });
      await waitItems(first, ch, 3, 'three items on node 0');
      const [, last] = items(first, ch)[2];
      first.close();

      // Published through every node while the client is away; a watcher on node 1 shows when
      // they have all been numbered, and in which order.
      const watcher = await subscribed(1, ch);
      for (let i = 3; i < 7; i += 1) await sdks[i % 3].trigger(ch, 'item', { i });
      await waitItems(watcher, ch, 4, 'the four missed items on the watcher');
      const missed = items(watcher, ch);

      const again = await subscribed(2, ch, last);
      const resumed = JSON.parse((await again.waitEvent('plexus:resume', ch, 10_000)).msg.data);
      assert.equal(resumed.recovered, true, `resume on node 2 from ${last}: ${JSON.stringify(resumed)}`);
      assert.deepEqual(items(again, ch), missed, 'exactly the missed events, in order, at their positions');
      assert.equal(resumed.position, missed[3][1]);
    });

    it('a node that joins later learns the histories from its peers and resumes clients from before', async () => {
      const ch = unique('feed-');
      const first = await subscribed(0, ch);
      for (let i = 0; i < 4; i += 1) await sdks[i % 3].trigger(ch, 'item', { i });
      await waitItems(first, ch, 4, 'four items on node 0');
      const seen = items(first, ch);

      // Its listening line comes once it holds its peers' state, histories included.
      const joined = await startServer({ config: CONFIG(bus, prefix) });
      nodes.push(joined);
      sdks.push(sdkFor(joined));
      const again = await subscribed(3, ch, seen[1][1]);
      const resumed = JSON.parse((await again.waitEvent('plexus:resume', ch, 10_000)).msg.data);
      assert.equal(resumed.recovered, true, `resume on the new node from ${seen[1][1]}: ${JSON.stringify(resumed)}`);
      assert.deepEqual(items(again, ch), seen.slice(2), 'the events after that position, as first delivered');
    });

    it('after the numbering node dies, a resume from before gets the missed events or recovered: false', async () => {
      const ch = unique('feed-');
      const subs = await Promise.all([0, 1, 2].map((n) => subscribed(n, ch)));
      for (let i = 0; i < 3; i += 1) await sdks[i].trigger(ch, 'item', { i });
      for (const s of subs) await waitItems(s, ch, 3, 'three items');
      const [, before] = items(subs[0], ch)[2];
      subs[0].close();

      // Kill node 2 (it may or may not number this channel); wait until nodes 0 and 1 forget it:
      // its subscription on a probe channel no longer counts there.
      const probe = unique('probe-');
      await subscribed(2, probe);
      const occupiedOn = async (n) => (await apiGet(sdks[n], `/channels/${probe}`, {})).occupied;
      for (const n of [0, 1]) await waitUntil(() => occupiedOn(n), `the probe seen on node ${n}`);
      await nodes[2].stop({ signal: 'SIGKILL' });
      for (const n of [0, 1]) {
        await waitUntil(async () => !(await occupiedOn(n)), `node ${n} to forget the killed node`,
          { timeout: LEASE_MS + 7000, interval: 200 });
      }

      for (let i = 3; i < 6; i += 1) await sdks[i % 2].trigger(ch, 'item', { i });
      await waitItems(subs[1], ch, 6, 'the items published after the kill');
      const after = items(subs[1], ch).slice(3);

      const again = await subscribed(0, ch, before);
      const resumed = JSON.parse((await again.waitEvent('plexus:resume', ch, 10_000)).msg.data);
      if (resumed.recovered) {
        assert.deepEqual(items(again, ch), after, 'recovered: true replays exactly what was missed');
      } else {
        assert.deepEqual(items(again, ch), [], 'recovered: false replays nothing (no partial history)');
        assert.notEqual(epochOf(after[0][1]), epochOf(before), 'a new epoch began when numbering moved');
      }
      assert.equal(resumed.position, after[2][1], 'the resume names the channel position now');
    });
  });
}
