/**
 * One process of the PostgreSQL failover test (store-failover.test.ts): the bot's device on a
 * PostgreSQL store, running a bot's loops against the parent's homeserver over IPC. It opens
 * the account as soon as the store lets it (retrying while another process holds it), checks
 * every room key the parent says an earlier holder reported, then syncs, shares, encrypts and
 * decrypts until it is killed.
 */
import { MatrixCryptoError, OlmMachine, type StoreOptions } from '../src/index';
import type { MatrixEvent, SyncChanges } from '../src/types';
import type { OutgoingRequest } from '../src/requests';

export const BOT = '@bot:example.org';
export const PEER = '@peer:example.org';

export type FromChild =
  | { type: 'waiting' }
  | { type: 'opened'; curve25519: string }
  | { type: 'verified'; checked: number; failed: string[] }
  | { type: 'request'; id: number; request: OutgoingRequest }
  | { type: 'sync'; id: number }
  | { type: 'ack'; batch: number }
  | { type: 'received'; sessionIds: string[] }
  | { type: 'decrypted'; eventIds: string[] }
  | { type: 'sharing' }
  | { type: 'sent'; event: MatrixEvent };

export type ToChild =
  | { type: 'verify'; events: MatrixEvent[] }
  | { type: 'response'; id: number; body: string; error?: string }
  | { type: 'batch'; id: number; batch: number; changes: SyncChanges & { toDeviceEvents: MatrixEvent[] }; recentEvents: MatrixEvent[] };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

if (require.main === module) {
  const send = (m: FromChild) => process.send!(m);
  let nextId = 0;
  const waiting = new Map<number, (m: ToChild) => void>();
  let verify: ((events: MatrixEvent[]) => void) | undefined;
  process.on('message', (m: ToChild) => {
    if (m.type === 'verify') verify?.(m.events);
    else waiting.get(m.id)?.(m);
  });
  const rpc = (m: { type: 'request'; request: OutgoingRequest } | { type: 'sync' }) =>
    new Promise<ToChild>((resolve) => {
      const id = nextId++;
      waiting.set(id, resolve);
      send({ ...m, id });
    });
  const request = async (machine: OlmMachine, r: OutgoingRequest) => {
    const reply = await rpc({ type: 'request', request: r });
    if (reply.type !== 'response') throw new Error('unexpected reply');
    if (reply.error !== undefined) throw new Error(reply.error);
    await machine.markRequestAsSent(r, reply.body);
  };
  const flush = async (machine: OlmMachine) => {
    for (let round = 0; round < 10; round++) {
      const requests = await machine.outgoingRequests();
      if (requests.length === 0) return;
      for (const r of requests) await request(machine, r);
    }
  };

  (async () => {
    const store: StoreOptions = { kind: 'postgres', url: process.argv[2]!, passphrase: 'failover' };
    let machine: OlmMachine | undefined;
    let said = false;
    while (!machine) {
      try {
        machine = await OlmMachine.open({ userId: BOT, deviceId: 'BOT', store });
      } catch (err) {
        if (!(err instanceof MatrixCryptoError) || err.code !== 'StoreLocked') throw err;
        if (!said) send({ type: 'waiting' });
        said = true;
        await sleep(200);
      }
    }
    const events = await new Promise<MatrixEvent[]>((resolve) => {
      verify = resolve;
      send({ type: 'opened', curve25519: machine!.identityKeys.curve25519 });
    });
    const failed: string[] = [];
    for (const e of events) {
      await machine.decryptRoomEvent(e, String(e.room_id)).catch((err: Error) => failed.push(`${String(e.content.session_id)}: ${err.message}`));
    }
    send({ type: 'verified', checked: events.length, failed });

    await flush(machine);
    await machine.updateTrackedUsers([PEER, BOT]);
    for (let i = 0; ; i++) {
      const batch = await rpc({ type: 'sync' });
      if (batch.type !== 'batch') throw new Error('unexpected reply');
      const result = await machine.receiveSyncChanges(batch.changes);
      send({ type: 'received', sessionIds: result.roomKeyUpdates.map((k) => k.sessionId) });
      send({ type: 'ack', batch: batch.batch });
      await flush(machine);
      const decrypted: string[] = [];
      for (const e of batch.recentEvents) {
        if (await machine.decryptRoomEvent(e, String(e.room_id)).then(() => true, () => false)) decrypted.push(String(e.event_id));
      }
      send({ type: 'decrypted', eventIds: decrypted });

      const room = `!bot${i % 2}:example.org`;
      const claim = await machine.getMissingSessions([PEER, BOT]);
      if (claim) await request(machine, claim);
      send({ type: 'sharing' });
      const share = await machine.shareRoomKey(room, [PEER, BOT]);
      for (const r of share.requests) await request(machine, r);
      const content = await machine.encryptRoomEvent(room, 'm.room.message', { msgtype: 'm.text', body: `bot ${process.pid} ${i}` });
      send({ type: 'sent', event: { type: 'm.room.encrypted', sender: BOT, room_id: room, event_id: `$b${process.pid}-${i}`, origin_server_ts: Date.now(), content } });
      if (i % 3 === 2) await machine.discardRoomKey(room);
      await sleep(30);
    }
  })().catch((err) => {
    process.stderr.write(`store-failover-child: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  });
}
