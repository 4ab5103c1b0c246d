/**
 * The implementations raced in one run, behind one small interface so every one goes through
 * exactly the same scenario: this library, the official WebAssembly bindings and, when it is
 * installed, the official Node bindings.
 */
import * as wasm from '@matrix-org/matrix-sdk-crypto-wasm';
import { OlmMachine, type StoreOptions } from '../src/index';

/**
 * `sqlite`: our engine (for the official bindings: their SQLite store, the crate's);
 * `sqlite-crate`: the crate's matrix-sdk-sqlite store; `postgres`: our engine on the server
 * named by MCN_BENCH_POSTGRES (the driver starts one); `memory`: the crate's memory store.
 */
export type StoreKind = 'memory' | 'sqlite' | 'sqlite-crate' | 'postgres';

function storeOptions(store: StoreKind, path: string): StoreOptions {
  switch (store) {
    case 'memory':
      return { kind: 'memory' };
    case 'postgres': {
      const url = process.env.MCN_BENCH_POSTGRES;
      if (!url) throw new Error('the postgres store needs MCN_BENCH_POSTGRES');
      return { kind: 'postgres', url };
    }
    default:
      return { kind: store, path };
  }
}
export type Trust = 'verified' | 'blacklisted' | 'unset';

/** A request whose response the scenario builds and hands back. */
export interface Pending {
  users: string[];
  send(response: string): Promise<void>;
}

/** What a share produced: the bodies to count and a way to mark them sent afterwards. */
export interface ShareOutput {
  requests: { eventType: string; body: string }[];
  markSent(): Promise<void>;
}

export interface BenchMachine {
  /** Upload our keys; returns our device-keys and one-time-key fragments. */
  uploadKeys(): Promise<{ deviceKeys: string; oneTimeKeys: string }>;
  trackUsers(users: string[]): Promise<void>;
  keyQueries(): Promise<Pending[]>;
  missingSessions(users: string[]): Promise<Pending | null>;
  share(roomId: string, users: string[], strategy: 'all' | 'trusted'): Promise<ShareOutput>;
  /** Rotate the room's Megolm session; returns the room to share in next. */
  rotate(roomId: string): Promise<string>;
  encrypt(roomId: string, content: object): Promise<object>;
  receiveToDevice(events: object[]): Promise<void>;
  /** Returns the decrypted event as JSON text. */
  decrypt(event: object, roomId: string): Promise<string>;
  setTrust(userId: string, deviceId: string, trust: Trust): Promise<void>;
  close(): Promise<void>;
}

export interface BenchImpl {
  name: 'matrix-crypto-node' | 'wasm' | 'official-node';
  stores: StoreKind[];
  /** Why the withheld phase cannot run, if it cannot (no local trust in the API). */
  noTrust?: string;
  open(store: StoreKind, path: string, userId: string, deviceId: string): Promise<BenchMachine>;
}

/** Fragments of our own keys from a keys/upload body. */
function uploadFragments(body: string, deviceId: string): { deviceKeys: string; oneTimeKeys: string; count: number } {
  const parsed = JSON.parse(body) as { device_keys: object; one_time_keys: Record<string, object> };
  const [id, key] = Object.entries(parsed.one_time_keys)[0]!;
  return {
    deviceKeys: JSON.stringify({ [deviceId]: parsed.device_keys }),
    oneTimeKeys: JSON.stringify({ [deviceId]: { [id]: key } }),
    count: Object.keys(parsed.one_time_keys).length,
  };
}

const usersOf = (body: string, field: 'device_keys' | 'one_time_keys') => Object.keys((JSON.parse(body) as Record<string, object>)[field] ?? {});

