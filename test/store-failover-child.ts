/**
 * One process of the PostgreSQL failover test (store-failover.test.ts): the bot's device on a
 * PostgreSQL store, running a bot's loops against the parent's homeserver over IPC. It opens
 * the account as soon as the store lets it (retrying while another process holds it), checks
 * every room key the parent says an earlier holder reported, then syncs, shares, encrypts and
 * decrypts until it is killed.
 */
import { OlmMachine, type StoreOptions } from '../src/index';
import type { MatrixEvent } from '../src/types';
import { connectToParent, openWhenUnlocked, sleep, type ChildMessage } from './helpers/child-bot';

export type { ToChild } from './helpers/child-bot';
export const BOT = '@bot:example.org';
export const PEER = '@peer:example.org';

export type FromChild =
  | ChildMessage
  | { type: 'waiting' }
  | { type: 'received'; sessionIds: string[] }
  | { type: 'decrypted'; eventIds: string[] }
  | { type: 'sharing' }
  | { type: 'sent'; event: MatrixEvent };

if (require.main === module) {
  const { send, request, flush, sync, checkReported } = connectToParent<FromChild>();

  (async () => {
    const store: StoreOptions = { kind: 'postgres', url: process.argv[2]!, passphrase: 'failover' };
    let said = false;
    const machine = await openWhenUnlocked(() => OlmMachine.open({ userId: BOT, deviceId: 'BOT', store }), {
      locked: () => {
        if (!said) send({ type: 'waiting' });
        said = true;
      },
    });
    await checkReported(machine);

    await flush(machine);
    await machine.updateTrackedUsers([PEER, BOT]);
    for (let i = 0; ; i++) {
      const batch = await sync();
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
