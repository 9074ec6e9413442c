// The dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core)
// against a real `plexus serve --dashboard`, with a real pusher-js client and the pusher SDK:
// a connection appears, a published event arrives in the debug console, and an event sent
// from the dashboard's form reaches pusher-js; empty tables say so, and no request fails.
// Leaves target/browser/dashboard.png behind.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import PusherClient from 'pusher-js';
import PusherServer from 'pusher';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..', '..');
const BIN = process.env.PLEXUS_BIN || join(repo, 'target', 'release', 'plexus');
const WAIT = 15000;

let server; let browser; let page; let client; let sdk;
// Every request of the page that failed or answered >= 400, and every console error.
const failures = []; const consoleErrors = [];
let wsPort; let dashboardUrl;

/// Resolves with the value `probe` returns once truthy; rejects naming `what` after `ms`.
function within(ms, what, probe) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    probe((value) => { clearTimeout(timer); resolve(value); });
  });
}

before(async () => {
  const dir = join(tmpdir(), `plexus-browser-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  const config = join(dir, 'plexus.toml');
  writeFileSync(config, '[server]\nhost = "127.0.0.1"\nport = 0\n[metrics]\nenabled = false\n'
    + '[admin]\nport = 0\n[[apps]]\nid = "browser-app"\nkey = "browser-key"\nsecret = "browser-secret"\n');
  server = spawn(BIN, ['serve', '--config', config, '--dashboard'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  await within(WAIT, 'plexus to print its listening and dashboard lines', (done) => {
    server.stdout.on('data', (chunk) => {
      out += chunk;
      const listening = out.match(/plexus listening on [\d.]+:(\d+)/);
      const dashboard = out.match(/plexus dashboard on (\S+)/);
      if (listening && dashboard) { wsPort = Number(listening[1]); dashboardUrl = dashboard[1]; done(); }
    });
  });
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
  page.on('requestfailed', (request) => failures.push(`${request.url()}: ${request.failure()?.errorText}`));
  page.on('response', (response) => { if (response.status() >= 400) failures.push(`${response.url()}: ${response.status()}`); });
  page.on('console', (message) => { if (message.type() === 'error') consoleErrors.push(message.text()); });
  sdk = new PusherServer({
    appId: 'browser-app', key: 'browser-key', secret: 'browser-secret', host: '127.0.0.1', port: String(wsPort), useTLS: false,
  });
});

after(async () => {
  if (client) client.disconnect();
  if (browser) await browser.close();
  if (server) server.kill('SIGTERM');
});

test('the dashboard shows a pusher-js connection, streams a published event, and its form reaches pusher-js', async () => {
  await page.goto(dashboardUrl);
  const appRow = page.locator('#apps tr[data-app="browser-app"]');
  await appRow.waitFor({ timeout: WAIT });
  await page.locator('#app-select').waitFor({ timeout: WAIT });
  // Nothing subscribed or wired yet: each table says so instead of showing a bare header.
  await page.locator('#channels tr.empty', { hasText: 'no occupied channels yet' }).waitFor({ timeout: WAIT });
  await page.locator('#typed tr.empty', { hasText: 'no typed channels wired' }).waitFor({ timeout: WAIT });
  await page.locator('#bridges tr.empty', { hasText: 'no NATS bridges' }).waitFor({ timeout: WAIT });

  client = new PusherClient('browser-key', {
    wsHost: '127.0.0.1', wsPort, forceTLS: false, enabledTransports: ['ws'], cluster: 'mt1', disableStats: true,
  });
  const channel = client.subscribe('lobby');
  await within(WAIT, 'pusher-js to subscribe', (done) => channel.bind('pusher:subscription_succeeded', done));

  // Connections is the third column; the page refreshes every second.
  await page.waitForFunction(() => {
    const row = document.querySelector('#apps tr[data-app="browser-app"]');
    return row && row.children[2].textContent === '1';
  }, null, { timeout: WAIT });
  await page.locator('#channels td', { hasText: 'lobby' }).waitFor({ timeout: WAIT });

  await sdk.trigger('lobby', 'headline', { text: 'from the SDK' });
  await page.locator('#console li', { hasText: 'headline' }).waitFor({ timeout: WAIT });
  const line = await page.locator('#console li', { hasText: 'headline' }).first().textContent();
  assert.match(line, /event lobby headline .*from the SDK/);

  const received = within(WAIT, 'pusher-js to receive the dashboard event', (done) => channel.bind('from-form', done));
  await page.getByLabel('Channel', { exact: true }).fill('lobby');
  await page.getByLabel('Event name').fill('from-form');
  await page.getByLabel('Data (JSON or text)').fill('{"sent": "by the form"}');
  await page.getByRole('button', { name: 'Publish' }).click();
  assert.deepEqual(await received, { sent: 'by the form' });
  await page.locator('#publish-result', { hasText: 'published' }).waitFor({ timeout: WAIT });

  const shots = join(repo, 'target', 'browser');
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: join(shots, 'dashboard.png'), fullPage: true });
  // The favicon used to be a 404 on every load.
  assert.deepEqual(failures, [], 'no failed requests');
  assert.deepEqual(consoleErrors, [], 'no console errors');
});