export const matrixCryptoNode: BenchImpl = {
  name: 'matrix-crypto-node',
  stores: ['memory', 'sqlite', 'sqlite-crate', 'postgres'],
  async open(store, path, userId, deviceId) {
    const options = storeOptions(store, path);
    // Every repetition starts from a new account, as the SQLite runs start from a new folder.
    if (options.kind === 'postgres') await OlmMachine.deleteAccount(options, userId, deviceId);
    const m = await OlmMachine.open({ userId, deviceId, store: options });
    return {
      async uploadKeys() {
        const upload = (await m.outgoingRequests()).find((r) => r.type === 'keys_upload');
        if (!upload) throw new Error('no keys to upload');
        const f = uploadFragments(upload.body, deviceId);
        await m.markRequestAsSent(upload, { one_time_key_counts: { signed_curve25519: f.count } });
        return f;
      },
      trackUsers: (users) => m.updateTrackedUsers(users),
      async keyQueries() {
        return (await m.outgoingRequests())
          .filter((r) => r.type === 'keys_query')
          .map((r) => ({ users: usersOf(r.body, 'device_keys'), send: (response: string) => m.markRequestAsSent(r, response) }));
      },
      async missingSessions(users) {
        const r = await m.getMissingSessions(users);
        return r && { users: usersOf(r.body, 'one_time_keys'), send: (response: string) => m.markRequestAsSent(r, response) };
      },
      async share(roomId, users, strategy) {
        const result = await m.shareRoomKey(roomId, users, { sharingStrategy: strategy === 'all' ? 'all_devices' : 'only_trusted_devices' });
        return {
          requests: result.requests.map((r) => ({ eventType: r.eventType, body: r.body })),
          markSent: async () => {
            for (const r of result.requests) await m.markRequestAsSent(r, '{}');
          },
        };
      },
      async rotate(roomId) {
        await m.discardRoomKey(roomId);
        return roomId;
      },
      encrypt: (roomId, content) => m.encryptRoomEvent(roomId, 'm.room.message', content as Record<string, unknown>),
      async receiveToDevice(events) {
        await m.receiveSyncChanges({ toDeviceEvents: events as never });
      },
      async decrypt(event, roomId) {
        return JSON.stringify((await m.decryptRoomEvent(event as never, roomId)).event);
      },
      setTrust: (userId, device, trust) => m.setLocalTrust(userId, device, trust),
      close: () => m.close(),
    };
  },
};

let wasmReady: Promise<void> | undefined;

export const wasmBindings: BenchImpl = {
  name: 'wasm',
  // In Node the WebAssembly bindings have no persistent store (IndexedDB only in browsers).
  stores: ['memory'],
  async open(_store, _path, userId, deviceId) {
    wasmReady ??= wasm.initAsync();
    await wasmReady;
    const m = await wasm.OlmMachine.initialize(new wasm.UserId(userId), new wasm.DeviceId(deviceId));
    const requests = async () => (await m.outgoingRequests()) as { id: string; type: number; body: string }[];
    const uids = (users: string[]) => users.map((u) => new wasm.UserId(u));
    return {
      async uploadKeys() {
        const upload = (await requests()).find((r) => r.type === wasm.RequestType.KeysUpload);
        if (!upload) throw new Error('no keys to upload');
        const f = uploadFragments(upload.body, deviceId);
        await m.markRequestAsSent(upload.id, upload.type, JSON.stringify({ one_time_key_counts: { signed_curve25519: f.count } }));
        return f;
      },
      trackUsers: (users) => m.updateTrackedUsers(uids(users)),
      async keyQueries() {
        return (await requests())
          .filter((r) => r.type === wasm.RequestType.KeysQuery)
          .map((r) => ({ users: usersOf(r.body, 'device_keys'), send: async (response: string) => void (await m.markRequestAsSent(r.id, r.type, response)) }));
      },
      async missingSessions(users) {
        const r = (await m.getMissingSessions(uids(users))) as { id: string; type: number; body: string } | undefined;
        return r ? { users: usersOf(r.body, 'one_time_keys'), send: async (response: string) => void (await m.markRequestAsSent(r.id, r.type, response)) } : null;
      },
      async share(roomId, users, strategy) {
        const settings = new wasm.EncryptionSettings();
        settings.sharingStrategy = strategy === 'all' ? wasm.CollectStrategy.allDevices() : wasm.CollectStrategy.onlyTrustedDevices();
        const out = (await m.shareRoomKey(new wasm.RoomId(roomId), uids(users), settings)) as { id: string; type: number; event_type: string; body: string }[];
        return {
          requests: out.map((r) => ({ eventType: r.event_type, body: r.body })),
          markSent: async () => {
            for (const r of out) await m.markRequestAsSent(r.id, r.type, '{}');
          },
        };
      },
      async rotate(roomId) {
        await m.invalidateGroupSession(new wasm.RoomId(roomId));
        return roomId;
      },
      async encrypt(roomId, content) {
        return JSON.parse(await m.encryptRoomEvent(new wasm.RoomId(roomId), 'm.room.message', JSON.stringify(content))) as object;
      },
      async receiveToDevice(events) {
        await m.receiveSyncChanges(JSON.stringify(events), new wasm.DeviceLists(), new Map(), new Set());
      },
      async decrypt(event, roomId) {
        const settings = new wasm.DecryptionSettings(wasm.TrustRequirement.Untrusted);
        return (await m.decryptRoomEvent(JSON.stringify(event), new wasm.RoomId(roomId), settings)).event;
      },
      async setTrust(userId, device, trust) {
        const d = await m.getDevice(new wasm.UserId(userId), new wasm.DeviceId(device));
        if (!d) throw new Error(`unknown device ${userId} ${device}`);
        const level = trust === 'verified' ? wasm.LocalTrust.Verified : trust === 'blacklisted' ? wasm.LocalTrust.BlackListed : wasm.LocalTrust.Unset;
        await d.setLocalTrust(level);
      },
      async close() {
        m.close();
      },
    };
  },
};

