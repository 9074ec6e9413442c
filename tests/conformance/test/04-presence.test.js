// 4. Presence channels: member list, member_added / member_removed, multi-tab users, and the
//    HTTP API views of presence channels (/users, /channels?info=user_count, channel info).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServer, subscribe, record, unique, sdkAuthorizer, apiGet, waitUntil, APP1,
} from './helpers.js';

/** Member ids as pusher-js holds them, sorted. */
function memberIds(members) {
  const ids = [];
  members.each((m) => ids.push(m.id));
  return ids.sort();
}

describe('presence channel', () => {
  const ctx = useServer({ before, after });

  /** A connected pusher-js client whose auth handler signs presence data for `user`. */
  function presenceClient(userId, userInfo) {
    const channelData = () => (userInfo === undefined ? { user_id: userId } : { user_id: userId, user_info: userInfo });
    return ctx.pool.connect(APP1.key, { channelAuthorization: sdkAuthorizer(ctx.sdk, channelData) });
  }

  const usersOf = async (ch) => (await apiGet(ctx.sdk, `/channels/${ch}/users`)).users.map((u) => u.id).sort();
  const infoOf = (ch, info) => apiGet(ctx.sdk, `/channels/${ch}`, { info });

  it('lists members on subscription and announces member_added / member_removed', async () => {
    const ch = unique('presence-');
    const ann = await presenceClient('ann', { name: 'Ann' });
    const { channel: annCh, data: annMembers } = await subscribe(ann, ch);
    assert.equal(annMembers.count, 1);
    assert.equal(annMembers.me.id, 'ann');
    assert.deepEqual(annMembers.me.info, { name: 'Ann' });
    assert.deepEqual(memberIds(annMembers), ['ann']);
    const annRec = record(annCh);

    const bob = await presenceClient('bob', { name: 'Bob' });
    const { channel: bobCh, data: bobMembers } = await subscribe(bob, ch);
    const bobRec = record(bobCh);
    assert.equal(bobMembers.count, 2);
    assert.equal(bobMembers.me.id, 'bob');
    assert.deepEqual(memberIds(bobMembers), ['ann', 'bob']);
    assert.deepEqual(bobMembers.get('ann')?.info, { name: 'Ann' });

    const added = await annRec.waitFor('pusher:member_added');
    assert.deepEqual(added.data, { id: 'bob', info: { name: 'Bob' } });
    assert.equal(annCh.members.count, 2);

    // The joiner learns about itself only from subscription_succeeded.
    await ctx.sdk.trigger(ch, 'marker', {});
    await bobRec.waitFor('marker');
    assert.deepEqual(bobRec.before('marker').filter((e) => e.name === 'pusher:member_added'), [],
      'the joining socket received member_added');

    bob.disconnect();
    const removed = await annRec.waitFor('pusher:member_removed');
    assert.equal(removed.data.id, 'bob');
    assert.equal(annCh.members.count, 1);
    assert.deepEqual(memberIds(annCh.members), ['ann']);
  });

  it('counts a user with two tabs once; member_removed only after the last tab leaves', async () => {
    const ch = unique('presence-');
    const publicCh = unique('public-');
    const ann = await presenceClient('ann', { name: 'Ann' });
    const { channel: annCh } = await subscribe(ann, ch);
    await subscribe(ann, publicCh);
    const annRec = record(annCh);

    const tab1 = await presenceClient('multi', { name: 'Multi' });
    const { data: tab1Members } = await subscribe(tab1, ch);
    assert.equal(tab1Members.count, 2);
    await annRec.waitFor('pusher:member_added', { filter: (m) => m.id === 'multi' });

    const tab2 = await presenceClient('multi', { name: 'Multi' });
    const { data: tab2Members } = await subscribe(tab2, ch);
    assert.equal(tab2Members.count, 2, 'second tab of the same user counted twice');
    assert.deepEqual(memberIds(tab2Members), ['ann', 'multi']);
    assert.equal(tab2Members.me.id, 'multi');

    await ctx.sdk.trigger(ch, 'marker-1', {});
    await annRec.waitFor('marker-1');
    assert.equal(annRec.before('marker-1').filter((e) => e.name === 'pusher:member_added').length, 1,
      'member_added sent again for the second tab of the same user');
    assert.equal(annCh.members.count, 2);

    // HTTP API: distinct users, user_count, subscription_count.
    assert.deepEqual(await usersOf(ch), ['ann', 'multi']);

    const list = await apiGet(ctx.sdk, '/channels', { filter_by_prefix: 'presence-', info: 'user_count' });
    assert.equal(typeof list.channels, 'object');
    assert.deepEqual(list.channels[ch], { user_count: 2 });
    for (const name of Object.keys(list.channels)) {
      assert.ok(name.startsWith('presence-'), `filter_by_prefix=presence- returned ${name}`);
    }
    assert.ok(!(publicCh in list.channels));

    const info = await infoOf(ch, 'user_count,subscription_count');
    assert.equal(info.occupied, true);
    assert.equal(info.user_count, 2);
    assert.equal(info.subscription_count, 3);

    // Close the first tab: the user is still present through the second one.
    tab1.disconnect();
    await waitUntil(async () => (await infoOf(ch, 'subscription_count')).subscription_count === 2,
      'the server has dropped the first tab');
    await ctx.sdk.trigger(ch, 'marker-2', {});
    await annRec.waitFor('marker-2');
    assert.deepEqual(annRec.before('marker-2').filter((e) => e.name === 'pusher:member_removed'), [],
      'member_removed sent while the user still had a tab in the channel');
    assert.equal(annCh.members.count, 2);
    assert.deepEqual(await usersOf(ch), ['ann', 'multi']);
    assert.equal((await infoOf(ch, 'user_count')).user_count, 2);

    // Close the last tab: now the user leaves.
    tab2.disconnect();
    const removed = await annRec.waitFor('pusher:member_removed');
    assert.equal(removed.data.id, 'multi');
    assert.equal(annRec.count('pusher:member_removed'), 1);
    assert.equal(annCh.members.count, 1);
    assert.deepEqual(await usersOf(ch), ['ann']);
    const after = await infoOf(ch, 'user_count,subscription_count');
    assert.equal(after.user_count, 1);
    assert.equal(after.subscription_count, 1);
  });

  it('announces member_removed on pusher:unsubscribe, and the channel becomes unoccupied', async () => {
    const ch = unique('presence-');
    const ann = await presenceClient('ann', { name: 'Ann' });
    const { channel: annCh } = await subscribe(ann, ch);
    const annRec = record(annCh);
    const bob = await presenceClient('bob', { name: 'Bob' });
    await subscribe(bob, ch);
    await annRec.waitFor('pusher:member_added');

    bob.unsubscribe(ch);
    const removed = await annRec.waitFor('pusher:member_removed');
    assert.equal(removed.data.id, 'bob');
    assert.deepEqual(await usersOf(ch), ['ann']);

    ann.unsubscribe(ch);
    await waitUntil(async () => (await infoOf(ch, 'user_count')).occupied === false,
      'the channel is reported unoccupied');
    const list = await apiGet(ctx.sdk, '/channels', { filter_by_prefix: 'presence-', info: 'user_count' });
    assert.ok(!(ch in list.channels), 'an empty presence channel is still listed');
  });

  it('normalises a numeric user_id to a string', async () => {
    const ch = unique('presence-');
    const ann = await presenceClient('ann', { name: 'Ann' });
    const { channel: annCh } = await subscribe(ann, ch);
    const annRec = record(annCh);
    const num = await presenceClient(10, { name: 'Ten' });
    const { data: numMembers } = await subscribe(num, ch);
    assert.deepEqual(memberIds(numMembers), ['10', 'ann']);

    const added = await annRec.waitFor('pusher:member_added');
    assert.equal(added.data.id, '10', `member_added user_id ${JSON.stringify(added.data.id)} is not the string "10"`);
    const { users } = await apiGet(ctx.sdk, `/channels/${ch}/users`);
    assert.ok(users.some((u) => u.id === '10'), `/users ids not strings: ${JSON.stringify(users)}`);
  });

  it('lists a member that has no user_info (hash entry present)', async () => {
    const ch = unique('presence-');
    const bare = await presenceClient('bare');
    await subscribe(bare, ch);
    const other = await presenceClient('other', { name: 'Other' });
    const { data: members } = await subscribe(other, ch);
    assert.equal(members.count, 2);
    assert.notEqual(members.get('bare'), null, 'member without user_info missing from the presence hash');
  });

  it('rejects /users and user_count for non-presence channels with 400', async () => {
    const client = await ctx.pool.connect();
    const ch = unique('public-');
    await subscribe(client, ch);
    await assert.rejects(ctx.sdk.get({ path: `/channels/${ch}/users` }), (e) => e.status === 400);
    await assert.rejects(ctx.sdk.get({ path: `/channels/${ch}`, params: { info: 'user_count' } }), (e) => e.status === 400);
  });
});
