// 17. Webhooks: a real HTTP receiver checks every request with the SDK (`sdk.webhook(...)
//     .isValid()`, which also demands `Content-Type: application/json` exactly) and the events:
//     channel_occupied / channel_vacated, member_added / member_removed once per user,
//     client_event (string data, user_id on presence), cache_miss, subscription_count; per-URL
//     event filters; retries after failed deliveries (digest §11, §5.6, §12.1).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServer, startWebhookReceiver, sdkFor, subscribe, record, unique, sdkAuthorizer, apiGet, waitUntil,
  PusherServer, APP1, APP2,
} from './helpers.js';

const APP3 = Object.freeze({ id: 'app-3', key: 'key-3', secret: 'secret-3' });
const ALL_EVENTS = ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed', 'client_event', 'cache_miss', 'subscription_count'];

/** An SDK instance used only to verify webhooks for `app` (no server needed). */
const verifierFor = (app) => new PusherServer({ appId: app.id, key: app.key, secret: app.secret });

/**
 * app-1: every event kind → receiver `all` (client events and subscription counts on).
 * app-2: occupied/vacated → receiver `flaky`, which answers 500 to its first two requests.
 * app-3: only channel_occupied → receiver `filtered`.
 */
function config(receivers) {
  return `
[server]
host = "127.0.0.1"
port = 0

[webhooks]
data_dir = "@SERVER_DIR@"
batch_window_ms = 50
vacate_delay_ms = 0
retry_for_secs = 600
initial_backoff_ms = 200
max_backoff_secs = 60

[[apps]]
id = "${APP1.id}"
key = "${APP1.key}"
secret = "${APP1.secret}"
enable_client_messages = true
enable_subscription_count = true

[[apps.webhooks]]
url = "${receivers.all.url}"
events = ${JSON.stringify(ALL_EVENTS)}

[[apps]]
id = "${APP2.id}"
key = "${APP2.key}"
secret = "${APP2.secret}"

[[apps.webhooks]]
url = "${receivers.flaky.url}"
events = ["channel_occupied", "channel_vacated"]

[[apps]]
id = "${APP3.id}"
key = "${APP3.key}"
secret = "${APP3.secret}"

[[apps.webhooks]]
url = "${receivers.filtered.url}"
events = ["channel_occupied"]
`;
}

/**
 * Every request a receiver got must be a POST to its path, signed for `app` (SDK `isValid()`),
 * with `Content-Type` exactly `application/json`, `X-Pusher-Key`, and a body
 * `{time_ms: number, events: [..]}` with at least one event.
 */
function checkRequests(receiver, app) {
  assert.ok(receiver.requests.length > 0, 'the receiver got no request at all');
  for (const [i, r] of receiver.requests.entries()) {
    const what = `request #${i + 1} (${r.headers['content-type']}; ${r.body.slice(0, 300)})`;
    assert.equal(r.method, 'POST', `${what}: method`);
    assert.equal(r.url, '/webhook', `${what}: path`);
    assert.equal(r.headers['content-type'], 'application/json', `${what}: Content-Type must be exactly application/json`);
    assert.equal(r.headers['x-pusher-key'], app.key, `${what}: X-Pusher-Key`);
    assert.match(r.headers['x-pusher-signature'] ?? '', /^[0-9a-f]{64}$/, `${what}: X-Pusher-Signature`);
    assert.ok(r.valid, `${what}: the SDK rejects the webhook (signature or body)`);
    const body = JSON.parse(r.body);
    assert.equal(typeof body.time_ms, 'number', `${what}: time_ms`);
    assert.ok(Math.abs(body.time_ms - r.receivedAt) < 60_000, `${what}: time_ms ${body.time_ms} is not a recent epoch ms`);
    assert.ok(Array.isArray(body.events) && body.events.length > 0, `${what}: events`);
    for (const ev of body.events) assert.equal(typeof ev.name, 'string', `${what}: event without a name`);
  }
}

