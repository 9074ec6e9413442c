// 21. A cluster heals by itself after losing its bus. Each bus runs as a private server process
//     (the real nats-server / redis-server binaries on a free loopback port) so the test can kill
//     it and start it again without touching the shared ones. While the bus is down the state
//     changes on one node; once it is back, every node must agree again — presence lists and
//     counts — and events must flow between the nodes, with nobody restarting anything.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer, connect } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  startServer, ClientPool, sdkFor, subscribe, record, unique, sdkAuthorizer, apiGet, waitUntil, withTimeout,
  clusterNodeConfig, APP1,
} from './helpers.js';

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** A private bus server; `start()` (again after `kill()`) on the same port. */
function privateBus(driver, port, dir) {
  let proc = null;
  const argv = driver === 'nats'
    ? ['/usr/sbin/nats-server', ['-a', '127.0.0.1', '-p', String(port)]]
    : ['redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir]];
  return {
    url: `${driver}://127.0.0.1:${port}`,
    async start() {
      proc = spawn(argv[0], argv[1], { stdio: 'ignore' });
      await waitUntil(() => new Promise((resolve) => {
        const s = connect(port, '127.0.0.1');
        s.once('connect', () => { s.destroy(); resolve(true); });
        s.once('error', () => resolve(false));
      }), `${driver} on port ${port}`);
    },
    async kill() {
      if (!proc) return;
      const exited = new Promise((resolve) => proc.once('exit', resolve));
      proc.kill('SIGKILL');
      await withTimeout(exited, 5000, `${driver} to die`);
      proc = null;
    },
  };
}

for (const driver of ['nats', 'redis']) {
  describe(`a cluster over ${driver} heals after the bus comes back`, () => {
    const nodes = [];
    const pools = [];
    const sdks = [];
    let bus;
    let dir;

    before(async () => {
      dir = mkdtempSync(path.join(tmpdir(), `plexus-${driver}-`));
      bus = privateBus(driver, await freePort(), dir);
      await bus.start();
      const prefix = `heal${process.pid}`;
      for (let i = 0; i < 2; i += 1) {
        const server = await startServer({ config: clusterNodeConfig({ driver, url: bus.url }, prefix, { leaseMs: 2000 }) });
        nodes.push(server);
        pools.push(new ClientPool(server));
        sdks.push(sdkFor(server));
      }
    });

    after(async () => {
      for (const pool of pools) pool.disconnectAll();
      const results = await Promise.all(nodes.map((n) => n.stop()));
      await bus?.kill();
      rmSync(dir, { recursive: true, force: true });
      for (const [i, r] of results.entries()) {
        assert.ok(!r.crashed, `node ${i} died; stderr:\n${nodes[i].stderrTail()}`);
      }
    });

    const auth = (n, id) => sdkAuthorizer(sdks[n], () => ({ user_id: id, user_info: {} }));
    const usersOn = async (n, ch) => (await apiGet(sdks[n], `/channels/${ch}/users`)).users.map((u) => u.id).sort();

    it('presence and events agree again on both nodes without a restart', async () => {
      const ch = unique('presence-heal-');
      const pub = unique('public-heal-');
      const a = await pools[0].connect(APP1.key, { channelAuthorization: auth(0, 'a') });
      await subscribe(a, ch);
      const b = await pools[1].connect(APP1.key, { channelAuthorization: auth(1, 'b') });
      await subscribe(b, ch);
      await waitUntil(async () => (await usersOn(0, ch)).join() === 'a,b', 'node 0 to list a and b');

      await bus.kill();
      // While the bus is down, c joins on node 1 and b leaves: node 0 cannot know yet.
      const c = await pools[1].connect(APP1.key, { channelAuthorization: auth(1, 'c') });
      await subscribe(c, ch);
      b.disconnect();
      // Keep the bus down past the lease: node 0 must give up on node 1's members.
      await waitUntil(async () => (await usersOn(0, ch)).join() === 'a', 'node 0 to drop node 1\'s members after the lease');
      await bus.start();

      for (const n of [0, 1]) {
        await waitUntil(async () => (await usersOn(n, ch)).join() === 'a,c', `node ${n} to list exactly a and c`, { timeout: 15_000 });
      }
      const { channel } = await subscribe(c, pub);
      const rec = record(channel);
      await waitUntil(async () => {
        await sdks[0].trigger(pub, 'ping', {});
        return rec.count('ping') > 0;
      }, 'an event published on node 0 to reach node 1', { timeout: 10_000, interval: 200 });
    });
  });
}
