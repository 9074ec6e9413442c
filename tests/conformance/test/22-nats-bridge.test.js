// 22. The NATS subject bridge ([[bridges]]) against the real NATS server on 127.0.0.1:4222:
//     messages published on configured subjects reach pusher-js subscribers of the mapped
//     channel as the mapped event; other instances see nothing; malformed bus messages are
//     counted and never stop the bridge; a JetStream durable consumer picks up, after a restart,
//     what was published while plexus was down, and acknowledges everything it fanned out.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, StringCodec } from 'nats';
import {
  startServer, ClientPool, subscribe, record, unique, waitUntil, APP1,
} from './helpers.js';

const sc = StringCodec();

function config(root, extra = '') {
  return `
[server]
host = "127.0.0.1"
port = 0

[[apps]]
id = "${APP1.id}"
key = "${APP1.key}"
secret = "${APP1.secret}"

[[bridges]]
app = "${APP1.id}"
subject = "${root}.events.{instance}.{type}"
channel = "instance-{instance}"
event = "{type}"
group = "${root}"
${extra}
`;
}

describe('NATS subject bridge', () => {
  let nc;
  before(async () => {
    nc = await connect({ servers: '127.0.0.1:4222' });
  });
  after(async () => {
    await nc?.drain();
  });

  describe('core subjects', () => {
    const root = unique('bridge');
    let server;
    let pool;
    before(async () => {
      server = await startServer({ config: config(root) });
      pool = new ClientPool(server);
    });
    after(async () => {
      pool?.disconnectAll();
      const result = await server?.stop();
      assert.ok(!result?.crashed, `plexus died; stderr:\n${server?.stderrTail()}`);
    });

    it('maps subject tokens to channel and event; other instances see nothing', async () => {
      const mine = await pool.connect();
      const theirs = await pool.connect();
      const { channel: mineChannel } = await subscribe(mine, 'instance-inst_1');
      const { channel: theirChannel } = await subscribe(theirs, 'instance-inst_2');
      const recMine = record(mineChannel);
      const recTheirs = record(theirChannel);

      nc.publish(`${root}.events.inst_1.message_received`, sc.encode(JSON.stringify({ text: 'hi' })));
      nc.publish(`${root}.events.inst_1.not-utf8`, new Uint8Array([0xff, 0xfe]));
      nc.publish(`${root}.events.inst_1.bad name with spaces`.replaceAll(' ', '_'), sc.encode('"ok"'));
      nc.publish(`${root}.events.inst_2.other`, sc.encode('{}'));
      nc.publish(`${root}.events.inst_1.marker`, sc.encode('{}'));
      await recMine.waitFor('marker');
      await recTheirs.waitFor('other');
      const got = recMine.events.filter((e) => !e.name.startsWith('pusher')).map((e) => [e.name, e.data]);
      assert.deepEqual(got, [['message_received', { text: 'hi' }], ['bad_name_with_spaces', 'ok'], ['marker', {}]],
        'the non-UTF-8 message is dropped, the rest arrive in order');
      assert.equal(recTheirs.events.filter((e) => e.name === 'message_received').length, 0, 'leaked across instances');
    });

    it('a message for a channel name plexus refuses is dropped and the bridge goes on', async () => {
      const c = await pool.connect();
      const { channel } = await subscribe(c, 'instance-ok');
      const rec = record(channel);
      // `#` is not allowed in channel names: this one cannot be published.
      nc.publish(`${root}.events.bad#chan.ev`, sc.encode('{}'));
      nc.publish(`${root}.events.ok.after`, sc.encode('{}'));
      await rec.waitFor('after');
      assert.ok(!server.crashed());
    });
  });

  describe('JetStream durable consumer', () => {
    const root = unique('bridgejs');
    const stream = root.toUpperCase().replace(/[^A-Z0-9]/g, '_');
    const durable = `${root}-durable`;
    const extra = `stream = "${stream}"\ndurable = "${durable}"`;
    let jsm;
    let js;
    before(async () => {
      jsm = await nc.jetstreamManager();
      await jsm.streams.add({ name: stream, subjects: [`${root}.events.>`] });
      js = nc.jetstream();
    });
    after(async () => {
      await jsm?.streams.delete(stream).catch(() => {});
    });

    it('acknowledges what it fanned out and, after a restart, delivers what came meanwhile', async () => {
      let server = await startServer({ config: config(root, extra) });
      let pool = new ClientPool(server);
      const c = await pool.connect();
      const { channel } = await subscribe(c, 'instance-js');
      const rec = record(channel);
      for (let i = 0; i < 5; i += 1) await js.publish(`${root}.events.js.tick`, sc.encode(JSON.stringify({ i })));
      await rec.waitFor('tick', { filter: (d) => d.i === 4 });
      assert.deepEqual(rec.events.filter((e) => e.name === 'tick').map((e) => e.data.i), [0, 1, 2, 3, 4]);
      await waitUntil(async () => {
        const info = await jsm.consumers.info(stream, durable);
        return info.num_pending === 0 && info.num_ack_pending === 0;
      }, 'every fanned-out message to be acknowledged');
      pool.disconnectAll();
      const stopped = await server.stop();
      assert.ok(!stopped.crashed);

      // While plexus is down: three more; the stream keeps them for the durable consumer.
      for (let i = 5; i < 8; i += 1) await js.publish(`${root}.events.js.tick`, sc.encode(JSON.stringify({ i })));
      const pending = await jsm.consumers.info(stream, durable);
      assert.equal(pending.num_pending, 3, 'the stream holds what came while plexus was down');

      server = await startServer({ config: config(root, extra) });
      pool = new ClientPool(server);
      try {
        await waitUntil(async () => {
          const info = await jsm.consumers.info(stream, durable);
          return info.num_pending === 0 && info.num_ack_pending === 0;
        }, 'the restarted bridge to consume and acknowledge the backlog');
        const info = await jsm.consumers.info(stream, durable);
        assert.equal(info.num_redelivered ?? 0, 0, 'messages acknowledged before the restart came again');
        assert.ok(info.delivered.stream_seq >= 8, `delivered up to stream seq ${info.delivered.stream_seq}`);
      } finally {
        pool.disconnectAll();
        const result = await server.stop();
        assert.ok(!result.crashed, `plexus died; stderr:\n${server.stderrTail()}`);
      }
    });
  });
});
