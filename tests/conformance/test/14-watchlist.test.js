// 14. Watchlist: pusher-js `pusher.user.watchlist` gets the current online/offline status right
//     after sign-in, then `online` when a watched user's first connection signs in and `offline`
//     when their last one leaves (digest §9.5).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, signedInClient, subscribe, record, unique, apiGet, waitUntil } from './helpers.js';

/** The watchlist events a recorder holds, in arrival order, as [name, sorted user_ids]. */
const log = (rec) => rec.events.map((e) => [e.name, [...(e.data?.user_ids ?? [])].sort()]);

/** Events called `name` whose user_ids include `id`. */
const about = (rec, name, id) => rec.events.filter((e) => e.name === name && e.data?.user_ids?.includes(id));

describe('watchlist', () => {
  const ctx = useServer({ before, after });

  /** Signs in as `id`, watching `watchlist`; `w` records the watchlist, `u` the user events. */
  async function watcher(id, watchlist) {
    let w;
    const client = await signedInClient(ctx.pool, ctx.sdk, { id, watchlist }, {
      beforeSignin: (c) => {
        w = record(c.user.watchlist);
      },
    });
    return { client, w, u: record(client.user) };
  }

  /** Sends a user event to `id` and waits until `rec` (that user's recorder) has it. */
  async function marker(id, rec, name) {
    await ctx.sdk.sendToUser(id, name, {});
    await rec.waitFor(name);
  }

  const subCount = async (ch) =>
    (await apiGet(ctx.sdk, `/channels/${ch}`, { info: 'subscription_count' })).subscription_count ?? 0;

  it('reports the current status after sign-in, then online on the first tab and offline after the last', async () => {
    const onlineId = unique('friend-on-');
    const laterId = unique('friend-later-');
    const meId = unique('me-');
    const ch = unique('probe-');

    const friendOn = await signedInClient(ctx.pool, ctx.sdk, { id: onlineId });

    const me = await watcher(meId, [onlineId, laterId]);
    const online = await me.w.waitFor('online');
    const offline = await me.w.waitFor('offline');
    assert.deepEqual(online.data.user_ids, [onlineId], `initial online: ${JSON.stringify(online.data)}`);
    assert.deepEqual(offline.data.user_ids, [laterId], `initial offline: ${JSON.stringify(offline.data)}`);
    await marker(meId, me.u, 'marker-0');
    assert.deepEqual(log(me.w), [['online', [onlineId]], ['offline', [laterId]]],
      'initial status other than one online and one offline entry');

    // The watched user's first tab signs in: online.
    const tab1 = await signedInClient(ctx.pool, ctx.sdk, { id: laterId });
    await subscribe(tab1, ch);
    const cameOnline = await me.w.waitFor('online', { filter: (d) => d.user_ids.includes(laterId) });
    assert.deepEqual(cameOnline.data.user_ids, [laterId]);

    // A second tab of the same user: no second online.
    const tab2 = await signedInClient(ctx.pool, ctx.sdk, { id: laterId });
    await subscribe(tab2, ch);
    await marker(meId, me.u, 'marker-1');
    assert.equal(about(me.w, 'online', laterId).length, 1,
      `a second tab sent another online event: ${JSON.stringify(log(me.w))}`);

    // First tab leaves: still online through the second one.
    tab1.disconnect();
    await waitUntil(async () => (await subCount(ch)) === 1, 'the server has dropped the first tab');
    await marker(meId, me.u, 'marker-2');
    assert.equal(about(me.w, 'offline', laterId).length, 1,
      `offline sent while the user still had a signed-in tab: ${JSON.stringify(log(me.w))}`);

    // Last tab leaves: offline.
    tab2.disconnect();
    await waitUntil(() => about(me.w, 'offline', laterId).length >= 2,
      `offline for ${laterId} after its last tab left (watchlist so far: ${JSON.stringify(log(me.w))})`);

    friendOn.disconnect();
    await me.w.waitFor('offline', { filter: (d) => d.user_ids.includes(onlineId) });

    await marker(meId, me.u, 'marker-3');
    assert.deepEqual(log(me.w), [
      ['online', [onlineId]],
      ['offline', [laterId]],
      ['online', [laterId]],
      ['offline', [laterId]],
      ['offline', [onlineId]],
    ], 'watchlist event sequence');
  });

  it('notifies every signed-in tab of the watcher, and nobody who does not watch', async () => {
    const watchedId = unique('watched-');
    const meId = unique('me-');
    const bystanderId = unique('bystander-');
    const meTab1 = await watcher(meId, [watchedId]);
    const meTab2 = await watcher(meId, [watchedId]);
    const bystander = await watcher(bystanderId, [unique('nobody-')]);
    for (const tab of [meTab1, meTab2]) {
      const initial = await tab.w.waitFor('offline');
      assert.deepEqual(initial.data.user_ids, [watchedId]);
    }

    const watched = await signedInClient(ctx.pool, ctx.sdk, { id: watchedId });
    for (const [i, tab] of [meTab1, meTab2].entries()) {
      const got = await tab.w.waitFor('online');
      assert.deepEqual(got.data.user_ids, [watchedId], `tab ${i + 1}`);
    }
    await marker(bystanderId, bystander.u, 'marker');
    assert.deepEqual(log(bystander.w).filter(([, ids]) => ids.includes(watchedId)), [],
      'a user not watching got the status change');

    watched.disconnect();
    for (const [i, tab] of [meTab1, meTab2].entries()) {
      await waitUntil(() => about(tab.w, 'offline', watchedId).length >= 2, `tab ${i + 1}: offline after the watched user left`);
      assert.deepEqual(log(tab.w), [['offline', [watchedId]], ['online', [watchedId]], ['offline', [watchedId]]],
        `tab ${i + 1} watchlist sequence`);
    }
  });
});
