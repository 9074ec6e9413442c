// 24. SSE (`GET /apps/{id}/events/stream?channels=…`) with a real HTTP client: the same events
//     as the WebSocket as `text/event-stream`, heartbeat comments, API keys and grants checked
//     as at the upgrade, public channels only without a key, and a consumer that stops reading
//     dropped (with a last `plexus:closed` event) while another stream keeps every event.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { useServer, unique, waitUntil, withTimeout, TIMEOUT, APP1, APP2 } from './helpers.js';

const KEY = 'sk_stream_0123456789';

const CONFIG = `
[server]
host = "127.0.0.1"
port = 0
sse_heartbeat_secs = 1
max_queued_bytes = 262144

[[apps]]
id = "${APP1.id}"
key = "${APP1.key}"
secret = "${APP1.secret}"
max_event_payload_kb = 100

[[apps]]
id = "${APP2.id}"
key = "${APP2.key}"
secret = "${APP2.secret}"

[[apps.api_keys]]
key = "${KEY}"
scopes = ["events:read"]
channels = ["instance-inst_1*"]
`;

/**
 * Opens an SSE stream; resolves `{ status, type, events, text, waitFor, close, res }` once the
 * response head arrives. `events` are parsed `{ event, data }` (data JSON-parsed).
 */
function openStream(server, appId, query, headers = {}) {
  return withTimeout(new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: server.port, path: `/apps/${appId}/events/stream?${query}`, headers }, (res) => {
      const stream = { status: res.statusCode, type: res.headers['content-type'], events: [], text: '', comments: 0, ended: false, res };
      const waiters = new Set();
      let buffer = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        stream.text += chunk;
        buffer += chunk;
        let cut;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          if (block.startsWith(':')) {
            stream.comments += 1;
            continue;
          }
          const fields = Object.fromEntries(block.split('\n').map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)]));
          const ev = { event: fields.event, data: JSON.parse(fields.data) };
          stream.events.push(ev);
        }
        for (const w of waiters) if (w.pred(stream)) { waiters.delete(w); w.resolve(); }
      });
      res.on('end', () => {
        stream.ended = true;
        for (const w of waiters) if (w.pred(stream)) { waiters.delete(w); w.resolve(); }
      });
      stream.waitFor = (pred, what, timeout = TIMEOUT) => {
        if (pred(stream)) return Promise.resolve();
        return withTimeout(new Promise((r) => waiters.add({ pred, resolve: r })), timeout, what);
      };
      stream.close = () => req.destroy();
      resolve(stream);
    });
    req.on('error', reject);
  }), TIMEOUT, 'the SSE response head');
}

const body = (stream) => (stream.text ? JSON.parse(stream.text) : null);

describe('SSE', () => {
  const ctx = useServer({ before, after }, { config: CONFIG });
  const streams = [];
  after(() => {
    for (const s of streams) s.close();
  });
  async function open(...args) {
    const s = await openStream(ctx.server, ...args);
    streams.push(s);
    return s;
  }

  it('streams published events with their names, and heartbeat comments', async () => {
    const ch = unique('public-sse-');
    const s = await open(APP1.id, `channels=${ch}`);
    assert.equal(s.status, 200);
    assert.equal(s.type, 'text/event-stream');
    await s.waitFor((st) => st.events.some((e) => e.event === 'pusher_internal:subscription_succeeded'), 'subscribed');
    await ctx.sdk.trigger(ch, 'greeting', { hello: 'sse' });
    await s.waitFor((st) => st.events.some((e) => e.event === 'greeting'), 'the greeting event');
    const ev = s.events.find((e) => e.event === 'greeting');
    assert.equal(ev.data.channel, ch);
    assert.deepEqual(JSON.parse(ev.data.data), { hello: 'sse' });
    await s.waitFor((st) => st.comments > 0, 'a heartbeat comment', 3000);
  });

  it('without an API key only public channels; bad requests are JSON errors', async () => {
    const priv = await open(APP1.id, 'channels=private-x');
    await priv.waitFor((st) => st.ended, 'the refusal body');
    assert.equal(priv.status, 403);
    assert.match(body(priv).error, /public channels only/);
    const none = await open(APP1.id, 'channels=');
    await none.waitFor((st) => st.ended, 'the refusal body');
    assert.equal(none.status, 400);
    const unknown = await open('no-such-app', 'channels=a');
    await unknown.waitFor((st) => st.ended, 'the refusal body');
    assert.equal(unknown.status, 404);
  });

  it('API keys and grants are checked as at the WebSocket upgrade', async () => {
    const missing = await open(APP2.id, 'channels=instance-inst_1');
    await missing.waitFor((st) => st.ended, 'the refusal body');
    assert.equal(missing.status, 401);
    const outside = await open(APP2.id, `channels=instance-inst_2&api_key=${KEY}`);
    await outside.waitFor((st) => st.ended, 'the refusal body');
    assert.equal(outside.status, 403);
    assert.match(body(outside).error, /no access to channel "instance-inst_2"/);
    const ok = await open(APP2.id, 'channels=instance-inst_1', { Authorization: `Bearer ${KEY}` });
    assert.equal(ok.status, 200);
    await ok.waitFor((st) => st.events.some((e) => e.event === 'pusher_internal:subscription_succeeded'), 'subscribed');
  });

  it('a consumer that stops reading is dropped; another stream keeps every event', async () => {
    const ch = unique('public-flood-');
    const slow = await open(APP1.id, `channels=${ch}`);
    const fast = await open(APP1.id, `channels=${ch}`);
    for (const s of [slow, fast]) {
      await s.waitFor((st) => st.events.some((e) => e.event === 'pusher_internal:subscription_succeeded'), 'subscribed');
    }
    slow.res.pause();
    // 12 MB in all, far beyond what the kernel buffers for the paused reader plus its 256 KiB
    // queue; the fast reader is awaited after every event, so its own queue never fills.
    const big = 'x'.repeat(30 * 1024);
    const total = 400;
    for (let i = 0; i < total; i += 1) {
      await ctx.sdk.trigger(ch, 'bulk', { i, big });
      await fast.waitFor((st) => st.events.filter((e) => e.event === 'bulk').length >= i + 1, `fast stream at ${i}`, 10_000);
    }
    await fast.waitFor((st) => st.events.filter((e) => e.event === 'bulk').length === total, 'every event on the fast stream', 10_000);
    slow.res.resume();
    await slow.waitFor((st) => st.ended, 'the slow stream to end', 10_000);
    const closed = slow.events.find((e) => e.event === 'plexus:closed');
    assert.ok(closed, 'the slow stream ended without saying why');
    assert.equal(closed.data.code, 4100);
    assert.ok(slow.events.filter((e) => e.event === 'bulk').length < total, 'the slow stream was not dropped');
    await waitUntil(async () => !ctx.server.crashed(), 'the server to stay up');
  });
});
