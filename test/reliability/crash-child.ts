/**
 * The process that crash.ts kills: alice's device on the store given as argument (SQLite or
 * PostgreSQL), running the loops of a bot (sync, send requests, share room keys, encrypt,
 * decrypt) against the parent's homeserver over IPC, until SIGKILL. On start it first checks
 * every room key it reported in earlier lives.
 *
 * Usage: `crash-child.ts <store options as JSON> <device id>`.
 */
import { MatrixCryptoError, OlmMachine, type StoreOptions } from '../../src/index';
import type { MatrixEvent } from '../../src/types';
import type { OutgoingRequest } from '../../src/requests';
import { ALICE, BOB, type ToChild, type ToParent } from './crash-protocol';

const send = (m: ToParent) => process.send!(m);
let nextId = 0;
const waiting = new Map<number, (m: ToChild) => void>();
let verify: ((events: MatrixEvent[]) => void) | undefined;

process.on('message', (m: ToChild) => {
  if (m.type === 'verify') verify?.(m.events);
  else waiting.get(m.id)?.(m);
});

function rpc(m: { type: 'request'; request: OutgoingRequest } | { type: 'sync' }): Promise<ToChild> {
  const id = nextId++;
  return new Promise((resolve) => {
    waiting.set(id, resolve);
    send({ ...m, id });
  });
}

async function request(machine: OlmMachine, r: OutgoingRequest) {
  const reply = await rpc({ type: 'request', request: r });
  if (reply.type !== 'response') throw new Error('unexpected reply');
  if (reply.error !== undefined) throw new Error(reply.error);
  await machine.markRequestAsSent(r, reply.body);
}

async function flush(machine: OlmMachine) {
  for (let round = 0; round < 10; round++) {
    const requests = await machine.outgoingRequests();
    if (requests.length === 0) return;
    for (const r of requests) await request(machine, r);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Open alice's store; on PostgreSQL, wait while the killed holder's lease lasts. */
async function open(store: StoreOptions, deviceId: string): Promise<OlmMachine> {
  for (;;) {
    send({ type: 'opening' });
    try {
      return await OlmMachine.open({ userId: ALICE, deviceId, store });
    } catch (err) {
      if (!(err instanceof MatrixCryptoError) || err.code !== 'StoreLocked') throw err;
      send({ type: 'locked' });
      await sleep(200);
    }
  }
}

(async () => {
  const machine = await open(JSON.parse(process.argv[2]!) as StoreOptions, process.argv[3]!);
  const events = await new Promise<MatrixEvent[]>((resolve) => {
    verify = resolve;
    send({ type: 'ready', curve25519: machine.identityKeys.curve25519 });
  });
  const failed: string[] = [];
  for (const e of events) {
    try {
      await machine.decryptRoomEvent(e, String(e.room_id));
    } catch (err) {
      failed.push(`${String(e.content.session_id)}: ${(err as Error).message}`);
    }
  }
  send({ type: 'verified', checked: events.length, failed });

  await machine.updateTrackedUsers([BOB]);
  for (let i = 0; ; i++) {
    const batch = await rpc({ type: 'sync' });
    if (batch.type !== 'batch') throw new Error('unexpected reply');
    const result = await machine.receiveSyncChanges(batch.changes);
    send({ type: 'received', keys: result.roomKeyUpdates.map((k) => ({ roomId: k.roomId, sessionId: k.sessionId })) });
    send({ type: 'ack', id: batch.batch });
    await flush(machine);

    const room = `!alice${i % 3}:example.org`;
    const claim = await machine.getMissingSessions([ALICE, BOB]);
    if (claim) await request(machine, claim);
    const share = await machine.shareRoomKey(room, [ALICE, BOB]);
    for (const r of share.requests) await request(machine, r);
    const content = await machine.encryptRoomEvent(room, 'm.room.message', { msgtype: 'm.text', body: `alice ${i}` });
    const toBob = [
      ...share.sharedWith.filter((d) => d.userId === BOB).map((d) => `key to ${d.deviceId}`),
      ...share.withheld.filter((d) => d.userId === BOB).map((d) => `${d.code} to ${d.deviceId}${d.sent ? '' : ' (not sent)'}`),
    ];
    send({ type: 'sent', event: { type: 'm.room.encrypted', sender: ALICE, room_id: room, event_id: `$a${i}`, origin_server_ts: Date.now(), content }, share: toBob.join(', ') || 'nothing for bob' });
    if (i % 5 === 4) await machine.discardRoomKey(room);
    for (const e of batch.recentEvents) await machine.decryptRoomEvent(e, String(e.room_id)).catch(() => undefined);
  }
})().catch((err) => {
  process.stderr.write(`crash-child: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
