/**
 * The official WebAssembly bindings as an independent device on the test homeserver: an
 * interop peer built from the same protocol but not from this library.
 */
import * as wasm from '@matrix-org/matrix-sdk-crypto-wasm';
import { randomUUID } from 'node:crypto';
import type { MatrixEvent } from '../../src/index';
import type { TestHomeserver } from '../../src/testing/homeserver';

const TYPES: Record<number, string> = {
  [wasm.RequestType.KeysUpload]: 'keys_upload',
  [wasm.RequestType.KeysQuery]: 'keys_query',
  [wasm.RequestType.KeysClaim]: 'keys_claim',
  [wasm.RequestType.ToDevice]: 'to_device',
  [wasm.RequestType.SignatureUpload]: 'signature_upload',
};

let initialised: Promise<void> | undefined;

export class WasmDevice {
  private constructor(readonly hs: TestHomeserver, readonly machine: wasm.OlmMachine, readonly userId: string, readonly deviceId: string) {}

  static async create(hs: TestHomeserver, userId: string, deviceId: string) {
    initialised ??= wasm.initAsync();
    await initialised;
    hs.changed.set(`${userId}|${deviceId}`, new Set());
    const machine = await wasm.OlmMachine.initialize(new wasm.UserId(userId), new wasm.DeviceId(deviceId));
    const d = new WasmDevice(hs, machine, userId, deviceId);
    await d.flush();
    return d;
  }

  private async sendRaw(r: { id?: string; type: number; body: string; event_type?: string; txn_id?: string }) {
    const type = TYPES[r.type];
    if (!type) throw new Error(`wasm request type ${r.type} not routed`);
    const response = this.hs.handle(this.userId, this.deviceId, {
      type,
      id: r.id ?? r.txn_id!,
      body: r.body,
      eventType: r.event_type,
      txnId: r.txn_id,
    } as never);
    await this.machine.markRequestAsSent(r.id ?? r.txn_id!, r.type, response);
  }

  async flush() {
    for (let round = 0; round < 10; round++) {
      const requests = (await this.machine.outgoingRequests()) as any[];
      if (requests.length === 0) return;
      for (const r of requests) await this.sendRaw(r);
    }
    throw new Error('wasm outgoing requests did not settle');
  }

  async sync() {
    const s = this.hs.syncFor(this.userId, this.deviceId);
    const lists = new wasm.DeviceLists(s.changedDevices.changed.map((u) => new wasm.UserId(u)), []);
    const result = await this.machine.receiveSyncChanges(
      JSON.stringify(s.toDeviceEvents),
      lists,
      new Map(Object.entries(s.oneTimeKeyCounts)),
      new Set(s.unusedFallbackKeys),
    );
    await this.flush();
    return result;
  }

  async sendMessage(roomId: string, members: string[], content: Record<string, unknown>): Promise<MatrixEvent> {
    const users = members.map((m) => new wasm.UserId(m));
    await this.machine.updateTrackedUsers(users);
    await this.flush();
    const claim = (await this.machine.getMissingSessions(members.map((m) => new wasm.UserId(m)))) as any;
    if (claim) await this.sendRaw(claim);
    const shares = (await this.machine.shareRoomKey(
      new wasm.RoomId(roomId),
      members.map((m) => new wasm.UserId(m)),
      new wasm.EncryptionSettings(),
    )) as any[];
    for (const r of shares) await this.sendRaw(r);
    const encrypted = await this.machine.encryptRoomEvent(new wasm.RoomId(roomId), 'm.room.message', JSON.stringify(content));
    return {
      type: 'm.room.encrypted',
      sender: this.userId,
      event_id: `$${randomUUID()}`,
      origin_server_ts: Date.now(),
      room_id: roomId,
      content: JSON.parse(encrypted),
    };
  }

  async decrypt(event: MatrixEvent, roomId: string) {
    const d = await this.machine.decryptRoomEvent(JSON.stringify(event), new wasm.RoomId(roomId), new wasm.DecryptionSettings(wasm.TrustRequirement.Untrusted));
    return JSON.parse(d.event) as MatrixEvent;
  }
}
