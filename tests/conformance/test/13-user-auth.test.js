// 13. User authentication: pusher-js sign-in (success and bad signature), server-to-user events
//     (sendToUser), terminating a user's connections, and the per-app "authorized connections"
//     timeout (digest §9.1–§9.4, §10.6).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServer, sdkFor, signedInClient, sdkUserAuthenticator, recordMessages, recordConnectionErrors,
  errorCode, waitForState, waitUntil, transportClosed, subscribe, record, unique, sdkAuthorizer,
  APP1, APP2,
} from './helpers.js';

// app-1: user authentication optional (no timeout). app-2: every connection must sign in or
// subscribe to a private/presence channel within 1 s.
const CONFIG = `
[server]
host = "127.0.0.1"
port = 0

[[apps]]
id = "${APP1.id}"
key = "${APP1.key}"
secret = "${APP1.secret}"
enable_client_messages = true

[[apps]]
id = "${APP2.id}"
key = "${APP2.key}"
secret = "${APP2.secret}"
enable_user_authentication = true
user_authentication_timeout_secs = 1
`;

/** Records every connection state a client enters from now on. */
function recordStates(client) {
  const states = [];
  client.connection.bind('state_change', ({ current }) => states.push(current));
  return states;
}

describe('user authentication', () => {
  const ctx = useServer({ before, after }, { config: CONFIG });

  const signIn = (userData, opts) => signedInClient(ctx.pool, ctx.sdk, userData, opts);

  it('pusher.signin() succeeds: signin_success echoes user_data and pusher-js holds the user', async () => {
    const id = unique('ann-');
    const userData = { id, user_info: { name: 'Ann' } };
    const client = await signIn(userData);

    const success = client.messages.messages.find((m) => m.event === 'pusher:signin_success');
    assert.equal(typeof success.data?.user_data, 'string', `signin_success data: ${JSON.stringify(success.data)}`);
    // The same string the SDK signed, byte for byte.
    const signed = ctx.sdk.authenticateUser(client.connection.socket_id, userData);
    assert.equal(success.data.user_data, signed.user_data);
    assert.deepEqual(client.user.user_data, userData);
    assert.equal(client.user.serverToUserChannel.name, `#server-to-user-${id}`);
    assert.equal(client.connection.state, 'connected');
  });

  it('a bad sign-in signature gets pusher:error 4009 and close 4009; pusher-js does not reconnect', async () => {
    const wrongSdk = sdkFor(ctx.server, { ...APP1, secret: 'not-the-secret' });
    const client = ctx.pool.create(APP1.key, {
      userAuthentication: sdkUserAuthenticator(wrongSdk, { id: unique('mallory-') }),
    });
    const errors = recordConnectionErrors(client);
    const messages = recordMessages(client);
    await waitForState(client, 'connected');
    const closed = transportClosed(client);
    const states = recordStates(client);
    client.signin();

    const frame = await messages.waitFor((m) => m.event === 'pusher:error', 'pusher:error');
    assert.equal(frame.data?.code, 4009, `pusher:error ${JSON.stringify(frame.data)}`);
    assert.equal(typeof frame.data?.message, 'string');
    const close = await closed;
    assert.equal(close.code, 4009, `close code ${close.code}`);
    // 4001–4099 is pusher-js's "refused" path: straight to `disconnected`, no retry timer.
    await waitForState(client, 'disconnected');
    assert.ok(!states.includes('connecting'), `pusher-js reconnected after 4009: ${states}`);
    assert.ok(errors.some((e) => errorCode(e) === 4009), `no 4009 error event: ${JSON.stringify(errors)}`);
    assert.equal(client.user.user_data, null);
    assert.deepEqual(messages.messages.filter((m) => m.event === 'pusher:signin_success'), []);
  });

  it('sendToUser reaches both tabs of the user exactly once, and not another user', async () => {
    const id = unique('multi-');
    const otherId = unique('other-');
    const tab1 = await signIn({ id });
    const tab2 = await signIn({ id });
    const other = await signIn({ id: otherId });
    const recs = [tab1, tab2, other].map((c) => record(c.user));

    await ctx.sdk.sendToUser(id, 'notice', { n: 1 });
    await ctx.sdk.sendToUser(id, 'marker', {});
    await ctx.sdk.sendToUser(otherId, 'marker', {});

    for (const [i, rec] of recs.slice(0, 2).entries()) {
      const got = await rec.waitFor('notice');
      assert.deepEqual(got.data, { n: 1 }, `tab ${i + 1}`);
      await rec.waitFor('marker');
      assert.deepEqual(rec.before('marker').map((e) => e.name), ['notice'],
        `tab ${i + 1} got the user event other than exactly once`);
    }
    await recs[2].waitFor('marker');
    assert.deepEqual(recs[2].before('marker'), [], 'another user received the event');
  });

  it('sendToUser does not reach a connection that is not signed in (even if subscribed to a channel)', async () => {
    const id = unique('target-');
    const target = await signIn({ id });
    const anon = await ctx.pool.connect();
    const ch = unique('public-');
    const { channel } = await subscribe(anon, ch);
    const anonAll = record(anon);
    const anonCh = record(channel);
    const targetRec = record(target.user);

    await ctx.sdk.sendToUser(id, 'private-notice', { secret: true });
    await ctx.sdk.trigger(ch, 'marker', {});
    await anonCh.waitFor('marker');
    assert.deepEqual(anonAll.before('marker').filter((e) => e.name === 'private-notice'), [],
      'an anonymous connection received a server-to-user event');
    await targetRec.waitFor('private-notice');
  });

  it('terminateUserConnections closes every connection of that user with 4009, and no other', async () => {
    const id = unique('bad-');
    const bystanderId = unique('good-');
    const tab1 = await signIn({ id });
    const tab2 = await signIn({ id });
    const bystander = await signIn({ id: bystanderId });
    // A presence member with the same user id that never signed in: not a signed-in connection.
    const ch = unique('presence-');
    const member = await ctx.pool.connect(APP1.key, {
      channelAuthorization: sdkAuthorizer(ctx.sdk, () => ({ user_id: id })),
    });
    const { channel: memberCh } = await subscribe(member, ch);

    const closes = [tab1, tab2].map(transportClosed);
    const tabErrors = [tab1, tab2].map(recordConnectionErrors);
    const tabStates = [tab1, tab2].map(recordStates);
    const bystanderStates = recordStates(bystander);
    const memberStates = recordStates(member);

    const res = await ctx.sdk.terminateUserConnections(id);
    assert.equal(res.status, 200);

    for (const [i, closed] of closes.entries()) {
      const close = await closed;
      assert.equal(close.code, 4009, `tab ${i + 1} close code ${close.code}`);
      await waitForState([tab1, tab2][i], 'disconnected');
      assert.ok(!tabStates[i].includes('connecting'), `tab ${i + 1} reconnected: ${tabStates[i]}`);
      assert.ok(tabErrors[i].some((e) => errorCode(e) === 4009), `tab ${i + 1}: no 4009 error`);
    }

    // The others are still connected and still receive.
    const byRec = record(bystander.user);
    await ctx.sdk.sendToUser(bystanderId, 'marker', {});
    await byRec.waitFor('marker');
    assert.deepEqual(bystanderStates, [], `bystander changed state: ${bystanderStates}`);
    const memberRec = record(memberCh);
    await ctx.sdk.trigger(ch, 'marker', {});
    await memberRec.waitFor('marker');
    assert.deepEqual(memberStates, [], `presence-only connection of the user changed state: ${memberStates}`);
  });

  describe('authorized-connection timeout (app-2: enable_user_authentication, 1 s)', () => {
    it('closes a connection that neither signs in nor subscribes privately with 4009; spares the others', async () => {
      const sdk2 = sdkFor(ctx.server, APP2);
      // Connected before the idle one, so their deadlines passed before its did.
      const optional = await ctx.pool.connect(APP1.key); // app-1: feature off
      const optionalStates = recordStates(optional);
      const signed = await signedInClient(ctx.pool, sdk2, { id: unique('ok-') }, { key: APP2.key });
      const signedStates = recordStates(signed);
      const priv = await ctx.pool.connect(APP2.key, { channelAuthorization: sdkAuthorizer(sdk2) });
      const privCh = unique('private-');
      const { channel: privChannel } = await subscribe(priv, privCh);
      const privStates = recordStates(priv);

      const idle = await ctx.pool.connect(APP2.key);
      const idleErrors = recordConnectionErrors(idle);
      const idleStates = recordStates(idle);
      const closed = transportClosed(idle);
      // A public subscription does not count as authorization.
      await subscribe(idle, unique('public-'));

      const close = await closed;
      assert.equal(close.code, 4009, `close code ${close.code}`);
      await waitForState(idle, 'disconnected');
      assert.ok(!idleStates.includes('connecting'), `pusher-js reconnected: ${idleStates}`);
      assert.ok(idleErrors.some((e) => errorCode(e) === 4009), `no 4009 error: ${JSON.stringify(idleErrors)}`);

      // The other three are past their own deadline (they connected earlier) and still fine.
      const pubCh = unique('public-');
      const { channel: optCh } = await subscribe(optional, pubCh);
      const optRec = record(optCh);
      await ctx.sdk.trigger(pubCh, 'marker', {});
      await optRec.waitFor('marker');
      const signedRec = record(signed.user);
      await sdk2.sendToUser(signed.user.user_data.id, 'marker', {});
      await signedRec.waitFor('marker');
      const privRec = record(privChannel);
      await sdk2.trigger(privCh, 'marker', {});
      await privRec.waitFor('marker');
      assert.deepEqual(optionalStates, [], 'app-1 connection (feature off) was disturbed');
      assert.deepEqual(signedStates, [], 'signed-in app-2 connection was disturbed');
      assert.deepEqual(privStates, [], 'app-2 connection with a private subscription was disturbed');
    });
  });
});