describe('webhooks', () => {
  const receivers = {};
  before(async () => {
    receivers.all = await startWebhookReceiver(verifierFor(APP1));
    receivers.flaky = await startWebhookReceiver(verifierFor(APP2), { failFirst: 2 });
    receivers.filtered = await startWebhookReceiver(verifierFor(APP3));
  });
  const ctx = useServer({ before, after }, () => ({ config: config(receivers) }));
  after(async () => {
    await Promise.all(Object.values(receivers).map((r) => r.close()));
  });

  const all = () => receivers.all;
  const is = (name, channel, extra = () => true) => (ev) => ev.name === name && ev.channel === channel && extra(ev);
  /** Delivered app-1 events on `channel`, as names in arrival order. */
  const namesOn = (channel) => all().events.filter((e) => e.channel === channel).map((e) => e.name);
  const indexOf = (pred) => all().events.findIndex(pred);

  /** The marker: a fresh public channel occupied by a new app-1 connection; waits for its webhook. */
  async function webhookMarker() {
    const ch = unique('marker-');
    const client = await ctx.pool.connect();
    await subscribe(client, ch);
    const ev = await all().waitFor(is('channel_occupied', ch), `channel_occupied for marker ${ch}`);
    return ev;
  }
  const deliveredBefore = (ev, pred) => all().events.slice(0, all().events.indexOf(ev)).filter(pred);

  const infoOf = (ch, info) => apiGet(ctx.sdk, `/channels/${ch}`, { info });

  it('channel_occupied on the first subscriber, channel_vacated after the last leaves', async () => {
    const ch = unique('public-');
    const a = await ctx.pool.connect();
    const b = await ctx.pool.connect();
    await subscribe(a, ch);
    const occupied = await all().waitFor(is('channel_occupied', ch), `channel_occupied ${ch}`);
    assert.deepEqual(occupied, { name: 'channel_occupied', channel: ch });
    await subscribe(b, ch);

    a.unsubscribe(ch);
    await waitUntil(async () => (await infoOf(ch, 'subscription_count')).subscription_count === 1,
      'the server has processed the first unsubscribe');
    const m1 = await webhookMarker();
    assert.deepEqual(deliveredBefore(m1, is('channel_vacated', ch)), [], 'channel_vacated while a subscriber remained');

    b.disconnect();
    const vacated = await all().waitFor(is('channel_vacated', ch), `channel_vacated ${ch}`);
    assert.deepEqual(vacated, { name: 'channel_vacated', channel: ch });
    assert.ok(indexOf(is('channel_occupied', ch)) < indexOf(is('channel_vacated', ch)), 'vacated before occupied');

    const m2 = await webhookMarker();
    const seen = deliveredBefore(m2, (e) => e.channel === ch && (e.name === 'channel_occupied' || e.name === 'channel_vacated'));
    assert.deepEqual(seen.map((e) => e.name), ['channel_occupied', 'channel_vacated'], 'occupied/vacated not exactly once each');
    checkRequests(all(), APP1);
  });

  it('member_added / member_removed once per user (not per tab), in causal order', async () => {
    const ch = unique('presence-');
    const presenceClient = (userId) =>
      ctx.pool.connect(APP1.key, { channelAuthorization: sdkAuthorizer(ctx.sdk, () => ({ user_id: userId, user_info: { n: userId } })) });
    const annTab1 = await presenceClient('ann');
    await subscribe(annTab1, ch);
    const annTab2 = await presenceClient('ann');
    await subscribe(annTab2, ch);
    const bob = await presenceClient('bob');
    await subscribe(bob, ch);

    const addedBob = await all().waitFor(is('member_added', ch, (e) => e.user_id === 'bob'), 'member_added bob');
    assert.deepEqual(addedBob, { name: 'member_added', channel: ch, user_id: 'bob' });
    const m1 = await webhookMarker();
    assert.deepEqual(deliveredBefore(m1, (e) => e.channel === ch).map((e) => [e.name, e.user_id]),
      [['channel_occupied', undefined], ['member_added', 'ann'], ['member_added', 'bob']],
      'presence webhooks after ann (two tabs) and bob joined');

    // One of ann's tabs leaves: ann is still a member.
    annTab1.disconnect();
    await waitUntil(async () => (await infoOf(ch, 'subscription_count')).subscription_count === 2,
      'the server has dropped ann\'s first tab');
    const m2 = await webhookMarker();
    assert.deepEqual(deliveredBefore(m2, is('member_removed', ch)), [], 'member_removed while the user still had a tab');

    annTab2.disconnect();
    const removedAnn = await all().waitFor(is('member_removed', ch, (e) => e.user_id === 'ann'), 'member_removed ann');
    assert.deepEqual(removedAnn, { name: 'member_removed', channel: ch, user_id: 'ann' });
    bob.disconnect();
    await all().waitFor(is('channel_vacated', ch), `channel_vacated ${ch}`);
    const m3 = await webhookMarker();
    assert.deepEqual(deliveredBefore(m3, (e) => e.channel === ch).map((e) => [e.name, e.user_id]), [
      ['channel_occupied', undefined],
      ['member_added', 'ann'],
      ['member_added', 'bob'],
      ['member_removed', 'ann'],
      ['member_removed', 'bob'],
      ['channel_vacated', undefined],
    ], 'presence webhook sequence');
    checkRequests(all(), APP1);
  });

  it('client_event on a private channel: data as a string, the sender socket_id, no user_id', async () => {
    const ch = unique('private-');
    const make = () => ctx.pool.connect(APP1.key, { channelAuthorization: sdkAuthorizer(ctx.sdk) });
    const a = await make();
    const b = await make();
    const { channel: aCh } = await subscribe(a, ch);
    const { channel: bCh } = await subscribe(b, ch);
    const bRec = record(bCh);
    assert.equal(aCh.trigger('client-typing', { on: true, who: 'a' }), true);
    await bRec.waitFor('client-typing');

    const ev = await all().waitFor(is('client_event', ch), `client_event on ${ch}`);
    assert.equal(ev.event, 'client-typing');
    assert.equal(typeof ev.data, 'string', `client_event.data must be a string, got ${JSON.stringify(ev.data)}`);
    assert.deepEqual(JSON.parse(ev.data), { on: true, who: 'a' });
    assert.equal(ev.socket_id, a.connection.socket_id);
    assert.ok(!('user_id' in ev), `user_id on a non-presence client_event: ${JSON.stringify(ev)}`);
    assert.deepEqual(Object.keys(ev).sort(), ['channel', 'data', 'event', 'name', 'socket_id']);
    checkRequests(all(), APP1);
  });

  it('client_event on a presence channel carries the sender user_id (string)', async () => {
    const ch = unique('presence-chat-');
    const make = (id) => ctx.pool.connect(APP1.key, { channelAuthorization: sdkAuthorizer(ctx.sdk, () => ({ user_id: id })) });
    const a = await make(7);
    const b = await make('b');
    const { channel: aCh } = await subscribe(a, ch);
    const { channel: bCh } = await subscribe(b, ch);
    const bRec = record(bCh);
    aCh.trigger('client-wave', 'hello');
    await bRec.waitFor('client-wave');

    const ev = await all().waitFor(is('client_event', ch), `client_event on ${ch}`);
    assert.equal(ev.event, 'client-wave');
    assert.equal(typeof ev.data, 'string');
    assert.equal(ev.data, 'hello', 'string data is passed through as that string');
    assert.equal(ev.socket_id, a.connection.socket_id);
    assert.equal(ev.user_id, '7', `user_id ${JSON.stringify(ev.user_id)}`);
    checkRequests(all(), APP1);
  });

  it('cache_miss once when subscribers find a cache channel empty, none after a publish', async () => {
    const ch = unique('cache-');
    const a = await ctx.pool.connect();
    const b = await ctx.pool.connect();
    await subscribe(a, ch);
    await subscribe(b, ch);
    const miss = await all().waitFor(is('cache_miss', ch), `cache_miss ${ch}`);
    assert.deepEqual(miss, { name: 'cache_miss', channel: ch });

    await ctx.sdk.trigger(ch, 'filled', { x: 1 });
    const c = await ctx.pool.connect();
    const cCh = c.subscribe(ch);
    const cRec = record(cCh);
    await cRec.waitFor('filled');
    const m = await webhookMarker();
    assert.equal(deliveredBefore(m, is('cache_miss', ch)).length, 1,
      'cache_miss webhook not de-duplicated, or sent although the cache was filled');
    checkRequests(all(), APP1);
  });

  it('subscription_count with the number of connections on every change', async () => {
    const ch = unique('counted-');
    const a = await ctx.pool.connect();
    const b = await ctx.pool.connect();
    await subscribe(a, ch);
    await all().waitFor(is('subscription_count', ch, (e) => e.subscription_count === 1), 'count 1');
    await subscribe(b, ch);
    await all().waitFor(is('subscription_count', ch, (e) => e.subscription_count === 2), 'count 2');
    b.unsubscribe(ch);
    const m = await webhookMarker();
    const counts = deliveredBefore(m, is('subscription_count', ch));
    for (const ev of counts) {
      assert.deepEqual(Object.keys(ev).sort(), ['channel', 'name', 'subscription_count']);
      assert.equal(typeof ev.subscription_count, 'number', `subscription_count is not a number: ${JSON.stringify(ev)}`);
    }
    assert.deepEqual(counts.map((e) => e.subscription_count), [1, 2, 1]);
    checkRequests(all(), APP1);
  });

  it('only the configured event kinds reach a webhook (app-3: channel_occupied only)', async () => {
    const sdk3 = sdkFor(ctx.server, APP3);
    const ch = unique('public-');
    const markerCh = unique('marker-');
    const c = await ctx.pool.connect(APP3.key);
    await subscribe(c, ch);
    await receivers.filtered.waitFor(is('channel_occupied', ch), `channel_occupied ${ch}`);
    c.unsubscribe(ch);
    await waitUntil(async () => (await apiGet(sdk3, `/channels/${ch}`)).occupied === false, 'the channel is vacated');
    await subscribe(c, markerCh);
    await receivers.filtered.waitFor(is('channel_occupied', markerCh), `channel_occupied ${markerCh}`);
    assert.deepEqual(receivers.filtered.events.map((e) => e.name), ['channel_occupied', 'channel_occupied'],
      'an event kind that is not configured was sent');
    checkRequests(receivers.filtered, APP3);
    // app-3's events went to app-3's receiver only.
    assert.deepEqual(all().events.filter((e) => e.channel === ch || e.channel === markerCh), []);
  });

  it('retries after failed deliveries (500 twice) and then delivers', async () => {
    const ch = unique('public-');
    const c = await ctx.pool.connect(APP2.key);
    await subscribe(c, ch);
    const ev = await receivers.flaky.waitFor(is('channel_occupied', ch), `channel_occupied ${ch} after retries`, 10_000);
    assert.deepEqual(ev, { name: 'channel_occupied', channel: ch });
    const reqs = receivers.flaky.requests;
    assert.ok(reqs.length >= 3, `only ${reqs.length} requests`);
    assert.deepEqual(reqs.slice(0, 2).map((r) => r.status), [500, 500]);
    for (const [i, r] of reqs.slice(0, 3).entries()) {
      assert.ok(r.events.some(is('channel_occupied', ch)), `request #${i + 1} does not carry the event: ${r.body}`);
    }
    assert.ok(reqs[1].receivedAt - reqs[0].receivedAt >= 100,
      `retried after ${reqs[1].receivedAt - reqs[0].receivedAt} ms (initial_backoff_ms = 200)`);
    checkRequests(receivers.flaky, APP2);
  });
});
