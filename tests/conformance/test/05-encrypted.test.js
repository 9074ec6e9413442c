// 5. End-to-end encrypted channels: the SDK encrypts, the server relays ciphertext verbatim,
//    pusher-js (Node build, tweetnacl bundled) decrypts with the shared_secret from auth.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  useServer, subscribe, record, unique, sdkAuthorizer, sdkFor, APP1, PusherClient,
} from './helpers.js';

describe('encrypted channel', () => {
  const ctx = useServer({ before, after });
  let esdk;
  before(() => {
    esdk = sdkFor(ctx.server, APP1, { encryptionMasterKeyBase64: randomBytes(32).toString('base64') });
  });

  it('the pusher-js Node build ships NaCl (tweetnacl) for decryption', () => {
    const client = ctx.pool.create(APP1.key, { channelAuthorization: sdkAuthorizer(esdk) });
    assert.ok(client.config.nacl, 'pusher-js config has no nacl implementation');
    assert.equal(typeof client.config.nacl.secretbox?.open, 'function');
    assert.equal(typeof PusherClient, 'function');
  });

  it('delivers SDK-encrypted events decrypted to pusher-js', async () => {
    const client = await ctx.pool.connect(APP1.key, { channelAuthorization: sdkAuthorizer(esdk) });
    const name = unique('private-encrypted-');
    const { channel } = await subscribe(client, name);
    assert.equal(channel.subscribed, true);
    assert.ok(channel.key, 'pusher-js kept no shared secret for the channel');

    const rec = record(channel);
    const payload = { secret: 'attack at dawn', n: 3, emoji: '🔐' };
    const res = await esdk.trigger(name, 'classified', payload);
    assert.equal(res.status, 200);
    const ev = await rec.waitFor('classified');
    assert.deepEqual(ev.data, payload);
  });

  it('relays the ciphertext verbatim (the server never sees or alters plaintext)', async () => {
    const client = await ctx.pool.connect(APP1.key, { channelAuthorization: sdkAuthorizer(esdk) });
    const name = unique('private-encrypted-');
    const { channel } = await subscribe(client, name);
    const rec = record(channel);
    // `message` on the connection carries the frame as received, before the channel decrypts it.
    const raw = [];
    client.connection.bind('message', (msg) => {
      if (msg.channel === name && msg.event === 'classified') raw.push(msg.data);
    });

    await esdk.trigger(name, 'classified', { plain: 'text-visible-only-after-decryption' });
    const ev = await rec.waitFor('classified');
    assert.deepEqual(ev.data, { plain: 'text-visible-only-after-decryption' });
    assert.equal(raw.length, 1);
    const wire = raw[0];
    assert.equal(typeof wire, 'object', `encrypted payload on the wire: ${JSON.stringify(wire)}`);
    assert.equal(typeof wire.nonce, 'string');
    assert.equal(typeof wire.ciphertext, 'string');
    assert.equal(Buffer.from(wire.nonce, 'base64').length, 24);
    assert.ok(!JSON.stringify(wire).includes('text-visible-only-after-decryption'));
  });
});