/**
 * The official Node bindings, if they are installed and load on this Node version; otherwise
 * the reason they are skipped. This project does not depend on them (their install downloads a
 * prebuilt binary); the 0.4.0 that matrix-appservice-bridge's bot-sdk brings into node_modules
 * has no binary unless npm ran its install script, and is then reported as not loading.
 */
export function officialNode(): BenchImpl | string {
  let sdk: any;
  try {
    sdk = require('@matrix-org/matrix-sdk-crypto-nodejs');
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND';
    return missing
      ? '@matrix-org/matrix-sdk-crypto-nodejs is not installed (its install downloads a prebuilt binary; install it to include it)'
      : `@matrix-org/matrix-sdk-crypto-nodejs does not load here: ${(err as Error).message.split('\n')[0]}`;
  }
  // Numeric values of its `const enum`s (RequestType, StoreType, CollectStrategy), from its index.d.ts.
  const KEYS_UPLOAD = 0;
  const KEYS_QUERY = 1;
  const KEYS_CLAIM = 2;
  const TO_DEVICE = 3;
  const SQLITE = 0;
  const ALL_DEVICES = 0;
  return {
    name: 'official-node',
    stores: ['memory', 'sqlite'],
    noTrust: 'its API has no way to set local device trust (verify or blacklist a device)',
    async open(store, path, userId, deviceId) {
      const m = await sdk.OlmMachine.initialize(
        new sdk.UserId(userId),
        new sdk.DeviceId(deviceId),
        store === 'sqlite' ? path : undefined,
        undefined,
        store === 'sqlite' ? SQLITE : undefined,
      );
      const requests = async () => (await m.outgoingRequests()) as { id: string; type: number; body: string }[];
      const uids = (users: string[]) => users.map((u) => new sdk.UserId(u));
      return {
        async uploadKeys() {
          const upload = (await requests()).find((r) => r.type === KEYS_UPLOAD);
          if (!upload) throw new Error('no keys to upload');
          const f = uploadFragments(upload.body, deviceId);
          await m.markRequestAsSent(upload.id, KEYS_UPLOAD, JSON.stringify({ one_time_key_counts: { signed_curve25519: f.count } }));
          return f;
        },
        trackUsers: (users: string[]) => m.updateTrackedUsers(uids(users)),
        async keyQueries() {
          return (await requests())
            .filter((r) => r.type === KEYS_QUERY)
            .map((r) => ({ users: usersOf(r.body, 'device_keys'), send: async (response: string) => void (await m.markRequestAsSent(r.id, KEYS_QUERY, response)) }));
        },
        async missingSessions(users: string[]) {
          const r = await m.getMissingSessions(uids(users));
          return r ? { users: usersOf(r.body, 'one_time_keys'), send: async (response: string) => void (await m.markRequestAsSent(r.id, KEYS_CLAIM, response)) } : null;
        },
        async share(roomId: string, users: string[]) {
          const settings = new sdk.EncryptionSettings();
          settings.sharingStrategy = ALL_DEVICES;
          const out = (await m.shareRoomKey(new sdk.RoomId(roomId), uids(users), settings)) as { id: string; eventType: string; body: string }[];
          return {
            requests: out.map((r) => ({ eventType: r.eventType, body: r.body })),
            markSent: async () => {
              for (const r of out) await m.markRequestAsSent(r.id, TO_DEVICE, '{}');
            },
          };
        },
        // It cannot discard a room key: a new room gets a new session, which is what rotation does.
        async rotate(roomId: string) {
          return roomId.replace('!', '!rotated-');
        },
        async encrypt(roomId: string, content: object) {
          return JSON.parse(await m.encryptRoomEvent(new sdk.RoomId(roomId), 'm.room.message', JSON.stringify(content))) as object;
        },
        async receiveToDevice(events: object[]) {
          await m.receiveSyncChanges(JSON.stringify(events), new sdk.DeviceLists(), {}, []);
        },
        async decrypt(event: object, roomId: string) {
          return (await m.decryptRoomEvent(JSON.stringify(event), new sdk.RoomId(roomId))).event as string;
        },
        async setTrust() {
          throw new Error('the official Node bindings cannot set local trust');
        },
        async close() {
          m.close();
        },
      };
    },
  };
}
