// The dashboard of one node of a two-node cluster over the real NATS, in headless Chromium: its
// charts draw the whole cluster, this node and the other node, from the figures the nodes
// report to each other. One pusher-js client on the dashboard's node, two on the other, which
// publishes; nothing on the page fails or logs an error. Leaves target/browser/charts-cluster.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchChromium, watchedPage } from './chromium.js';
import PusherClient from 'pusher-js';
import PusherServer from 'pusher';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..', '..');
const BIN = process.env.PLEXUS_BIN || join(repo, 'target', 'release', 'plexus');
const WAIT = 30000;
const shots = join(repo, 'target', 'browser');

const nodes = []; const clients = []; const failures = []; const consoleErrors = [];
let browser; let page; let publishing;

/// Starts a node of the cluster; resolves with its WebSocket port and dashboard URL (if asked).
function startNode(dir, name, dashboard) {
  const config = join(dir, `${name}.toml`);
  writeFileSync(config, '[server]\nhost = "127.0.0.1"\nport = 0\n[metrics]\nenabled = false\n'
    + `[adapter]\ndriver = "nats"\nurl = "nats://127.0.0.1:4222"\nprefix = "browser-${process.pid}"\n`
    + 'heartbeat_ms = 200\nlease_ms = 1000\n'
    + (dashboard ? '[admin]\nport = 0\n' : '')
    + '[[apps]]\nid = "cluster-app"\nkey = "cluster-key"\nsecret = "cluster-secret"\n');
  const args = ['serve', '--config', config, ...(dashboard ? ['--dashboard'] : [])];
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  nodes.push(child);
  let out = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start: ${out}`)), WAIT);
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const listening = out.match(/plexus listening on [\d.]+:(\d+)/);
      const board = out.match(/plexus dashboard on (\S+)/);
      if (listening && (board || !dashboard)) {
        clearTimeout(timer);
        resolve({ port: Number(listening[1]), dashboardUrl: board?.[1] });
      }
    });
  });
}

function connect(port) {
  const client = new PusherClient('cluster-key', {
    cluster: 'local', wsHost: '127.0.0.1', wsPort: port, forceTLS: false, enabledTransports: ['ws'],
  });
  clients.push(client);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no subscription on :${port}`)), WAIT);
    client.subscribe('ticker').bind('pusher:subscription_succeeded', () => { clearTimeout(timer); resolve(); });
  });
}

before(async () => {
  const dir = join(tmpdir(), `plexus-browser-cluster-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  mkdirSync(shots, { recursive: true });
  const here = await startNode(dir, 'here', true);
  const there = await startNode(dir, 'there', false);
  await connect(here.port);
  await connect(there.port);
  await connect(there.port);
  const sdk = new PusherServer({
    appId: 'cluster-app', key: 'cluster-key', secret: 'cluster-secret', host: '127.0.0.1', port: String(there.port), useTLS: false,
  });
  // Events on the other node, so this node's charts can only know them from its reports.
  let n = 0;
  publishing = setInterval(() => { sdk.trigger('ticker', 'tick', { n: n++ }).catch(() => {}); }, 100);
  browser = await launchChromium();
  page = await watchedPage(browser, { failures, consoleErrors, viewport: { width: 1366, height: 900 } });
  await page.goto(here.dashboardUrl);
});

after(async () => {
  clearInterval(publishing);
  clients.forEach((client) => client.disconnect());
  if (browser) await browser.close();
  nodes.forEach((node) => node.kill('SIGTERM'));
});

test('charts of one node show the cluster total, this node and the other node', async () => {
  // The first line of a cluster's chart is the cluster's total: 1 connection here, 2 there.
  await page.locator('#chart-connections[data-last="3"]').waitFor({ timeout: WAIT });
  await page.locator('#chart-subscriptions[data-last="3"]').waitFor({ timeout: WAIT });
  // Events are published only on the other node: the cluster's rates come from its reports.
  await page.waitForFunction(() => ['events', 'messages'].every((id) => Number(document.querySelector(`#chart-${id}`)?.dataset.last) > 0),
    null, { timeout: WAIT });
  for (const id of ['connections', 'subscriptions', 'events', 'messages']) {
    const legend = await page.locator(`#chart-${id} .legend li`).allTextContents();
    assert.equal(legend.length, 3, `${id}: ${legend}`);
    assert.equal(legend[0], 'cluster total', `${id}: ${legend}`);
    assert.match(legend[1], /^this node \(\d+\)$/, `${id}: ${legend}`);
    assert.match(legend[2], /^node \d+$/, `${id}: ${legend}`);
    assert.equal(await page.locator(`#chart-${id} svg polyline, #chart-${id} svg circle`).count() >= 3, true, `${id} draws every series`);
  }
  assert.match(await page.locator('#chart-connections svg').getAttribute('aria-label'), /now 3,/);
  assert.match(await page.locator('#charts-note').textContent(), /every figure per node and for the whole cluster/);
  await page.locator('#charts-section').screenshot({ path: join(shots, 'charts-cluster.png') });
  assert.deepEqual(failures, []);
  assert.deepEqual(consoleErrors, []);
});
