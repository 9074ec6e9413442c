// The dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core)
// against a real `plexus serve --dashboard`, with a real pusher-js client and the pusher SDK,
// used as a person would: a connection appears, a published event arrives in the debug console
// (watch), an event sent from the dashboard's form reaches pusher-js (publish), the charts draw
// the server's samples, and the webhook panel shows a local receiver failing, then "Retry now"
// delivers at once (the backoff is ten minutes, so nothing else could). Empty tables say so, no
// request fails and nothing is logged as an error. Leaves a screenshot of each view under
// target/browser/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
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
const WAIT = 15000;

let server; let browser; let page; let client; let sdk;
// Every request of the page that failed or answered >= 400, and every console error.
const failures = []; const consoleErrors = [];
let wsPort; let dashboardUrl;
// The webhook receiver: answers 500 while `failing`, then 200; `hooks` holds accepted bodies.
let receiver; let failing = true; const hooks = []; let hookArrived = () => {};
const shots = join(repo, 'target', 'browser');

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
  mkdirSync(shots, { recursive: true });
  receiver = createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => { body += chunk; });
    request.on('end', () => {
      if (failing) { response.writeHead(500).end('receiver down'); return; }
      hooks.push(JSON.parse(body));
      response.writeHead(200).end('ok');
      hookArrived();
    });
  });
  await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  const hookUrl = `http://127.0.0.1:${receiver.address().port}/hook`;
  const config = join(dir, 'plexus.toml');
  writeFileSync(config, '[server]\nhost = "127.0.0.1"\nport = 0\n[metrics]\nenabled = false\n'
    + `[webhooks]\ndata_dir = "${join(dir, 'data')}"\nbatch_window_ms = 20\n`
    // Ten minutes: within the test only "Retry now" can cause a second attempt.
    + 'initial_backoff_ms = 600000\nmax_backoff_secs = 600\n'
    + '[admin]\nport = 0\n[[apps]]\nid = "browser-app"\nkey = "browser-key"\nsecret = "browser-secret"\n'
    + `[[apps.webhooks]]\nurl = "${hookUrl}"\nevents = ["channel_occupied"]\n`);
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
  browser = await launchChromium();
  page = await watchedPage(browser, { failures, consoleErrors, viewport: { width: 1366, height: 900 } });
  sdk = new PusherServer({
    appId: 'browser-app', key: 'browser-key', secret: 'browser-secret', host: '127.0.0.1', port: String(wsPort), useTLS: false,
  });
});

after(async () => {
  if (client) client.disconnect();
  if (browser) await browser.close();
  if (server) server.kill('SIGTERM');
  if (receiver) receiver.close();
});

/// A screenshot of one view (a section of the page) under target/browser/.
async function shoot(selector, name) {
  await page.locator(selector).screenshot({ path: join(shots, `${name}.png`) });
}

test('watch and publish: a pusher-js connection appears, a published event streams in, the form reaches pusher-js', async () => {
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
  await shoot('section[aria-labelledby="console-heading"]', 'watch');

  const received = within(WAIT, 'pusher-js to receive the dashboard event', (done) => channel.bind('from-form', done));
  await page.getByLabel('Channel', { exact: true }).fill('lobby');
  await page.getByLabel('Event name').fill('from-form');
  await page.getByLabel('Data (JSON or text)').fill('{"sent": "by the form"}');
  await page.getByRole('button', { name: 'Publish' }).click();
  assert.deepEqual(await received, { sent: 'by the form' });
  await page.locator('#publish-result', { hasText: 'published' }).waitFor({ timeout: WAIT });
  await shoot('section[aria-labelledby="publish-heading"]', 'publish');
});

test('charts: the server\'s samples draw connections, subscriptions and rates for the chosen app', async () => {
  // The server samples every 5 s; the page asks every 2 s. One pusher-js socket in one channel.
  await page.locator('#chart-connections[data-last="1"]').waitFor({ timeout: WAIT });
  await page.locator('#chart-subscriptions[data-last="1"]').waitFor({ timeout: WAIT });
  // Two events were published (SDK and form) before some sample: a later one shows a rate.
  await page.waitForFunction(() => ['events', 'messages'].every((id) => Number(document.querySelector(`#chart-${id}`)?.dataset.peak) > 0),
    null, { timeout: WAIT });
  const label = await page.locator('#chart-connections svg').getAttribute('aria-label');
  assert.match(label, /^Connections, last 15 minutes: now 1, peak 1$/);
  for (const id of ['connections', 'subscriptions', 'events', 'messages']) {
    assert.equal(await page.locator(`#chart-${id} svg polyline`).count() >= 1, true, `${id} has a line`);
  }
  assert.match(await page.locator('#charts-heading').textContent(), /browser-app/);
  await shoot('#charts-section', 'charts');
});

test('webhooks: a failing receiver shows with its reason, and Retry now delivers at once', async () => {
  // pusher-js occupied "lobby": its channel_occupied went to the receiver, which answered 500.
  const row = page.locator('#webhooks tr[data-endpoint="0"]');
  await page.locator('#webhooks tr[data-endpoint="0"][data-state="backing_off"]').waitFor({ timeout: WAIT });
  const cells = await row.locator('td').allTextContents();
  assert.match(cells[1], /^http:\/\/127\.0\.0\.1:\d+\/hook$/);
  assert.match(cells[2], /^backing off \(next try in \d+ min/);
  assert.deepEqual([cells[3], cells[5], cells[6], cells[7]], ['1', '500', '0', '1'], `queued, last status, delivered, failures: ${cells}`);
  await page.locator('#webhook-failures li', { hasText: 'HTTP 500' }).waitFor({ timeout: WAIT });
  assert.equal(hooks.length, 0, 'nothing accepted yet');
  await shoot('#webhooks-section', 'webhooks-failing');

  failing = false;
  const delivered = within(WAIT, 'the receiver to accept the retried webhook', (done) => { hookArrived = done; });
  await page.getByRole('button', { name: 'Retry endpoint 0 now' }).click();
  await delivered;
  assert.deepEqual(hooks[0].events.map((e) => [e.name, e.channel]), [['channel_occupied', 'lobby']]);
  await page.locator('#webhook-result', { hasText: 'retrying now' }).waitFor({ timeout: WAIT });
  await page.locator('#webhooks tr[data-endpoint="0"][data-state="idle"]').waitFor({ timeout: WAIT });
  await page.waitForFunction(() => {
    const cells = [...document.querySelectorAll('#webhooks tr[data-endpoint="0"] td')].map((td) => td.textContent);
    return cells[3] === '0' && cells[5] === '200' && cells[6] === '1' && cells[8] === '1';
  }, null, { timeout: WAIT });
  assert.equal(await page.getByRole('button', { name: 'Retry endpoint 0 now' }).isDisabled(), true);
  await shoot('#webhooks-section', 'webhooks');
  await page.screenshot({ path: join(shots, 'dashboard.png'), fullPage: true });
});

test('no request of the page failed and nothing was logged as an error', () => {
  // The favicon used to be a 404 on every load.
  assert.deepEqual(failures, [], 'no failed requests');
  assert.deepEqual(consoleErrors, [], 'no console errors');
});
