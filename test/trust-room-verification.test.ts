// In-room verification and QR codes between two machines: the room is simulated by turning each
// `room_message` request into the event the homeserver would deliver to the other side.
import { describe, expect, it } from 'vitest';
import type { RoomMessageRequest } from '../src/requests';
import type { VerificationStep } from '../src/trust';
import { EncryptedClient } from '../src/client';
import { HomeserverTransport } from '../src/transport';
import type { TestDevice } from '../src/testing/homeserver';
import { pair } from './helpers/cross-signed-pair';

const ROOM = '!dm:example.org';


let counter = 0;

/** The room event `from` sending `type`/`content` would produce. */
function roomEvent(from: TestDevice, type: string, content: Record<string, unknown>) {
  return { type, content, sender: from.userId, event_id: `$event${++counter}`, origin_server_ts: Date.now() };
}

/**
 * Delivers a step's room messages from `from` to `to` and marks them sent; other requests
 * (signature uploads) go to the homeserver.
 */
async function deliver(from: TestDevice, to: TestDevice, step: Pick<VerificationStep, 'requests'>): Promise<void> {
  for (const r of step.requests) {
    if (r.type !== 'room_message') {
      await from.send(r);
      continue;
    }
    const m = r as RoomMessageRequest;
    expect(m.roomId).toBe(ROOM);
    const event = roomEvent(from, m.eventType, JSON.parse(m.body) as Record<string, unknown>);
    await from.machine.markRequestAsSent(m, JSON.stringify({ event_id: event.event_id }));
    await to.machine.receiveRoomVerificationEvent(ROOM, event);
  }
}

/** Delivers what each machine queued on its own (answers to received events), both ways, until quiet. */
async function settle(a: TestDevice, b: TestDevice): Promise<void> {
  for (let round = 0; round < 6; round++) {
    let moved = false;
    for (const [from, to] of [[a, b], [b, a]] as const) {
      const queued = (await from.machine.outgoingRequests()).filter((r) => r.type === 'room_message' || r.type === 'signature_upload');
      if (queued.length) moved = true;
      await deliver(from, to, { requests: queued as VerificationStep['requests'] });
    }
    if (!moved) return;
  }
}

/** Alice asks Bob in the room with `methods`; Bob accepts with `bobMethods`; both are ready. */
async function ready(methods: Parameters<TestDevice['machine']['verificationRequestContent']>[1], bobMethods = methods) {
  const { alice, bob } = await pair();
  const content = await alice.machine.verificationRequestContent(bob.userId, methods);
  expect(content).toMatchObject({ msgtype: 'm.key.verification.request', to: bob.userId, from_device: alice.deviceId });
  const request = roomEvent(alice, 'm.room.message', content);
  const asked = await alice.machine.requestVerificationInRoom(bob.userId, ROOM, request.event_id, methods);
  expect(asked).toMatchObject({ flowId: request.event_id, roomId: ROOM, phase: 'created', weStarted: true });
  const flowId = asked.flowId;
  expect(await bob.machine.receiveRoomVerificationEvent(ROOM, request)).toMatchObject({ flowId, roomId: ROOM, phase: 'requested', weStarted: false });
  await deliver(bob, alice, bob.machine.acceptVerification(alice.userId, flowId, bobMethods));
  expect(alice.machine.getVerification(bob.userId, flowId)?.phase).toBe('ready');
  return { alice, bob, flowId };
}

/** Whether `me` sees `other`'s identity verified, once the signature came back from the homeserver. */
async function identityVerified(me: TestDevice, other: TestDevice): Promise<boolean | undefined> {
  await me.sync();
  return (await me.machine.getUserIdentity(other.userId))?.isVerified;
}

