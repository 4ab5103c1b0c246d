/**
 * The process that crash.ts kills: alice's device on the store given as argument (SQLite or
 * PostgreSQL), running the loops of a bot (sync, send requests, share room keys, encrypt,
 * decrypt) against the parent's homeserver over IPC, until SIGKILL. On start it first checks
 * every room key it reported in earlier lives.
 *
 * Usage: `crash-child.ts <store options as JSON> <device id>`.
 */
import { OlmMachine, type StoreOptions } from '../../src/index';
import { connectToParent, openWhenUnlocked } from '../helpers/child-bot';
import { ALICE, BOB, type ToParent } from './crash-protocol';

const { send, request, flush, sync, checkReported } = connectToParent<ToParent>();

(async () => {
  const store = JSON.parse(process.argv[2]!) as StoreOptions;
  // On PostgreSQL, wait while the killed holder's lease lasts.
  const machine = await openWhenUnlocked(() => OlmMachine.open({ userId: ALICE, deviceId: process.argv[3]!, store }), {
    attempt: () => send({ type: 'opening' }),
    locked: () => send({ type: 'locked' }),
  });
  await checkReported(machine);

  await machine.updateTrackedUsers([BOB]);
  for (let i = 0; ; i++) {
    const batch = await sync();
    const result = await machine.receiveSyncChanges(batch.changes);
    send({ type: 'received', keys: result.roomKeyUpdates.map((k) => ({ roomId: k.roomId, sessionId: k.sessionId })) });
    send({ type: 'ack', batch: batch.batch });
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
