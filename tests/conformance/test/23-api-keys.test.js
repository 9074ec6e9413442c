// 23. API keys for event-stream consumers ([[apps.api_keys]]): checked at the upgrade, over
//     HTTP (401 missing or invalid, 403 without a read scope, 429 over the key's connection
//     limit, each with a JSON reason), passed as ?api_key= or Authorization: Bearer; then every
//     subscription must fall within the key's channel grants and carry the scope its channel
//     prefix needs, or it is refused with a message naming what is missing.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { useServer, RawSocket, withTimeout, TIMEOUT, APP1 } from './helpers.js';

const READER = 'sk_reader_0123456789';
const WRITER = 'sk_writer_0123456789';

const CONFIG = `
[server]
host = "127.0.0.1"
port = 0

[[apps]]
id = "${APP1.id}"
key = "${APP1.key}"
secret = "${APP1.secret}"

[[apps.api_keys]]
key = "${READER}"
scopes = ["events:read"]
channels = ["instance-inst_1*", "chats-inst_1-*"]
max_connections = 2

[[apps.api_keys]]
key = "${WRITER}"
scopes = ["events:write"]

[[apps.channel_scopes]]
prefix = "instance-"
scope = "events:read"

[[apps.channel_scopes]]
prefix = "chats-"
scope = "chats:read"
`;

const QUERY = 'protocol=7&client=js&version=8.6.0&flash=false';

/** Opens a WebSocket; resolves `{ socket }` on open or `{ status, body }` on an HTTP refusal. */
function attempt(server, { query = QUERY, headers = {} } = {}) {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/app/${APP1.key}?${query}`, { headers });
  return withTimeout(new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ socket: new RawSocket(ws) }));
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(body), type: res.headers['content-type'] }));
    });
    ws.once('error', reject);
  }), TIMEOUT, 'the upgrade to be answered');
}

describe('API keys', () => {
  const ctx = useServer({ before, after }, { config: CONFIG });
  const open = [];
  after(() => {
    for (const s of open) s.close();
  });

  async function refusedWith(status, options, fragment) {
    const result = await attempt(ctx.server, options);
    assert.equal(result.socket, undefined, `expected HTTP ${status}, but the upgrade succeeded`);
    assert.equal(result.status, status);
    assert.equal(result.type, 'application/json');
    assert.match(result.body.error, fragment);
  }

  it('401 without a key and with an unknown key', async () => {
    await refusedWith(401, {}, /API key is required/);
    await refusedWith(401, { query: `${QUERY}&api_key=sk_nope` }, /invalid API key/);
    await refusedWith(401, { headers: { Authorization: 'Bearer sk_nope' } }, /invalid API key/);
  });

  it('403 for a key without a read scope', async () => {
    await refusedWith(403, { query: `${QUERY}&api_key=${WRITER}` }, /read scope/);
  });

  it('a valid key (query or bearer) connects; the third connection over its limit of 2 gets 429', async () => {
    const first = await attempt(ctx.server, { query: `${QUERY}&api_key=${READER}` });
    const second = await attempt(ctx.server, { headers: { Authorization: `Bearer ${READER}` } });
    assert.ok(first.socket && second.socket, 'a valid key was refused');
    open.push(first.socket, second.socket);
    await first.socket.established();
    await second.socket.established();
    await refusedWith(429, { query: `${QUERY}&api_key=${READER}` }, /limit of 2/);

    // Closing one frees its place.
    first.socket.close();
    await first.socket.closed;
    let third;
    for (let i = 0; i < 50 && !third?.socket; i += 1) {
      third = await attempt(ctx.server, { query: `${QUERY}&api_key=${READER}` });
      if (!third.socket) await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(third.socket, `the freed place was not given back: ${JSON.stringify(third)}`);
    open.push(third.socket);
  });

  it('subscriptions outside the key\'s grants or scopes are refused, naming what is missing', async () => {
    for (const s of open.splice(0)) s.close();
    let conn;
    for (let i = 0; i < 50 && !conn?.socket; i += 1) {
      conn = await attempt(ctx.server, { query: `${QUERY}&api_key=${READER}` });
      if (!conn.socket) await new Promise((r) => setTimeout(r, 20));
    }
    const s = conn.socket;
    open.push(s);
    await s.established();

    s.send({ event: 'pusher:subscribe', data: { channel: 'instance-inst_1' } });
    await s.waitEvent('pusher_internal:subscription_succeeded', 'instance-inst_1');

    s.send({ event: 'pusher:subscribe', data: { channel: 'instance-inst_2' } });
    const other = await s.waitEvent('pusher:subscription_error', 'instance-inst_2');
    const otherData = typeof other.msg.data === 'string' ? JSON.parse(other.msg.data) : other.msg.data;
    assert.equal(otherData.status, 403);
    assert.match(otherData.error, /no access to channel "instance-inst_2"/);

    s.send({ event: 'pusher:subscribe', data: { channel: 'chats-inst_1-general' } });
    const chats = await s.waitEvent('pusher:subscription_error', 'chats-inst_1-general');
    const chatsData = typeof chats.msg.data === 'string' ? JSON.parse(chats.msg.data) : chats.msg.data;
    assert.match(chatsData.error, /lacks scope "chats:read"/);
    assert.ok(s.isOpen, 'a refused subscription closed the socket');
  });
});