describe('in-room verification between two machines', () => {
  it('SAS in a room: answers come out as room messages relating to the request, and each side verifies the other user', async () => {
    const { alice, bob, flowId } = await ready(['sas']);
    const started = await alice.machine.startSas(bob.userId, flowId);
    const start = started.requests[0] as RoomMessageRequest;
    expect(start).toMatchObject({ type: 'room_message', roomId: ROOM, eventType: 'm.key.verification.start' });
    expect(JSON.parse(start.body)['m.relates_to']).toEqual({ rel_type: 'm.reference', event_id: flowId });
    await deliver(alice, bob, started);
    await deliver(bob, alice, await bob.machine.startSas(alice.userId, flowId));
    await settle(alice, bob);
    const a = alice.machine.getVerification(bob.userId, flowId)!;
    const b = bob.machine.getVerification(alice.userId, flowId)!;
    expect(a.phase).toBe('keys_exchanged');
    expect(a.emoji).toEqual(b.emoji);
    await deliver(alice, bob, await alice.machine.confirmSas(bob.userId, flowId));
    await deliver(bob, alice, await bob.machine.confirmSas(alice.userId, flowId));
    await settle(alice, bob);
    expect(alice.machine.getVerification(bob.userId, flowId)?.phase).toBe('done');
    expect(bob.machine.getVerification(alice.userId, flowId)?.phase).toBe('done');
    expect(await identityVerified(alice, bob)).toBe(true);
    expect(await identityVerified(bob, alice)).toBe(true);
  });

  it('QR: Alice shows, Bob scans and reciprocates, Alice confirms the scan; both verified', async () => {
    const { alice, bob, flowId } = await ready(['sas', 'qr_show'], ['sas', 'qr_scan']);
    // Bob did not offer qr_show, so Bob cannot show one.
    await expect(bob.machine.showQrCode(alice.userId, flowId)).rejects.toMatchObject({ code: 'InvalidArgument', field: 'flowId' });
    const qr = await alice.machine.showQrCode(bob.userId, flowId);
    expect(qr.verification.phase).toBe('qr_shown');
    // The spec's layout: "MATRIX", version 2, mode 0 (verifying another user), the flow id.
    expect(new TextDecoder().decode(qr.bytes.subarray(0, 6))).toBe('MATRIX');
    expect([qr.bytes[6], qr.bytes[7]]).toEqual([0x02, 0x00]);
    await expect(bob.machine.scanQrCode(alice.userId, flowId, Uint8Array.from([1, 2, 3]))).rejects.toMatchObject({ code: 'InvalidArgument', field: 'qrCode' });
    expect(bob.machine.getVerification(alice.userId, flowId)?.phase).toBe('ready');
    const scanned = await bob.machine.scanQrCode(alice.userId, flowId, qr.bytes);
    expect(scanned.verification.phase).toBe('reciprocated');
    expect(JSON.parse((scanned.requests[0] as RoomMessageRequest).body)).toMatchObject({ method: 'm.reciprocate.v1' });
    await deliver(bob, alice, scanned);
    expect(alice.machine.getVerification(bob.userId, flowId)?.phase).toBe('qr_scanned');
    await deliver(alice, bob, alice.machine.confirmQrScan(bob.userId, flowId));
    await settle(alice, bob);
    expect(alice.machine.getVerification(bob.userId, flowId)?.phase).toBe('done');
    expect(bob.machine.getVerification(alice.userId, flowId)?.phase).toBe('done');
    expect(await identityVerified(alice, bob)).toBe(true);
    expect(await identityVerified(bob, alice)).toBe(true);
  });

  it('a QR code with a changed key is refused and leaves the flow as it was', async () => {
    const { alice, bob, flowId } = await ready(['qr_show'], ['qr_scan']);
    const qr = await alice.machine.showQrCode(bob.userId, flowId);
    const forged = Uint8Array.from(qr.bytes);
    // The first key (Alice's master key) follows the header, the flow id length and the flow id.
    const keyAt = 10 + ((forged[8]! << 8) | forged[9]!);
    forged[keyAt] = forged[keyAt]! ^ 0xff;
    await expect(bob.machine.scanQrCode(alice.userId, flowId, forged)).rejects.toMatchObject({ code: 'InvalidArgument', field: 'qrCode' });
    expect(bob.machine.getVerification(alice.userId, flowId)?.phase).toBe('ready');
    expect(await identityVerified(bob, alice)).toBe(false);
    expect((await bob.machine.scanQrCode(alice.userId, flowId, qr.bytes)).verification.phase).toBe('reciprocated');
  });

  it('room events for an unknown flow, malformed ones and unrelated ones change nothing', async () => {
    const { alice, bob } = await pair();
    const unknown = roomEvent(alice, 'm.key.verification.start', {
      from_device: alice.deviceId,
      method: 'm.sas.v1',
      'm.relates_to': { rel_type: 'm.reference', event_id: '$nobody-requested-this' },
    });
    expect(await bob.machine.receiveRoomVerificationEvent(ROOM, unknown)).toBeNull();
    expect(bob.machine.getVerification(alice.userId, '$nobody-requested-this')).toBeNull();
    const malformed = roomEvent(alice, 'm.room.message', { msgtype: 'm.key.verification.request', to: 42 });
    expect(await bob.machine.receiveRoomVerificationEvent(ROOM, malformed)).toBeNull();
    expect(await bob.machine.receiveRoomVerificationEvent(ROOM, roomEvent(alice, 'm.room.message', { msgtype: 'm.text', body: 'hi' }))).toBeNull();
    expect(bob.machine.getVerifications(alice.userId)).toEqual([]);
    await expect(bob.machine.receiveRoomVerificationEvent(ROOM, '[1]')).rejects.toMatchObject({ code: 'InvalidArgument', field: 'event' });
    await expect(bob.machine.receiveRoomVerificationEvent('not a room', unknown)).rejects.toMatchObject({ code: 'InvalidArgument', field: 'roomId' });
    // In-room verification verifies a user: our own user and a user without an identity are refused.
    await expect(alice.machine.verificationRequestContent(alice.userId)).rejects.toMatchObject({ code: 'InvalidArgument', field: 'userId' });
    await expect(alice.machine.verificationRequestContent('@stranger:example.org')).rejects.toMatchObject({ code: 'InvalidArgument', field: 'userId' });
  });

  it('the client policy names a bad method list', async () => {
    const { alice } = await pair();
    const transport = new HomeserverTransport({ baseUrl: 'http://127.0.0.1:1', accessToken: 't' });
    const make = (methods: unknown) => new EncryptedClient({ machine: alice.machine, transport, verification: { methods: methods as never } });
    expect(() => make(['qr'])).toThrow(/^verification\.methods: must be a non-empty array of 'sas', 'qr_show', 'qr_scan'$/);
    expect(() => make([])).toThrow(/verification\.methods/);
    expect(() => make(['sas', 'qr_show'])).not.toThrow();
    await expect(alice.machine.verificationRequestContent('@bob:example.org', [])).rejects.toMatchObject({ code: 'InvalidArgument', field: 'methods' });
  });
});
