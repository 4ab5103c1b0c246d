import { describe, it, expect, afterEach } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OlmMachine } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing';
import { sendToDevice } from './helpers/to-device';

const ALICE = '@alice:example.org';
const BOB = '@bob:example.org';

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

/** Alice cannot reach Bob (no one-time keys left): her share sends Bob an m.no_olm. */
async function setup(reactToNoOlm?: boolean, path?: string) {
  const hs = new TestHomeserver();
  const alice = await TestDevice.create(hs, ALICE, 'ALICE');
  const store = path ? { kind: 'sqlite' as const, path } : { kind: 'memory' as const };
  const bob = new TestDevice(hs, await OlmMachine.open({ userId: BOB, deviceId: 'BOB', store, reactToNoOlm }));
  hs.changed.set(`${BOB}|BOB`, new Set());
  await bob.flush();
  await bob.machine.updateTrackedUsers([ALICE]);
  await bob.flush();
  hs.exhaustKeys(BOB, 'BOB');
  const first = await alice.sendMessage('!one:example.org', [ALICE, BOB], { body: 'unreachable' });
  return { hs, alice, bob, first };
}

const claimsBy = (hs: TestHomeserver, from: string) =>
  hs.requestLog.filter((r) => r.from === from && r.type === 'keys_claim' && r.body.one_time_keys?.[ALICE]?.ALICE);

function forgeNoOlm(hs: TestHomeserver, alice: TestDevice) {
  sendToDevice(hs, alice, 'm.room_key.withheld', {
    [BOB]: { BOB: { algorithm: 'm.megolm.v1.aes-sha2', code: 'm.no_olm', sender_key: alice.machine.identityKeys.curve25519, from_device: 'ALICE' } },
  });
}

describe('reaction to m.no_olm', () => {
  it('creates an Olm session and sends m.dummy, so the sender can share its next key with us', async () => {
    const { hs, alice, bob, first } = await setup();
    const { withheldNotices } = await bob.sync();
    expect(withheldNotices).toEqual([expect.objectContaining({ kind: 'no_olm', verdict: 'trusted' })]);
    expect(claimsBy(hs, `${BOB}|BOB`)).toHaveLength(1);
    const dummy = hs.sentTo(ALICE, 'ALICE', 'm.room.encrypted').filter((m) => m.sender === BOB);
    expect(dummy).toHaveLength(1);

    const sync = await alice.sync();
    expect(sync.toDeviceEvents).toContainEqual(expect.objectContaining({ kind: 'decrypted', event: expect.objectContaining({ type: 'm.dummy' }) }));
    await alice.machine.discardRoomKey('!one:example.org');
    const next = await alice.sendMessage('!one:example.org', [ALICE, BOB], { body: 'reachable now' });
    await bob.sync();
    expect((await bob.machine.decryptRoomEvent(next, '!one:example.org')).event.content).toMatchObject({ body: 'reachable now' });
    // The first message stays explained by the notice.
    const err = await bob.machine.decryptRoomEvent(first, '!one:example.org').catch((e) => e);
    expect(err.withheld).toMatchObject({ code: 'm.no_olm', scope: 'no_olm' });
  });

  it('makes at most one new session per device per hour, across restarts', async () => {
    const path = mkdtempSync(join(tmpdir(), 'mcn-noolm-'));
    dirs.push(path);
    const { hs, alice, bob } = await setup(undefined, path);
    await bob.sync();
    expect(claimsBy(hs, `${BOB}|BOB`)).toHaveLength(1);

    forgeNoOlm(hs, alice);
    await bob.sync();
    expect(claimsBy(hs, `${BOB}|BOB`)).toHaveLength(1);

    await bob.machine.close();
    bob.machine = await OlmMachine.open({ userId: BOB, deviceId: 'BOB', store: { kind: 'sqlite', path } });
    forgeNoOlm(hs, alice);
    await bob.sync();
    expect(claimsBy(hs, `${BOB}|BOB`)).toHaveLength(1);
    await bob.machine.close();
  });

  it('can be switched off', async () => {
    const { hs, bob } = await setup(false);
    await bob.sync();
    expect(claimsBy(hs, `${BOB}|BOB`)).toHaveLength(0);
    bob.machine.setReactToNoOlm(true);
  });
});
