// 11. Graceful shutdown: SIGTERM closes clients with 4200 (pusher-js reconnects) and exits 0.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, ClientPool, subscribe, waitForState, withTimeout, transportClosed, recordConnectionErrors,
  errorCode, unique, TIMEOUT, RawSocket,
} from './helpers.js';

describe('graceful shutdown', () => {
  let server;
  let pool;
  before(async () => {
    server = await startServer();
    pool = new ClientPool(server);
  });
  after(async () => {
    pool?.disconnectAll();
    await server?.stop();
  });

  it('closes connected clients with 4200 and exits with code 0', async () => {
    const a = await pool.connect();
    const b = await pool.connect();
    await subscribe(a, unique('public-'));
    const aClosed = transportClosed(a);
    const bClosed = transportClosed(b);
    const aErrors = recordConnectionErrors(a);
    const rawSocket = await RawSocket.open(server);
    await rawSocket.established();
    const aStates = [];
    a.connection.bind('state_change', ({ current }) => aStates.push(current));

    const exited = server.stop({ timeout: 20000 });

    const [ca, cb] = await withTimeout(Promise.all([aClosed, bClosed]), TIMEOUT + 10000, 'the server to close the sockets');
    assert.equal(ca.code, 4200, `close event ${JSON.stringify(ca)}`);
    assert.equal(cb.code, 4200, `close event ${JSON.stringify(cb)}`);
    assert.ok(aErrors.some((e) => errorCode(e) === 4200), `errors: ${JSON.stringify(aErrors)}`);

    // On the wire: pusher:error {code:4200} immediately before the 4200 close (digest §4, §12.3).
    const rawClose = await withTimeout(rawSocket.closed, TIMEOUT, 'the raw socket to be closed');
    assert.equal(rawClose.code, 4200);
    const last = rawSocket.frames.at(-1)?.msg;
    assert.equal(last?.event, 'pusher:error', `last frame before close: ${rawSocket.frames.at(-1)?.text}`);
    assert.equal(last.data?.code, 4200);

    // 4200 means "reconnect immediately": pusher-js goes back to connecting.
    const state = await waitForState(a, ['connecting', 'unavailable'], 15000);
    assert.ok(['connecting', 'unavailable'].includes(state), `states: ${aStates}`);

    const result = await exited;
    assert.equal(result.signal, null, `killed by signal ${result.signal}; stderr:\n${server.stderrTail()}`);
    assert.equal(result.code, 0, `exit code; stderr:\n${server.stderrTail()}`);
  });

  it('exits with code 0 on SIGTERM sent right after the listening line (idle)', async () => {
    // The listening line is the readiness contract: a SIGTERM sent after it must be handled
    // gracefully. Repeated because a late-installed signal handler loses this race only sometimes.
    for (let i = 0; i < 5; i++) {
      const idle = await startServer();
      const result = await idle.stop({ timeout: 20000 });
      assert.deepEqual({ code: result.code, signal: result.signal }, { code: 0, signal: null },
        `run ${i + 1}: plexus did not exit 0 on SIGTERM; stderr:\n${idle.stderrTail()}`);
    }
  });
});
