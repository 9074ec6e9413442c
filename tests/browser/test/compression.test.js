// permessage-deflate as a browser gets it: pusher-js in headless Chromium (which offers the
// extension on every WebSocket) connects through a recording TCP proxy to a real `plexus serve`,
// and an event published with the pusher SDK arrives intact in the page. The recording proves
// what travelled: the handshake agreed the extension, the event's frame carried RSV1, and its
// bytes inflate (Node's zlib, not plexus's code) to the very message the page received.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer, connect } from 'node:net';
import { mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inflateRawSync, constants } from 'node:zlib';
import { launchChromium, watchedPage } from './chromium.js';
import PusherServer from 'pusher';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..', '..');
const BIN = process.env.PLEXUS_BIN || join(repo, 'target', 'release', 'plexus');
const PUSHER_JS = join(here, '..', 'node_modules', 'pusher-js', 'dist', 'web', 'pusher.min.js');
const WAIT = 15000;

let server; let proxy; let browser; let page; let sdk; let proxyPort;
// Everything plexus sent to the browser, per proxied connection, in order.
const fromServer = [];
const consoleErrors = [];

function within(ms, what, probe) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    probe((value) => { clearTimeout(timer); resolve(value); });
  });
}

before(async () => {
  const dir = join(tmpdir(), `plexus-compression-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  const config = join(dir, 'plexus.toml');
  writeFileSync(config, '[server]\nhost = "127.0.0.1"\nport = 0\n[metrics]\nenabled = false\n'
    + '[[apps]]\nid = "deflate-app"\nkey = "deflate-key"\nsecret = "deflate-secret"\n');
  server = spawn(BIN, ['serve', '--config', config], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const plexusPort = await within(WAIT, 'plexus to listen', (done) => {
    server.stdout.on('data', (chunk) => {
      out += chunk;
      const listening = out.match(/plexus listening on [\d.]+:(\d+)/);
      if (listening) done(Number(listening[1]));
    });
  });
  proxy = createServer((downstream) => {
    const recorded = [];
    fromServer.push(recorded);
    const upstream = connect(plexusPort, '127.0.0.1');
    downstream.on('data', (chunk) => upstream.write(chunk));
    upstream.on('data', (chunk) => { recorded.push(chunk); downstream.write(chunk); });
    downstream.on('close', () => upstream.destroy());
    upstream.on('close', () => downstream.destroy());
    downstream.on('error', () => upstream.destroy());
    upstream.on('error', () => downstream.destroy());
  });
  await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  proxyPort = proxy.address().port;
  sdk = new PusherServer({
    appId: 'deflate-app', key: 'deflate-key', secret: 'deflate-secret', host: '127.0.0.1', port: String(plexusPort), useTLS: false,
  });
  browser = await launchChromium();
  page = await watchedPage(browser, { consoleErrors });
});

after(async () => {
  if (browser) await browser.close();
  if (proxy) proxy.close();
  if (server) server.kill('SIGTERM');
});

/// The server frames in `bytes` after the HTTP response head: [{ rsv1, opcode, payload }].
/// A permessage-deflate message as the receiver reads it: the stripped empty block put back, then
/// raw inflate up to the sync point (RFC 7692 §7.2.2).
function inflateMessage(payload) {
  return inflateRawSync(Buffer.concat([payload, Buffer.from([0x00, 0x00, 0xff, 0xff])]), { finishFlush: constants.Z_SYNC_FLUSH }).toString();
}

function serverFrames(bytes) {
  const headEnd = bytes.indexOf('\r\n\r\n');
  const head = bytes.subarray(0, headEnd).toString('latin1');
  const frames = [];
  let at = headEnd + 4;
  while (at + 2 <= bytes.length) {
    const first = bytes[at]; let len = bytes[at + 1] & 0x7f; let header = 2;
    if (len === 126) { len = bytes.readUInt16BE(at + 2); header = 4; }
    if (len === 127) { len = Number(bytes.readBigUInt64BE(at + 2)); header = 10; }
    if (at + header + len > bytes.length) break;
    frames.push({ rsv1: (first & 0x40) !== 0, opcode: first & 0x0f, payload: bytes.subarray(at + header, at + header + len) });
    at += header + len;
  }
  return { head, frames };
}

test('pusher-js in Chromium negotiates permessage-deflate and gets a compressed event intact', async () => {
  await page.addScriptTag({ path: PUSHER_JS });
  await page.evaluate((port) => {
    window.received = [];
    const pusher = new window.Pusher('deflate-key', {
      wsHost: '127.0.0.1', wsPort: port, forceTLS: false, enabledTransports: ['ws'], cluster: 'local',
    });
    const channel = pusher.subscribe('prices');
    channel.bind('pusher:subscription_succeeded', () => { window.subscribed = true; });
    channel.bind('quote', (data) => window.received.push(data));
  }, proxyPort);
  await page.waitForFunction(() => window.subscribed === true, null, { timeout: WAIT });

  const rows = Array.from({ length: 30 }, (_, i) => ({ symbol: `SYM${i}`, bid: 100 + i / 4, ask: 101 + i / 4, venue: 'XNAS' }));
  await sdk.trigger('prices', 'quote', { rows });
  await page.waitForFunction(() => window.received.length === 1, null, { timeout: WAIT });
  assert.deepEqual(await page.evaluate(() => window.received[0]), { rows }, 'the page got the event intact');

  const connections = fromServer.map((chunks) => serverFrames(Buffer.concat(chunks)));
  const socket = connections.find(({ head }) => /^sec-websocket-extensions: permessage-deflate/im.test(head));
  assert.ok(socket, `no proxied handshake agreed permessage-deflate: ${connections.map((c) => c.head).join('\n---\n')}`);
  const quotes = socket.frames.filter(({ rsv1, payload }) => {
    if (!rsv1) return false;
    return JSON.parse(inflateMessage(payload)).event === 'quote';
  });
  assert.equal(quotes.length, 1, 'the event went over the wire compressed (RSV1), once');
  const message = JSON.parse(inflateMessage(quotes[0].payload));
  assert.deepEqual(JSON.parse(message.data), { rows }, 'and inflates with zlib to the published data');
  const plain = Buffer.byteLength(JSON.stringify(message));
  assert.ok(quotes[0].payload.length * 2 < plain, `compressed ${quotes[0].payload.length} bytes of ${plain}`);
  assert.deepEqual(consoleErrors, []);
});
