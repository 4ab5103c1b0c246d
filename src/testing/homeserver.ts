/**
 * The in-process homeserver behind `matrix-crypto-node/testing`.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { OlmMachine, type StoreOptions } from '../machine';
import type { OutgoingRequest, ToDeviceRequest } from '../requests';
import type { MatrixEvent, ShareSettings } from '../types';

/** Any JSON object (events, request bodies, keys). */
type Json = Record<string, any>;

/** A to-device message the test homeserver delivered. */
export interface SentToDeviceMessage {
  /** Sending user. */
  sender: string;
  /** Sending device. */
  senderDevice: string;
  /** Receiving user. */
  recipient: string;
  /** Receiving device. */
  recipientDevice: string;
  /** Event type, e.g. `m.room.encrypted` or `m.room_key.withheld`. */
  type: string;
  /** Event content. */
  content: Json;
}

/** A request the test homeserver handled. */
export interface LoggedRequest {
  /** `user|device` of the sender. */
  from: string;
  /** The request type. */
  type: string;
  /** The parsed request body. */
  body: Json;
}

const key = (user: string, device: string) => `${user}|${device}`;

/**
 * Holds device keys, one-time keys, fallback keys, cross-signing keys and to-device inboxes,
 * and answers requests as a homeserver would.
 */
export class TestHomeserver {
  /** Device keys by user, then device. */
  readonly deviceKeys = new Map<string, Map<string, Json>>();
  /** Public cross-signing keys by user. */
  readonly crossSigning = new Map<string, Json>();
  /** One-time keys by `user|device`. */
  readonly oneTimeKeys = new Map<string, Map<string, Json>>();
  /** Fallback keys by `user|device`. */
  readonly fallbackKeys = new Map<string, Map<string, Json>>();
  /** Undelivered to-device events by `user|device`. */
  readonly inbox = new Map<string, MatrixEvent[]>();
  /** Users whose device lists changed since each device's last sync. */
  readonly changed = new Map<string, Set<string>>();
  /** Every to-device message sent, for assertions. */
  readonly sent: SentToDeviceMessage[] = [];
  /** Every request handled, in order. */
  readonly requestLog: LoggedRequest[] = [];

  private notifyChanged(user: string) {
    for (const set of this.changed.values()) set.add(user);
  }

