// 20. Apps in PostgreSQL ([app_store] driver = "postgres"), against the real server on
//     127.0.0.1:5432 (database `test`) and two nodes clustered over the real NATS: `plexus migrate`
//     creates the table; an app inserted with SQL is served by every node without a restart; a
//     rotated secret is the one signatures must use; a disabled app's live connections on every
//     node close with 4003 and new ones are refused.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import {
  startServer, ClientPool, sdkFor, subscribe, record, unique, waitUntil, waitForState, transportClosed,
  withTimeout, recordConnectionErrors, errorCode, PLEXUS_BIN, TIMEOUT,
} from './helpers.js';

const DB_URL = 'postgres://postgres@127.0.0.1:5432/test';

function config(table, prefix) {
  return `
[server]
host = "127.0.0.1"
port = 0

[adapter]
driver = "nats"
prefix = "${prefix}"
heartbeat_ms = 500
lease_ms = 3000

[webhooks]
data_dir = "@SERVER_DIR@"

[app_store]
driver = "postgres"
url = "${DB_URL}"
table = "${table}"
refresh_secs = 1
migrate = false
`;
}

describe('apps in PostgreSQL, served by a cluster', () => {
  const table = `plexus_apps_t${process.pid}_${Date.now() % 100000}`;
  const prefix = `pgstore${process.pid}`;
  const db = new pg.Client({ connectionString: DB_URL });
  const nodes = [];
  const pools = [];
  let dir;

  before(async () => {
    await db.connect();
    dir = mkdtempSync(path.join(tmpdir(), 'plexus-migrate-'));
    const file = path.join(dir, 'plexus.toml');
    writeFileSync(file, config(table, prefix));
    // `plexus migrate` is how an operator creates the schema; running it twice changes nothing.
    for (let i = 0; i < 2; i += 1) {
      const run = spawnSync(PLEXUS_BIN, ['migrate', '--config', file], { encoding: 'utf8', timeout: 30_000 });
      assert.equal(run.status, 0, `plexus migrate failed: ${run.stderr}`);
      assert.match(run.stdout, new RegExp(`up to date \\(table ${table}\\)`));
    }
    await db.query(`insert into ${table} (id, key, secret, enable_client_messages) values ('first', 'first-key', 'first-secret', true)`);
    for (let i = 0; i < 2; i += 1) {
      const server = await startServer({ config: config(table, prefix) });
      nodes.push(server);
      pools.push(new ClientPool(server));
    }
  });

  after(async () => {
    for (const pool of pools) pool.disconnectAll();
    const results = await Promise.all(nodes.map((n) => n.stop()));
    await db.query(`drop table if exists ${table}`).catch(() => {});
    await db.end();
    rmSync(dir, { recursive: true, force: true });
    for (const [i, r] of results.entries()) {
      assert.ok(!r.crashed, `node ${i} died; stderr:\n${nodes[i].stderrTail()}`);
    }
  });

  const app = (id, key, secret) => ({ id, key, secret });
  /** True once node `n` accepts a trigger signed with `creds` (HTTP 200). */
  async function accepts(n, creds) {
    try {
      const res = await sdkFor(nodes[n], creds).trigger('probe', 'probe', {});
      return res.status === 200;
    } catch {
      return false;
    }
  }

  it('an app from the table is served by every node', async () => {
    const first = app('first', 'first-key', 'first-secret');
    for (const n of [0, 1]) {
      assert.ok(await accepts(n, first), `node ${n} refuses the app from the table`);
      const client = await pools[n].connect(first.key);
      await subscribe(client, unique('public-'));
    }
  });

  it('an app inserted later is served by every node without a restart', async () => {
    const later = app('later', 'later-key', 'later-secret');
    assert.equal(await accepts(0, later), false, 'served before it exists');
    await db.query(`insert into ${table} (id, key, secret) values ($1, $2, $3)`, [later.id, later.key, later.secret]);
    for (const n of [0, 1]) {
      await waitUntil(() => accepts(n, later), `node ${n} to serve the new app`);
    }
  });

  it('a rotated secret is the one signatures must use', async () => {
    const rotating = app('rotating', 'rotating-key', 'old-secret');
    await db.query(`insert into ${table} (id, key, secret) values ($1, $2, $3)`, [rotating.id, rotating.key, rotating.secret]);
    for (const n of [0, 1]) await waitUntil(() => accepts(n, rotating), `node ${n} to serve the app`);
    await db.query(`update ${table} set secret = 'new-secret' where id = $1`, [rotating.id]);
    const rotated = { ...rotating, secret: 'new-secret' };
    for (const n of [0, 1]) {
      await waitUntil(() => accepts(n, rotated), `node ${n} to accept the new secret`);
      assert.equal(await accepts(n, rotating), false, `node ${n} still accepts the old secret`);
    }
  });

  it('disabling an app closes its connections on every node with 4003 and refuses new ones', async () => {
    const doomed = app('doomed', 'doomed-key', 'doomed-secret');
    await db.query(`insert into ${table} (id, key, secret) values ($1, $2, $3)`, [doomed.id, doomed.key, doomed.secret]);
    for (const n of [0, 1]) await waitUntil(() => accepts(n, doomed), `node ${n} to serve the app`);
    const clients = [];
    for (const n of [0, 1]) {
      const client = await pools[n].connect(doomed.key);
      await subscribe(client, unique('public-'));
      clients.push(client);
    }
    const other = await pools[1].connect('first-key');
    const otherEvents = record(other);
    const closes = clients.map((c) => transportClosed(c));
    await db.query(`update ${table} set enabled = false where id = $1`, [doomed.id]);
    const events = await withTimeout(Promise.all(closes), TIMEOUT + 2000, 'the disabled app\'s connections to close');
    for (const ev of events) assert.equal(ev.code, 4003, `close code ${JSON.stringify(ev)}`);

    const late = pools[0].create(doomed.key);
    const errors = recordConnectionErrors(late);
    await waitUntil(() => errors.some((e) => errorCode(e) === 4003), 'a new connection to be refused with 4003');
    late.disconnect();

    assert.equal(other.connection.state, 'connected', 'another app\'s client was disturbed');
    await waitForState(other, 'connected');
    assert.deepEqual(otherEvents.events.filter((e) => e.name === 'pusher:error'), []);
  });
});
