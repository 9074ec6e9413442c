// 12. Exact wire format (digest §1.1, §2, §4, §5, §8): pusher-js tolerates string-or-object
//     `data`, other official clients do not, so these checks use a raw WebSocket.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, rawPool, unique, APP1, APP2, sdkFor, waitUntil, apiGet } from './helpers.js';

const isPing = (m) => m && m.event === 'pusher:pong';

describe('wire format (raw WebSocket)', () => {
  const ctx = useServer({ before, after });
  const raw = rawPool(() => ctx.server);
  after(() => raw.closeAll());

  /** Opens a socket and returns it with its socket_id. */
  async function connect(key = APP1.key) {
    const s = await raw.open(key);
    const est = await s.established();
    return { s, socketId: est.socket_id };
  }

  async function subscribe(s, channel, auth = '', channelData) {
    const data = { channel, auth };
    if (channelData !== undefined) data.channel_data = channelData;
    s.send({ event: 'pusher:subscribe', data });
    return s.waitFor((m) => m && m.channel === channel &&
      ['pusher_internal:subscription_succeeded', 'pusher:subscription_error'].includes(m.event), `subscription reply on ${channel}`);
  }

  /** Proves the socket is alive and has processed everything sent so far. */
  async function pingPong(s) {
    const n = s.frames.filter((f) => isPing(f.msg)).length;
    s.send({ event: 'pusher:ping', data: {} });
    await waitUntil(() => s.frames.filter((f) => isPing(f.msg)).length > n, 'pusher:pong');
  }

  it('first frame is pusher:connection_established with string data', async () => {
    const s = await raw.open();
    await s.established();
    const first = s.frames[0].msg;
    assert.equal(first.event, 'pusher:connection_established');
    assert.equal(typeof first.data, 'string', `data must be a JSON string, got ${s.frames[0].text}`);
    const data = JSON.parse(first.data);
    assert.match(data.socket_id, /^\d+\.\d+$/);
    assert.ok(Number.isInteger(data.activity_timeout) && data.activity_timeout > 0);
    assert.equal(data.activity_timeout, 120, 'digest §3 recommends advertising 120');
  });

  it('answers pusher:ping with pusher:pong', async () => {
    const { s } = await connect();
    s.send({ event: 'pusher:ping', data: {} });
    const f = await s.waitEvent('pusher:pong');
    assert.equal(f.msg.event, 'pusher:pong');
  });

  it('public subscription_succeeded carries data "{}" as a string', async () => {
    const { s } = await connect();
    const ch = unique('public-');
    const f = await subscribe(s, ch);
    assert.equal(f.msg.event, 'pusher_internal:subscription_succeeded');
    assert.equal(f.msg.channel, ch);
    assert.equal(typeof f.msg.data, 'string', `got ${f.text}`);
    assert.deepEqual(JSON.parse(f.msg.data), {});
  });

  it('accepts pusher:subscribe whose data is a JSON string (SHOULD, digest §1.1)', async () => {
    const { s } = await connect();
    const ch = unique('public-');
    s.send({ event: 'pusher:subscribe', data: JSON.stringify({ channel: ch }) });
    await s.waitEvent('pusher_internal:subscription_succeeded', ch);
  });

  it('passes API event data through verbatim as a string', async () => {
    const { s } = await connect();
    const ch = unique('public-');
    await subscribe(s, ch);
    const exact = '{"spaced": 1,  "kept":"as sent"}';
    await ctx.sdk.trigger(ch, 'verbatim', exact);
    const f = await s.waitEvent('verbatim', ch);
    assert.equal(f.msg.data, exact);
    assert.deepEqual(Object.keys(f.msg).sort(), ['channel', 'data', 'event']);
  });

  it('presence frames: string data, ids/hash/count, member_added/removed with string user ids', async () => {
    const ch = unique('presence-');
    const { s: a, socketId: aId } = await connect();
    const aData = JSON.stringify({ user_id: 'ann', user_info: { name: 'Ann' } });
    const okA = await subscribe(a, ch, ctx.sdk.authorizeChannel(aId, ch, JSON.parse(aData)).auth, aData);
    assert.equal(okA.msg.event, 'pusher_internal:subscription_succeeded');
    assert.equal(typeof okA.msg.data, 'string', `got ${okA.text}`);
    assert.deepEqual(JSON.parse(okA.msg.data), { presence: { ids: ['ann'], hash: { ann: { name: 'Ann' } }, count: 1 } });

    const { s: b, socketId: bId } = await connect();
    const bObj = { user_id: 7, user_info: { name: 'Seven' } };
    const auth = ctx.sdk.authorizeChannel(bId, ch, bObj);
    const okB = await subscribe(b, ch, auth.auth, auth.channel_data);
    const presence = JSON.parse(okB.msg.data).presence;
    assert.deepEqual([...presence.ids].sort(), ['7', 'ann']);
    assert.equal(presence.count, 2);
    assert.deepEqual(presence.hash, { ann: { name: 'Ann' }, 7: { name: 'Seven' } });

    const added = await a.waitEvent('pusher_internal:member_added', ch);
    assert.equal(typeof added.msg.data, 'string', `got ${added.text}`);
    assert.deepEqual(JSON.parse(added.msg.data), { user_id: '7', user_info: { name: 'Seven' } });

    b.send({ event: 'pusher:unsubscribe', data: { channel: ch } });
    const removed = await a.waitEvent('pusher_internal:member_removed', ch);
    assert.equal(typeof removed.msg.data, 'string', `got ${removed.text}`);
    assert.deepEqual(JSON.parse(removed.msg.data), { user_id: '7' });
  });

  it('a repeated subscribe is idempotent: success again, no duplicate member', async () => {
    const ch = unique('presence-');
    const { s: a, socketId: aId } = await connect();
    const aAuth = ctx.sdk.authorizeChannel(aId, ch, { user_id: 'ann' });
    await subscribe(a, ch, aAuth.auth, aAuth.channel_data);
    const { s: b, socketId: bId } = await connect();
    const bAuth = ctx.sdk.authorizeChannel(bId, ch, { user_id: 'bob' });
    await subscribe(b, ch, bAuth.auth, bAuth.channel_data);
    await a.waitEvent('pusher_internal:member_added', ch);

    b.send({ event: 'pusher:subscribe', data: { channel: ch, auth: bAuth.auth, channel_data: bAuth.channel_data } });
    await waitUntil(() => b.frames.filter((f) => f.msg?.event === 'pusher_internal:subscription_succeeded').length === 2,
      'a second subscription_succeeded');
    const info = await apiGet(ctx.sdk, `/channels/${ch}`, { info: 'user_count,subscription_count' });
    assert.equal(info.user_count, 2);
    assert.equal(info.subscription_count, 2, 'a repeated subscribe created a second membership');
    await ctx.sdk.trigger(ch, 'marker', {});
    await a.waitEvent('marker', ch);
    assert.equal(a.frames.filter((f) => f.msg?.event === 'pusher_internal:member_added').length, 1);
  });

  it('relays client events verbatim, with a top-level string user_id on presence', async () => {
    const ch = unique('presence-');
    const { s: a, socketId: aId } = await connect();
    const { s: b, socketId: bId } = await connect();
    const aAuth = ctx.sdk.authorizeChannel(aId, ch, { user_id: 'ann' });
    const bAuth = ctx.sdk.authorizeChannel(bId, ch, { user_id: 'bob' });
    await subscribe(a, ch, aAuth.auth, aAuth.channel_data);
    await subscribe(b, ch, bAuth.auth, bAuth.channel_data);

    a.send({ event: 'client-obj', channel: ch, data: { on: true, n: [1, 2] } });
    a.send({ event: 'client-str', channel: ch, data: '{"not":"parsed"}' });
    const obj = await b.waitEvent('client-obj', ch);
    assert.deepEqual(obj.msg.data, { on: true, n: [1, 2] });
    assert.equal(obj.msg.user_id, 'ann');
    const str = await b.waitEvent('client-str', ch);
    assert.equal(str.msg.data, '{"not":"parsed"}', 'string client-event data must not be re-encoded');
  });

  it('bad signature: pusher:subscription_error {type,error,status} on the channel, socket stays open', async () => {
    const { s } = await connect();
    const ch = unique('private-');
    const f = await subscribe(s, ch, `${APP1.key}:${'0'.repeat(64)}`);
    assert.equal(f.msg.event, 'pusher:subscription_error');
    assert.equal(f.msg.channel, ch);
    assert.equal(typeof f.msg.data, 'object', `got ${f.text}`);
    assert.equal(typeof f.msg.data.type, 'string');
    assert.equal(typeof f.msg.data.error, 'string');
    assert.equal(typeof f.msg.data.status, 'number');
    await pingPong(s);
    assert.ok(s.isOpen);
  });

  it('pusher:error frames carry an object {code, message}; client events refused on app-2 name the channel', async () => {
    const sdk2 = sdkFor(ctx.server, APP2);
    const { s, socketId } = await connect(APP2.key);
    const ch = unique('private-');
    await subscribe(s, ch, sdk2.authorizeChannel(socketId, ch).auth);
    s.send({ event: 'client-nope', channel: ch, data: {} });
    const f = await s.waitEvent('pusher:error');
    assert.equal(typeof f.msg.data, 'object', `got ${f.text}`);
    assert.ok('code' in f.msg.data, `pusher:error without code: ${f.text}`);
    assert.ok(f.msg.data.code === null || Number.isInteger(f.msg.data.code));
    assert.equal(typeof f.msg.data.message, 'string');
    assert.equal(f.msg.channel, ch, `digest §8: client-event errors include the channel (got ${f.text})`);
    await pingPong(s);
  });

  it('rate-limit error is pusher:error code 4301, without closing', async () => {
    const ch = unique('private-');
    const { s, socketId } = await connect();
    await subscribe(s, ch, ctx.sdk.authorizeChannel(socketId, ch).auth);
    for (let i = 0; i < 11; i++) s.send({ event: 'client-burst', channel: ch, data: { i } });
    const f = await s.waitFor((m) => m && m.event === 'pusher:error', 'pusher:error');
    assert.equal(f.msg.data.code, 4301, `got ${f.text}`);
    await pingPong(s);
    assert.ok(s.isOpen);
  });

  it('ignores unparseable JSON and unknown events without closing', async () => {
    const { s } = await connect();
    s.send('this is { not json');
    s.send({ event: 'pusher:no-such-event', data: {} });
    s.send({ event: 'something-else' });
    await pingPong(s);
    assert.ok(s.isOpen);
  });

  it('unknown key: pusher:error {code:4001} then close code 4001', async () => {
    const s = await raw.open('nope');
    const { code } = await s.closed;
    const first = s.frames[0]?.msg;
    assert.equal(first?.event, 'pusher:error', `frames: ${s.frames.map((x) => x.text)}`);
    assert.equal(first.data.code, 4001);
    assert.equal(typeof first.data.message, 'string');
    assert.equal(code, 4001);
  });

  it('unsupported protocol version (protocol=3) is closed with 4007', async () => {
    const s = await raw.open(APP1.key, 'protocol=3&client=js&version=1.0.0');
    const { code } = await s.closed;
    assert.equal(code, 4007, `frames: ${s.frames.map((x) => x.text)}`);
  });

  it('a missing protocol parameter is accepted (lenient default)', async () => {
    const s = await raw.open(APP1.key, '');
    const est = await s.established();
    assert.match(est.socket_id, /^\d+\.\d+$/);
  });

  it('a path other than /app/{key} is refused (close 4005 or HTTP 404)', async () => {
    let s;
    try {
      s = await raw.open(APP1.key, 'protocol=7', '/wrong/key-1');
    } catch (e) {
      assert.equal(e.status, 404);
      return;
    }
    const { code } = await s.closed;
    assert.equal(code, 4005);
  });
});
