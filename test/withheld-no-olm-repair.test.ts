// The reaction to m.no_olm repairs the channel even when we already hold an Olm session with the
// sender's device that the sender has never been shown to use (issue: Bob's own trusted-only
// share created one with Alice's unverified device). Sender ours, and sender the wasm bindings.
import { describe, expect, it } from 'vitest';
import { OlmMachine } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing';
import { WasmDevice } from './helpers/wasm-device';

const ALICE = '@alice:example.org';
const BOB = '@bob:example.org';
const ROOM = '!room:example.org';
const OTHER = '!other:example.org';

const claimsOfAlice = (hs: TestHomeserver) =>
  hs.requestLog.filter((r) => r.from === `${BOB}|BOB` && r.type === 'keys_claim' && r.body.one_time_keys?.[ALICE]?.ALICE).length;

/** Bob (ours) makes an unused Olm session with Alice's device, then runs out of one-time keys. */
async function bobWithAnUnusedSession(hs: TestHomeserver) {
  const bob = new TestDevice(hs, await OlmMachine.open({ userId: BOB, deviceId: 'BOB', store: { kind: 'memory' } }));
  hs.changed.set(`${BOB}|BOB`, new Set());
  await bob.flush();
  const share = await bob.prepareRoom(OTHER, [ALICE, BOB], { sharingStrategy: 'only_trusted_devices' });
  for (const r of share.requests) await bob.send(r);
  expect(share.withheld).toEqual([expect.objectContaining({ userId: ALICE, deviceId: 'ALICE', code: 'm.unverified' })]);
  expect(claimsOfAlice(hs)).toBe(1);
  hs.exhaustKeys(BOB, 'BOB');
  return bob;
}

describe('the m.no_olm reaction with an unused Olm session already there', () => {
  it('sender ours: Bob reacts, and Alice\'s next share reaches him', async () => {
    const hs = new TestHomeserver();
    const alice = await TestDevice.create(hs, ALICE, 'ALICE');
    const bob = await bobWithAnUnusedSession(hs);
    const first = await alice.sendMessage(ROOM, [ALICE, BOB], { body: 'unreachable' });
    const { withheldNotices } = await bob.sync();
    expect(withheldNotices).toContainEqual(expect.objectContaining({ kind: 'no_olm', sender: ALICE, verdict: 'trusted' }));
    expect(claimsOfAlice(hs)).toBe(2);

    await alice.sync();
    await alice.machine.discardRoomKey(ROOM);
    const next = await alice.sendMessage(ROOM, [ALICE, BOB], { body: 'reachable now' });
    await bob.sync();
    expect((await bob.machine.decryptRoomEvent(next, ROOM)).event.content).toMatchObject({ body: 'reachable now' });
    expect((await bob.machine.decryptRoomEvent(first, ROOM).catch((e) => e)).withheld).toMatchObject({ code: 'm.no_olm' });
  });

  it('sender the wasm bindings: Bob reacts, and their next share reaches him', async () => {
    const hs = new TestHomeserver();
    const alice = await WasmDevice.create(hs, ALICE, 'ALICE');
    const bob = await bobWithAnUnusedSession(hs);
    await alice.sendMessage(ROOM, [ALICE, BOB], { msgtype: 'm.text', body: 'unreachable' });
    const { withheldNotices } = await bob.sync();
    expect(withheldNotices).toContainEqual(expect.objectContaining({ kind: 'no_olm', sender: ALICE, verdict: 'trusted' }));
    expect(claimsOfAlice(hs)).toBe(2);

    await alice.sync();
    const wasm = await import('@matrix-org/matrix-sdk-crypto-wasm');
    await alice.machine.invalidateGroupSession(new wasm.RoomId(ROOM));
    const next = await alice.sendMessage(ROOM, [ALICE, BOB], { msgtype: 'm.text', body: 'reachable now' });
    await bob.sync();
    expect((await bob.machine.decryptRoomEvent(next, ROOM)).event.content).toMatchObject({ body: 'reachable now' });
  });
});