  /** Handle one request from `user`/`device`; returns the response body. */
  handle(user: string, device: string, request: OutgoingRequest | { type: 'signing_keys_upload'; id: string; body: string }): string {
    const body = JSON.parse(request.body) as Json;
    this.requestLog.push({ from: key(user, device), type: request.type, body });
    switch (request.type) {
      case 'keys_upload': {
        if (body.device_keys) {
          if (!this.deviceKeys.has(user)) this.deviceKeys.set(user, new Map());
          this.deviceKeys.get(user)!.set(device, body.device_keys);
          this.notifyChanged(user);
        }
        const otks = this.oneTimeKeys.get(key(user, device)) ?? new Map();
        for (const [id, k] of Object.entries(body.one_time_keys ?? {})) {
          if (otks.has(id)) throw new Error(`one-time key ${id} of ${user}/${device} uploaded twice`);
          otks.set(id, k as Json);
        }
        this.oneTimeKeys.set(key(user, device), otks);
        if (body.fallback_keys && Object.keys(body.fallback_keys).length > 0) {
          this.fallbackKeys.set(key(user, device), new Map(Object.entries(body.fallback_keys)));
        }
        return JSON.stringify({ one_time_key_counts: { signed_curve25519: otks.size } });
      }
      case 'keys_query': {
        const out: Json = { device_keys: {}, failures: {}, master_keys: {}, self_signing_keys: {}, user_signing_keys: {} };
        for (const u of Object.keys(body.device_keys ?? {})) {
          out.device_keys[u] = Object.fromEntries(this.deviceKeys.get(u) ?? []);
          const cs = this.crossSigning.get(u);
          if (cs?.master_key) out.master_keys[u] = cs.master_key;
          if (cs?.self_signing_key) out.self_signing_keys[u] = cs.self_signing_key;
          if (cs?.user_signing_key && u === user) out.user_signing_keys[u] = cs.user_signing_key;
        }
        return JSON.stringify(out);
      }
      case 'keys_claim': {
        const out: Json = { one_time_keys: {}, failures: {} };
        for (const [u, devices] of Object.entries(body.one_time_keys ?? {})) {
          for (const [d, algorithm] of Object.entries(devices as Json)) {
            const otks = this.oneTimeKeys.get(key(u, d));
            let claimed: [string, Json] | undefined;
            for (const entry of otks ?? []) {
              if (entry[0].startsWith(`${algorithm}:`)) {
                claimed = entry;
                otks!.delete(entry[0]);
                break;
              }
            }
            if (!claimed) {
              const fb = this.fallbackKeys.get(key(u, d));
              const first = fb ? [...fb.entries()][0] : undefined;
              if (first) claimed = first;
            }
            if (claimed) {
              out.one_time_keys[u] ??= {};
              out.one_time_keys[u][d] = { [claimed[0]]: claimed[1] };
            }
          }
        }
        return JSON.stringify(out);
      }
      case 'to_device': {
        const r = request as ToDeviceRequest;
        for (const [recipient, devices] of Object.entries(body.messages ?? {})) {
          for (const [d, content] of Object.entries(devices as Json)) {
            const targets = d === '*' ? [...(this.deviceKeys.get(recipient)?.keys() ?? [])] : [d];
            for (const t of targets) {
              const k = key(recipient, t);
              if (!this.inbox.has(k)) this.inbox.set(k, []);
              this.inbox.get(k)!.push({ type: r.eventType, sender: user, content: content as Json });
              this.sent.push({ sender: user, senderDevice: device, recipient, recipientDevice: t, type: r.eventType, content: content as Json });
            }
          }
        }
        return '{}';
      }
      case 'signature_upload': {
        for (const [u, keys] of Object.entries(body)) {
          for (const [id, signed] of Object.entries(keys as Json)) {
            const dk = this.deviceKeys.get(u)?.get(id);
            const target = dk ?? Object.values(this.crossSigning.get(u) ?? {}).find((k: any) => Object.values(k.keys ?? {}).includes(id));
            if (!target) continue;
            for (const [signer, sigs] of Object.entries((signed as Json).signatures ?? {})) {
              target.signatures ??= {};
              target.signatures[signer] = { ...(target.signatures[signer] ?? {}), ...(sigs as Json) };
            }
          }
          this.notifyChanged(u);
        }
        return JSON.stringify({ failures: {} });
      }
      case 'signing_keys_upload': {
        this.crossSigning.set(user, { ...(this.crossSigning.get(user) ?? {}), ...body });
        this.notifyChanged(user);
        return '{}';
      }
      default:
        throw new Error(`test homeserver does not handle ${request.type}`);
    }
  }

  /** Drop every one-time key and the fallback key of a device (an exhausted device). */
  exhaustKeys(user: string, device: string) {
    this.oneTimeKeys.set(key(user, device), new Map());
    this.fallbackKeys.delete(key(user, device));
  }

  /** One-time key count the homeserver holds for a device. */
  oneTimeKeyCount(user: string, device: string): number {
    return this.oneTimeKeys.get(key(user, device))?.size ?? 0;
  }

  /** Messages delivered to a device, of an event type. */
  sentTo(user: string, device: string, type?: string) {
    return this.sent.filter((m) => m.recipient === user && m.recipientDevice === device && (!type || m.type === type));
  }

