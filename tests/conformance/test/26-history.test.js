// 26. History and resume ([[apps.history]]): events on history channels carry a `position`; a
//     client that subscribes again with the last position it saw gets what it missed, in
//     order, then `plexus:resume` with `recovered: true` — or `recovered: false` (and nothing
//     replayed) when the history no longer covers the gap, the position is from another epoch,
//     or the channel keeps no history. Never a silent hole. SSE carries the position as `id:`
//     and resumes from `Last-Event-ID`.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { useServer, rawPool, subscribe, record, unique, withTimeout, TIMEOUT, APP1 } from './helpers.js';

const CONFIG = `
[server]
host = "127.0.0.1"
port = 0

[[apps]]
id = "${APP1.id}"
key = "${APP1.key}"
secret = "${APP1.secret}"

[[apps.history]]
prefix = "feed-"
size = 5
ttl_secs = 600
`;

describe('history and resume', () => {
  const ctx = useServer({ before, after }, { config: CONFIG });
  const raws = rawPool(() => ctx.server);
  after(() => raws.closeAll());

  const publish = async (ch, from, to) => {
    for (let i = from; i < to; i += 1) await ctx.sdk.trigger(ch, 'item', { i });
  };
  /** Items received on `ch` by a raw socket, as [i, position]. */
  const items = (s, ch) => s.frames.map((f) => f.msg).filter((m) => m?.event === 'item' && m.channel === ch)
    .map((m) => [JSON.parse(m.data).i, m.position]);

  async function subscribed(ch, position) {
    const s = await raws.open();
    await s.established();
    s.send({ event: 'pusher:subscribe', data: position ? { channel: ch, position } : { channel: ch } });
    await s.waitEvent('pusher_internal:subscription_succeeded', ch);
    return s;
  }

  it('resumes from the last position seen with exactly the missed events', async () => {
    const ch = unique('feed-');
    const first = await subscribed(ch);
    await publish(ch, 0, 3);
    await first.waitFor((m) => m?.event === 'item' && JSON.parse(m.data).i === 2, 'item 2');
    const seen = items(first, ch);
    assert.deepEqual(seen.map(([i]) => i), [0, 1, 2]);
    assert.ok(seen.every(([, p]) => /^\d+:\d+$/.test(p)), `positions: ${JSON.stringify(seen)}`);
    first.close();
    await publish(ch, 3, 5);

    const again = await subscribed(ch, seen[2][1]);
    const resumed = await again.waitEvent('plexus:resume', ch);
    assert.deepEqual(items(again, ch).map(([i]) => i), [3, 4], 'the missed events, in order, before plexus:resume');
    const data = JSON.parse(resumed.msg.data);
    assert.equal(data.recovered, true);
    assert.equal(data.position, items(again, ch)[1][1]);
    await publish(ch, 5, 6);
    await again.waitFor((m) => m?.event === 'item' && JSON.parse(m.data).i === 5, 'live events after the resume');
  });

  it('says recovered: false when the gap is too old, the epoch unknown, or there is no history', async () => {
    const ch = unique('feed-');
    const first = await subscribed(ch);
    await publish(ch, 0, 1);
    await first.waitFor((m) => m?.event === 'item', 'item 0');
    const [[, position]] = items(first, ch);
    first.close();
    await publish(ch, 1, 10); // 9 more; the history keeps 5

    const late = await subscribed(ch, position);
    const resumed = JSON.parse((await late.waitEvent('plexus:resume', ch)).msg.data);
    assert.equal(resumed.recovered, false);
    assert.deepEqual(items(late, ch), [], 'a partial replay would hide the hole');

    const foreign = await subscribed(ch, '1:1');
    assert.equal(JSON.parse((await foreign.waitEvent('plexus:resume', ch)).msg.data).recovered, false);

    const plain = unique('plain-');
    const none = await subscribed(plain, '1:1');
    const noHistory = JSON.parse((await none.waitEvent('plexus:resume', plain)).msg.data);
    assert.deepEqual(noHistory, { recovered: false, position: null });
  });

  it('pusher-js on a history channel gets the events as usual', async () => {
    const ch = unique('feed-');
    const client = await ctx.pool.connect();
    const { channel } = await subscribe(client, ch);
    const rec = record(channel);
    await publish(ch, 0, 2);
    await rec.waitFor('item', { filter: (d) => d.i === 1 });
    assert.deepEqual(rec.events.filter((e) => e.name === 'item').map((e) => e.data), [{ i: 0 }, { i: 1 }]);
  });

  it('SSE sends the position as id: and resumes from Last-Event-ID', async () => {
    const ch = unique('feed-');
    const read = (headers) => withTimeout(new Promise((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port: ctx.server.port, path: `/apps/${APP1.id}/events/stream?channels=${ch}`, headers }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        const blocks = [];
        const api = { blocks, until: null, close: () => req.destroy() };
        res.on('data', (c) => {
          text += c;
          let cut;
          while ((cut = text.indexOf('\n\n')) >= 0) {
            blocks.push(text.slice(0, cut));
            text = text.slice(cut + 2);
          }
          if (api.until && api.until(blocks)) api.done();
        });
        resolve(api);
      });
      req.on('error', reject);
    }), TIMEOUT, 'the SSE response');
    const waitBlocks = (api, pred, what) => withTimeout(new Promise((resolve) => {
      if (pred(api.blocks)) return resolve();
      api.until = pred;
      api.done = resolve;
    }), TIMEOUT, what);

    const first = await read({});
    await waitBlocks(first, (b) => b.some((x) => x.includes('subscription_succeeded')), 'subscribed');
    await publish(ch, 0, 2);
    await waitBlocks(first, (b) => b.filter((x) => x.includes('event: item')).length === 2, 'two items');
    const ids = first.blocks.filter((x) => x.includes('event: item')).map((x) => /^id: (.+)$/m.exec(x)?.[1]);
    assert.ok(ids.every(Boolean), `every event has an id: ${JSON.stringify(first.blocks)}`);
    first.close();
    await publish(ch, 2, 4);

    const again = await read({ 'Last-Event-ID': ids[1] });
    await waitBlocks(again, (b) => b.some((x) => x.includes('plexus:resume')), 'plexus:resume');
    const replayed = again.blocks.filter((x) => x.includes('event: item')).map((x) => JSON.parse(JSON.parse(/^data: (.+)$/m.exec(x)[1]).data).i);
    assert.deepEqual(replayed, [2, 3]);
    assert.match(again.blocks.find((x) => x.includes('plexus:resume')), /\\"recovered\\":true/);
    again.close();
  });
});
