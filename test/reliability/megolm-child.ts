/**
 * The process that megolm-index.ts kills: alice's device on the store given as argument, in a
 * message loop (sync, then a few messages, each after sharing the room key with bob) against the
 * parent's homeserver over IPC, until SIGKILL, or until the parent says `close` (then it closes
 * the machine cleanly and exits).
 *
 * Usage: `megolm-child.ts <store options as JSON> <device id> <life>`.
 */
import { OlmMachine, type StoreOptions } from '../../src/index';
import { connectToParent, openWhenUnlocked } from '../helpers/child-bot';
import { ALICE, BOB, MESSAGE_ROOM as ROOM, type MessageLoopToParent } from './crash-protocol';

const { send, request, flush, sync } = connectToParent<MessageLoopToParent>();

(async () => {
  const store = JSON.parse(process.argv[2]!) as StoreOptions;
  const life = process.argv[4]!;
  const machine = await openWhenUnlocked(() => OlmMachine.open({ userId: ALICE, deviceId: process.argv[3]!, store }), {
    attempt: () => send({ type: 'opening' }),
    locked: () => send({ type: 'locked' }),
  });
  let closing = false;
  process.on('message', (m: { type: string }) => {
    if (m.type === 'close') closing = true;
  });

  await machine.updateTrackedUsers([BOB]);
  for (let i = 0; !closing; i++) {
    const batch = await sync();
    await machine.receiveSyncChanges(batch.changes);
    send({ type: 'ack', batch: batch.batch });
    await flush(machine);
    const claim = await machine.getMissingSessions([ALICE, BOB]);
    if (claim) await request(machine, claim);
    // Several messages per sync, each after a share as a bot sends them: a share with nothing
    // to send saves nothing, so only a rotation (every 100 messages) writes the session whole.
    for (let j = 0; j < 8 && !closing; j++) {
      const share = await machine.shareRoomKey(ROOM, [ALICE, BOB]);
      for (const r of share.requests) await request(machine, r);
      const content = await machine.encryptRoomEvent(ROOM, 'm.room.message', { msgtype: 'm.text', body: `alice ${life}.${i}.${j}` });
      send({ type: 'sent', event: { type: 'm.room.encrypted', sender: ALICE, room_id: ROOM, event_id: `$a${life}.${i}.${j}`, origin_server_ts: Date.now(), content } });
    }
  }
  await machine.close();
  send({ type: 'closed' });
  process.disconnect?.();
})().catch((err) => {
  process.stderr.write(`megolm-child: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