  /** The encryption part of a `/sync` for a device; drains its inbox. */
  syncFor(user: string, device: string) {
    const k = key(user, device);
    if (!this.changed.has(k)) this.changed.set(k, new Set());
    const toDeviceEvents = this.inbox.get(k) ?? [];
    this.inbox.set(k, []);
    const changed = [...this.changed.get(k)!];
    this.changed.get(k)!.clear();
    return {
      /** The to-device events delivered since the last sync. */
      toDeviceEvents,
      /** Device-list changes since the last sync. */
      changedDevices: {
        /** Users whose device keys changed. */
        changed,
        /** Always empty: the test homeserver has no rooms to leave. */
        left: [],
      },
      /** The device's unclaimed one-time keys. */
      oneTimeKeyCounts: {
        /** Unclaimed `signed_curve25519` keys. */
        signed_curve25519: this.oneTimeKeyCount(user, device),
      },
      /** `['signed_curve25519']` while the device has an unused fallback key. */
      unusedFallbackKeys: this.fallbackKeys.has(k) ? ['signed_curve25519'] : [],
    };
  }
}

/** One device of a user, wired to a {@link TestHomeserver}. */
export class TestDevice {
  /** @param hs the homeserver; @param machine the device's machine (tests may replace it to simulate a restart). */
  constructor(
    readonly hs: TestHomeserver,
    public machine: OlmMachine,
  ) {}

  /** Open a machine for `userId`/`deviceId` and upload its keys. */
  static async create(hs: TestHomeserver, userId: string, deviceId: string, store: StoreOptions = { kind: 'memory' }) {
    hs.changed.set(key(userId, deviceId), new Set());
    const d = new TestDevice(hs, await OlmMachine.open({ userId, deviceId, store }));
    await d.flush();
    return d;
  }

  /** The device's user id. */
  get userId() {
    return this.machine.userId;
  }

  /** The device's id. */
  get deviceId() {
    return this.machine.deviceId;
  }

  /** Send one request to the homeserver and mark it sent. */
  async send(request: OutgoingRequest) {
    const response = this.hs.handle(this.userId, this.deviceId, request);
    await this.machine.markRequestAsSent(request, response);
  }

  /** Send every outgoing request until the machine has none left. */
  async flush() {
    for (let round = 0; round < 10; round++) {
      const requests = await this.machine.outgoingRequests();
      if (requests.length === 0) return;
      for (const r of requests) await this.send(r);
    }
    throw new Error('outgoing requests did not settle');
  }

  /** Receive everything the homeserver holds for us, then flush our requests. */
  async sync() {
    const result = await this.machine.receiveSyncChanges(this.hs.syncFor(this.userId, this.deviceId));
    await this.flush();
    return result;
  }

  /** The full send path of a bot: track, query, claim, share, encrypt. Returns the room event. */
  async sendMessage(roomId: string, members: string[], content: Json = { msgtype: 'm.text', body: 'hello' }, settings: ShareSettings = {}) {
    const { requests } = await this.prepareRoom(roomId, members, settings);
    for (const r of requests) await this.send(r);
    return this.encrypt(roomId, content);
  }

  /** Track, query, claim and share; returns the share requests without sending them. */
  async prepareRoom(roomId: string, members: string[], settings: ShareSettings = {}) {
    await this.machine.updateTrackedUsers(members);
    await this.flush();
    const claim = await this.machine.getMissingSessions(members);
    if (claim) await this.send(claim);
    return this.machine.shareRoomKey(roomId, members, settings);
  }

  /** Encrypt a room event and wrap it as the homeserver would deliver it. */
  async encrypt(roomId: string, content: Json = { msgtype: 'm.text', body: 'hello' }, type = 'm.room.message'): Promise<MatrixEvent> {
    const encrypted = await this.machine.encryptRoomEvent(roomId, type, content);
    return {
      type: 'm.room.encrypted',
      sender: this.userId,
      event_id: `$${randomUUID()}`,
      origin_server_ts: Date.now(),
      room_id: roomId,
      content: encrypted,
    };
  }
}
