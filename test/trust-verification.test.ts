// Interactive SAS verification between two machines on the in-memory test homeserver.
import { describe, expect, it } from 'vitest';
import type { VerificationInfo } from '../src/index';
import type { TestDevice } from '../src/testing/homeserver';
import { pair } from './helpers/cross-signed-pair';


/** Sends a step's requests from `d`. */
async function sendAll(d: TestDevice, step: { requests: Parameters<TestDevice['send']>[0][] }): Promise<void> {
  for (const r of step.requests) await d.send(r);
}

/** Alice asks Bob's device; Bob accepts; Alice starts SAS; Bob accepts it; keys are exchanged. */
async function untilKeysExchanged() {
  const { hs, alice, bob } = await pair();
  const asked = await alice.machine.requestDeviceVerification(bob.userId, bob.deviceId);
  expect(asked.verification).toMatchObject({ otherUserId: bob.userId, weStarted: true, phase: 'created' });
  const flowId = asked.verification.flowId;
  await sendAll(alice, asked);

  await bob.sync();
  expect(bob.machine.getVerification(alice.userId, flowId)).toMatchObject({ phase: 'requested', weStarted: false, isSelfVerification: false });
  await sendAll(bob, bob.machine.acceptVerification(alice.userId, flowId));
  await alice.sync();
  expect(alice.machine.getVerification(bob.userId, flowId)?.phase).toBe('ready');

  const started = await alice.machine.startSas(bob.userId, flowId);
  expect(started.verification.phase).toBe('started');
  await sendAll(alice, started);
  await bob.sync();
  expect(bob.machine.getVerification(alice.userId, flowId)).toMatchObject({ phase: 'started', weStarted: false });
  await sendAll(bob, await bob.machine.startSas(alice.userId, flowId));
  // accept -> key -> key: two rounds.
  await alice.sync();
  await bob.sync();
  await alice.sync();
  const a = alice.machine.getVerification(bob.userId, flowId)!;
  const b = bob.machine.getVerification(alice.userId, flowId)!;
  return { hs, alice, bob, flowId, a, b };
}

describe('interactive verification (SAS)', () => {
  it('shows the same emoji and decimals on both sides and ends with each side verifying the other', async () => {
    const { alice, bob, flowId, a, b } = await untilKeysExchanged();
    expect(a.phase).toBe('keys_exchanged');
    expect(b.phase).toBe('keys_exchanged');
    expect(a.emoji).toHaveLength(7);
    expect(a.emoji).toEqual(b.emoji);
    expect(a.decimals).toHaveLength(3);
    expect(a.decimals).toEqual(b.decimals);
    for (const n of a.decimals!) expect(n).toBeGreaterThanOrEqual(1000);
    expect(a.emoji![0]).toEqual({ symbol: expect.any(String), description: expect.any(String) });

    expect((await alice.machine.getDevice(bob.userId, bob.deviceId))?.isVerified).toBe(false);
    const aliceConfirms = await alice.machine.confirmSas(bob.userId, flowId);
    expect(aliceConfirms.verification.phase).toBe('confirmed');
    await sendAll(alice, aliceConfirms);
    await bob.sync();
    const bobConfirms = await bob.machine.confirmSas(alice.userId, flowId);
    await sendAll(bob, bobConfirms);
    await alice.sync();
    await bob.sync();
    expect(alice.machine.getVerification(bob.userId, flowId)?.phase).toBe('done');
    expect(bob.machine.getVerification(alice.userId, flowId)?.phase).toBe('done');
    expect((await alice.machine.getDevice(bob.userId, bob.deviceId))?.isVerified).toBe(true);
    expect((await bob.machine.getDevice(alice.userId, alice.deviceId))?.isVerified).toBe(true);
  });

  it('a mismatch ends both sides with m.mismatched_sas', async () => {
    const { alice, bob, flowId } = await untilKeysExchanged();
    const cancelled = bob.machine.cancelVerification(alice.userId, flowId, 'm.mismatched_sas');
    expect(cancelled.verification).toMatchObject({ phase: 'cancelled', cancel: { code: 'm.mismatched_sas', byUs: true } });
    await sendAll(bob, cancelled);
    await alice.sync();
    const seen: VerificationInfo | null = alice.machine.getVerification(bob.userId, flowId);
    expect(seen).toMatchObject({ phase: 'cancelled', cancel: { code: 'm.mismatched_sas', byUs: false, reason: expect.any(String) } });
    await expect(alice.machine.confirmSas(bob.userId, flowId)).rejects.toMatchObject({ code: 'InvalidArgument', field: 'flowId' });
    expect((await alice.machine.getDevice(bob.userId, bob.deviceId))?.isVerified).toBe(false);
  });

  it('a user cancellation of a request reaches the other side with m.user', async () => {
    const { alice, bob } = await pair();
    const asked = await alice.machine.requestDeviceVerification(bob.userId, bob.deviceId);
    await sendAll(alice, asked);
    await bob.sync();
    await sendAll(bob, bob.machine.cancelVerification(alice.userId, asked.verification.flowId));
    await alice.sync();
    expect(alice.machine.getVerification(bob.userId, asked.verification.flowId)).toMatchObject({
      phase: 'cancelled',
      cancel: { code: 'm.user', byUs: false },
    });
  });

  it('events and actions for an unknown flow change nothing and name the flow', async () => {
    const { hs, alice, bob } = await pair();
    hs.inbox.set(`${bob.userId}|${bob.deviceId}`, [
      { type: 'm.key.verification.mac', sender: alice.userId, content: { transaction_id: 'nobody-started-this', mac: {}, keys: 'x' } },
    ]);
    const sync = await bob.sync();
    expect(sync.toDeviceEvents).toHaveLength(1);
    expect(bob.machine.getVerification(alice.userId, 'nobody-started-this')).toBeNull();
    expect(bob.machine.getVerifications(alice.userId)).toEqual([]);
    expect(() => bob.machine.acceptVerification(alice.userId, 'nobody-started-this')).toThrow(expect.objectContaining({ code: 'InvalidArgument', field: 'flowId' }));
    await expect(bob.machine.confirmSas(alice.userId, 'nobody-started-this')).rejects.toMatchObject({ code: 'InvalidArgument', field: 'flowId' });
    await expect(alice.machine.requestDeviceVerification(bob.userId, 'NOPE')).rejects.toMatchObject({ code: 'InvalidArgument', field: 'deviceId' });
  });
});
