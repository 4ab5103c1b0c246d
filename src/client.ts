/**
 * {@link EncryptedClient}: an {@link OlmMachine} wired to a {@link HomeserverTransport}, for bots
 * that talk to a real homeserver.
 *
 * It runs the steps every encrypted bot repeats: send the machine's outgoing requests and mark
 * them sent, feed each `/sync` to the machine, and before sending in a room, track its members,
 * query their devices, claim one-time keys and share the room key. Everything else (which rooms
 * to join, persisting the sync token, what to do with messages) stays with the application, which
 * can reach the machine and the transport directly.
 *
 * ```ts
 * const client = await EncryptedClient.open({
 *   baseUrl: 'https://matrix.example.org',
 *   accessToken,
 *   store: { kind: 'sqlite', path: './crypto-store' },
 * });
 * for (;;) {
 *   const { timeline } = await client.syncOnce({ timeoutMs: 30_000 });
 *   for (const item of timeline) {
 *     if (item.kind === 'decrypted' && item.decrypted.event.content.body === '!ping') {
 *       await client.sendEncrypted(item.roomId, 'm.room.message', { msgtype: 'm.text', body: 'pong' });
 *     }
 *   }
 * }
 * ```
 *
 * @module
 */

import { SerialQueues } from './queues';
import { DecryptionError, MatrixCryptoError } from './errors';
import { machineRecorder, OlmMachine, type ShareResult, type StoreOptions } from './machine';
import { internalMetrics, mergeSnapshots, recorderFor, type MetricsOptions, type MetricsSnapshot } from './metrics/recorder';
import type { OutgoingRequest, RoomMessageRequest } from './requests';
import {
  HomeserverTransport,
  toSyncChanges,
  transportRecorder,
  type HomeserverTransportOptions,
  type RoomEvent,
  type SyncResponse,
} from './transport';
import type { DecryptedRoomEvent, ShareSettings, SyncResult } from './types';
import type { WithheldPolicy } from './withheld';
import { setUpCrossSigning, type CrossSigningOptions, type CrossSigningSetup } from './trust/cross-signing';
import {
  VerificationTracker,
  roomVerificationFlowOf,
  verificationFlowOf,
  type VerificationCancelCode,
  type VerificationInfo,
  type VerificationPolicy,
  type VerificationQrCode,
  type VerificationStep,
} from './trust/verification';
import {
  recover,
  resumeBackup,
  setUpRecovery,
  type RecoverOptions,
  type RecoveryResult,
  type RecoverySetup,
  type RecoverySetupOptions,
} from './trust/recovery';

/** Options of {@link EncryptedClient.open}. */
export interface EncryptedClientOpenOptions {
  /** The homeserver's client-server API base URL, e.g. `https://matrix.example.org`. */
  baseUrl: string;
  /** The access token of the device. */
  accessToken: string;
  /** Our user id; asked from the homeserver (`whoami`) when omitted. */
  userId?: string;
  /** Our device id; asked from the homeserver (`whoami`) when omitted. */
  deviceId?: string;
  /** Where the machine keeps its keys. Use the same store on every start of the same device. */
  store: StoreOptions;
  /** The machine's withheld policy; default: every code, with default reasons. */
  withheld?: WithheldPolicy;
  /** Further transport options (retries, back-off, a custom `fetch`, ...). */
  transport?: Omit<HomeserverTransportOptions, 'baseUrl' | 'accessToken' | 'metrics'>;
  /** See {@link EncryptedClientOptions.shareSettings}. */
  shareSettings?: ShareSettings;
  /** See {@link EncryptedClientOptions.syncToken}. */
  syncToken?: string;
  /**
   * Make this device cross-signed on open (see {@link EncryptedClient.setUpCrossSigning}), e.g.
   * `{ bootstrap: 'if-missing', auth: { type: 'password', password } }`. With `recoveryKey`, a
   * device that lacks the account's cross-signing keys recovers them (and the backup) from
   * secret storage first ({@link EncryptedClient.recover}). Default: nothing is done.
   */
  crossSigning?: CrossSigningOptions & {
    /** The recovery key (or passphrase) of the account's secret storage. */
    recoveryKey?: string;
    /** Progress of the room-key restore during recovery. */
    onProgress?: RecoverOptions['onProgress'];
  };
  /** See {@link EncryptedClientOptions.verification}. */
  verification?: VerificationPolicy;
  /**
   * Metrics of the machine and the transport: `{ registry }` to register them in a prom-client
   * `Registry` (shared with everything else opened with it). Either way
   * {@link EncryptedClient.metrics} returns the figures; see docs/metrics.md.
   */
  metrics?: MetricsOptions;
}

/** Options of the {@link EncryptedClient} constructor. */
export interface EncryptedClientOptions {
  /** The machine of this device. */
  machine: OlmMachine;
  /** A transport authenticated as the same device. */
  transport: HomeserverTransport;
  /**
   * Default settings of every room-key share ({@link EncryptedClient.prepareRoomForSending});
   * per-call settings override them field by field. Default: the machine's defaults
   * (all devices that are not blacklisted).
   */
  shareSettings?: ShareSettings;
  /**
   * The `next_batch` token to continue syncing from, as saved from {@link EncryptedClient.syncToken}
   * before a restart. Default: none (an initial sync).
   */
  syncToken?: string;
  /**
   * How verification requests are answered without the application (see
   * {@link VerificationPolicy}). Default: nothing is automatic; every flow is reported with
   * {@link EncryptedClient.on} and waits.
   */
  verification?: VerificationPolicy;
}

/** Options of {@link EncryptedClient.syncOnce}. */
export interface SyncOnceOptions {
  /** How long the homeserver may hold the request waiting for events, in milliseconds. Default 30 000. */
  timeoutMs?: number;
  /** A filter id or an inline filter, passed to the sync call. */
  filter?: string | Record<string, unknown>;
  /** Aborts the sync. */
  signal?: AbortSignal;
}

/** A room timeline event from a sync, decrypted when it was encrypted; switch on `kind`. */
export type TimelineEvent =
  | {
      /** The event was not encrypted. */
      kind: 'plaintext';
      /** The room it belongs to. */
      roomId: string;
      /** The event as the homeserver sent it. */
      event: RoomEvent;
    }
  | {
      /** The event was encrypted and is now decrypted. */
      kind: 'decrypted';
      /** The room it belongs to. */
      roomId: string;
      /** The `m.room.encrypted` event as the homeserver sent it. */
      event: RoomEvent;
      /** The decrypted event and what is known about its sender. */
      decrypted: DecryptedRoomEvent;
    }
  | {
      /** The event was encrypted and could not be decrypted (yet). */
      kind: 'undecryptable';
      /** The room it belongs to. */
      roomId: string;
      /** The `m.room.encrypted` event as the homeserver sent it. */
      event: RoomEvent;
      /** Why: a missing key, a withheld key, a bad ciphertext, ... */
      error: DecryptionError;
    };

/** What {@link EncryptedClient.syncOnce} returns. */
export interface SyncOnceResult {
  /** The raw sync response, for everything the client does not interpret (state, invites, ...). */
  sync: SyncResponse;
  /** What the machine made of the sync's to-device events and key counts. */
  changes: SyncResult;
  /** The timeline events of every joined room in the sync, in order, decrypted where possible. */
  timeline: TimelineEvent[];
}

/** What {@link EncryptedClient.sendEncrypted} returns. */
export interface SendEncryptedResult {
  /** The id of the `m.room.encrypted` event in the room. */
  eventId: string;
  /** The room-key share that preceded the event (who got the key, who got a withheld notice). */
  share: ShareResult;
}

/** Options of {@link EncryptedClient.sendEncrypted}. */
export interface SendEncryptedOptions {
  /** The transaction id of the send; generated when omitted. Reuse it to retry a send without duplicating it. */
  txnId?: string;
  /** Share settings for this send, over the client's defaults. */
  shareSettings?: ShareSettings;
}

/** Waits for every promise, then rejects with the first failure if any (no send is left running). */
async function settleAll(promises: Promise<void>[]): Promise<void> {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/**
 * One device's encrypted conversation with a homeserver: an {@link OlmMachine} plus a
 * {@link HomeserverTransport}, and the request/sync/share loop between them.
 *
 * Methods may run concurrently (a sync while a message is being sent). The client runs one at a
 * time what must not overlap: draining the machine's outgoing requests (the machine hands out a
 * fresh key upload or key query on every call, so two overlapping drains would send both),
 * one-time-key claims (two claims would spend two keys per device), and room-key shares of the
 * same room.
 */
export class EncryptedClient {
  /** The machine; use it directly for anything the client does not wrap (trust, key export, ...). */
  readonly machine: OlmMachine;
  /** The transport; use it directly for room management (`createRoom`, `joinRoom`, `roomMessages`, ...). */
  readonly transport: HomeserverTransport;
  private readonly shareSettings: ShareSettings;
  private since: string | undefined;
  /** The tail of each queue of tasks that must not overlap, by queue name. */
  private readonly queues = new SerialQueues();

  /** Wraps an open machine and a transport of the same device; makes no request. */
  constructor(options: EncryptedClientOptions) {
    this.machine = options.machine;
    this.transport = options.transport;
    this.shareSettings = options.shareSettings ?? {};
    this.since = options.syncToken;
    const policy = options.verification ?? {};
    if (policy.acceptFrom !== undefined && !(Array.isArray(policy.acceptFrom) && policy.acceptFrom.every((u) => typeof u === 'string'))) {
      throw new TypeError('verification.acceptFrom: must be an array of user ids');
    }
    const kinds = ['sas', 'qr_show', 'qr_scan'];
    if (policy.methods !== undefined && !(Array.isArray(policy.methods) && policy.methods.length > 0 && policy.methods.every((m) => kinds.includes(m)))) {
      throw new TypeError(`verification.methods: must be a non-empty array of ${kinds.map((k) => `'${k}'`).join(', ')}`);
    }
    this.verificationPolicy = {
      acceptFrom: [...(policy.acceptFrom ?? [])],
      autoConfirmSas: policy.autoConfirmSas === true,
      methods: [...(policy.methods ?? ['sas'])],
      autoConfirmQrScan: policy.autoConfirmQrScan === true,
    };
  }

  private readonly verificationPolicy: Required<VerificationPolicy>;
  private readonly verifications = new VerificationTracker();

  /**
   * Subscribes to verification flows: the listener gets a flow's state each time its phase
   * changes (a request arrived, the SAS is ready to compare, done, cancelled with a reason, ...),
   * as syncs and actions move it. Returns a function that unsubscribes.
   *
   * @example Verify whoever asks, comparing the emoji in the log
   * ```ts
   * client.on('verification', async (v) => {
   *   if (v.phase === 'requested') await client.acceptVerification(v.otherUserId, v.flowId);
   *   if (v.phase === 'keys_exchanged') console.log(v.emoji?.map((e) => e.symbol).join(' '));
   * });
   * ```
   */
  on(event: 'verification', listener: (verification: VerificationInfo) => void): () => void {
    if (event !== 'verification') throw new TypeError(`EncryptedClient.on: unknown event ${String(event)}; only 'verification'`);
    if (typeof listener !== 'function') throw new TypeError('EncryptedClient.on: listener must be a function');
    return this.verifications.listen(listener);
  }

  /**
   * Asks a device (another of ours, or another user's) to verify with us over to-device
   * messages, offering the policy's `methods`; resolves in phase `created`.
   */
  async requestVerification(userId: string, deviceId: string): Promise<VerificationInfo> {
    return this.verificationStep(await this.machine.requestDeviceVerification(userId, deviceId, this.verificationPolicy.methods));
  }

  /**
   * Asks a user to verify with us in a room we share with them (usually a DM): sends the
   * request as an `m.room.message` (encrypted in an encrypted room) and resolves in phase
   * `created`, the request's event id being the flow id. This verifies the user's identity
   * (their cross-signing master key), so both users need cross-signing identities.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming `userId` when the user has no cross-signing identity.
   */
  async requestVerificationInRoom(roomId: string, userId: string): Promise<VerificationInfo> {
    const { methods } = this.verificationPolicy;
    await this.machine.updateTrackedUsers([userId]);
    await this.processOutgoingRequests();
    const content = await this.machine.verificationRequestContent(userId, methods);
    const eventId = await this.sendRoomContent(roomId, 'm.room.message', content);
    const v = await this.machine.requestVerificationInRoom(userId, roomId, eventId, methods);
    this.verifications.track(v.otherUserId, v.flowId);
    await this.driveVerifications();
    return this.machine.getVerification(v.otherUserId, v.flowId) ?? v;
  }

  /** Accepts a verification request (phase `requested`), offering the policy's `methods`. */
  async acceptVerification(userId: string, flowId: string): Promise<VerificationInfo> {
    return this.verificationStep(this.machine.acceptVerification(userId, flowId, this.verificationPolicy.methods));
  }

  /**
   * Shows a QR code in a `ready` flow (the policy's `methods` include `'qr_show'` and the other
   * side can scan): returns the bytes to render as a QR code for the other user to scan. When
   * they scanned it, the flow is `qr_scanned`: {@link confirmQrScan} (or `autoConfirmQrScan`).
   */
  async showQrCode(userId: string, flowId: string): Promise<VerificationQrCode> {
    const shown = await this.machine.showQrCode(userId, flowId);
    this.verifications.track(userId, flowId);
    await this.driveVerifications();
    return shown;
  }

  /**
   * Scans the other side's QR code (the bytes decoded from its image) in a `ready` flow (the
   * policy's `methods` include `'qr_scan'`); the flow is `reciprocated`, then `done` once the
   * other side confirms.
   */
  async scanQrCode(userId: string, flowId: string, qrCode: Uint8Array): Promise<VerificationInfo> {
    return this.verificationStep(await this.machine.scanQrCode(userId, flowId, qrCode));
  }

  /** Confirms that the other side scanned our QR code (phase `qr_scanned`). */
  async confirmQrScan(userId: string, flowId: string): Promise<VerificationInfo> {
    return this.verificationStep(this.machine.confirmQrScan(userId, flowId));
  }

  /** Starts SAS on a `ready` flow, or accepts the SAS the other side started. */
  async startSas(userId: string, flowId: string): Promise<VerificationInfo> {
    return this.verificationStep(await this.machine.startSas(userId, flowId));
  }

  /** Confirms that the SAS matches (phase `keys_exchanged`); the flow is done once the other side confirms too. */
  async confirmSas(userId: string, flowId: string): Promise<VerificationInfo> {
    return this.verificationStep(await this.machine.confirmSas(userId, flowId));
  }

  /** Cancels a flow: `m.user` by default, `m.mismatched_sas` when the SAS did not match. */
  async cancelVerification(userId: string, flowId: string, code: VerificationCancelCode = 'm.user'): Promise<VerificationInfo> {
    return this.verificationStep(this.machine.cancelVerification(userId, flowId, code));
  }

  /** Sends an action's requests, then reports and drives the flows. */
  private async verificationStep(step: VerificationStep): Promise<VerificationInfo> {
    const v = step.verification;
    this.verifications.track(v.otherUserId, v.flowId);
    for (const r of step.requests) await this.sendRequest(r);
    await this.driveVerifications();
    return this.machine.getVerification(v.otherUserId, v.flowId) ?? v;
  }

  /** Reports changed flows and applies the policy, until nothing changes. */
  private async driveVerifications(): Promise<void> {
    const { acceptFrom, autoConfirmSas, methods, autoConfirmQrScan } = this.verificationPolicy;
    for (let round = 0; round < 5; round++) {
      const changed = this.verifications.report((u, f) => this.machine.getVerification(u, f));
      let acted = false;
      for (const v of changed) {
        if (!acceptFrom.includes(v.otherUserId)) continue;
        let step: VerificationStep | undefined;
        if (v.phase === 'requested') step = this.machine.acceptVerification(v.otherUserId, v.flowId, methods);
        else if (v.phase === 'started' && !v.weStarted) step = await this.machine.startSas(v.otherUserId, v.flowId);
        else if (v.phase === 'keys_exchanged' && autoConfirmSas) step = await this.machine.confirmSas(v.otherUserId, v.flowId);
        else if (v.phase === 'qr_scanned' && autoConfirmQrScan) step = this.machine.confirmQrScan(v.otherUserId, v.flowId);
        if (!step) continue;
        for (const r of step.requests) await this.sendRequest(r);
        acted = true;
      }
      if (!acted) return;
      await this.processOutgoingRequests();
    }
  }

  /**
   * Opens the device's machine on its store and a transport to the homeserver, asking the
   * homeserver who the access token belongs to when `userId` or `deviceId` is not given.
   * Sends nothing else: call {@link processOutgoingRequests} or {@link syncOnce} to upload keys.
   *
   * @throws {@link HomeserverError} when `whoami` fails (e.g. `M_UNKNOWN_TOKEN`).
   * @throws {@link MatrixCryptoError} when the store cannot be opened (see {@link OlmMachine.open}).
   */
  static async open(options: EncryptedClientOpenOptions): Promise<EncryptedClient> {
    const metrics = internalMetrics(recorderFor(options.metrics, 'metrics'));
    const transport = new HomeserverTransport({
      ...options.transport,
      baseUrl: options.baseUrl,
      accessToken: options.accessToken,
      metrics,
    });
    let { userId, deviceId } = options;
    if (userId === undefined || deviceId === undefined) {
      const me = await transport.whoami();
      if (!me.device_id) throw new TypeError('EncryptedClient.open: the access token belongs to no device (an appservice token?); pass deviceId');
      userId ??= me.user_id;
      deviceId ??= me.device_id;
    }
    const machine = await OlmMachine.open({
      userId,
      deviceId,
      store: options.store,
      ...(options.withheld ? { withheld: options.withheld } : {}),
      metrics,
    });
    const client = new EncryptedClient({
      machine,
      transport,
      ...(options.verification ? { verification: options.verification } : {}),
      ...(options.shareSettings ? { shareSettings: options.shareSettings } : {}),
      ...(options.syncToken !== undefined ? { syncToken: options.syncToken } : {}),
    });
    try {
      if (options.crossSigning) await client.openTrust(options.crossSigning);
      else await resumeBackup(machine, transport);
    } catch (err) {
      await machine.close();
      throw err;
    }
    return client;
  }

  /** The `crossSigning` part of {@link open}. */
  private async openTrust(options: NonNullable<EncryptedClientOpenOptions['crossSigning']>): Promise<void> {
    const { recoveryKey, onProgress, ...crossSigning } = options;
    await this.processOutgoingRequests();
    const status = await this.machine.crossSigningStatus();
    const published = await this.machine.getUserIdentity(this.userId);
    const recoverNow = () => recover(this.machine, this.transport, recoveryKey!, onProgress ? { onProgress } : {}, 'crossSigning.recoveryKey');
    const canRecover = recoveryKey !== undefined && published !== null && crossSigning.bootstrap !== 'reset';
    if (canRecover && !status.hasSelfSigning) {
      this.recovery = await recoverNow();
    } else {
      await resumeBackup(this.machine, this.transport);
    }
    try {
      this.crossSigning = await setUpCrossSigning(this.machine, this.transport, crossSigning);
    } catch (err) {
      // Keys this device holds that are no longer the published identity's (it was replaced
      // from another device): the recovery key brings the current ones.
      if (!(canRecover && this.recovery === null && err instanceof MatrixCryptoError && err.code === 'CrossSigningKeyMissing')) throw err;
      this.recovery = await recoverNow();
      this.crossSigning = await setUpCrossSigning(this.machine, this.transport, crossSigning);
    }
    this.signOwnDevices = crossSigning.signOwnDevices === true;
  }

  /** Whether {@link syncOnce} signs our other devices (`crossSigning.signOwnDevices`). */
  private signOwnDevices = false;

  /** Signs our other devices that our self-signing key has not signed; returns their ids. */
  private async signNewOwnDevices(): Promise<string[]> {
    if (!(await this.machine.crossSigningStatus()).hasSelfSigning) return [];
    const unsigned = (await this.machine.unsignedOwnDevices()).filter((d) => d !== this.deviceId);
    for (const deviceId of unsigned) await this.sendRequest(await this.machine.signOwnDevice(deviceId));
    return unsigned;
  }

  /** What the `crossSigning` option of {@link open} did, or `null` when it was not given. */
  crossSigning: CrossSigningSetup | null = null;

  /** What recovery during {@link open} did, or `null` when the device did not recover. */
  recovery: RecoveryResult | null = null;

  /**
   * Makes this device cross-signed: publishes the account's cross-signing identity when it has
   * none (or a new one with `bootstrap: 'reset'`), answering user-interactive auth with
   * `options.auth`, and uploads the signature of our device. See {@link setUpCrossSigning}.
   */
  async setUpCrossSigning(options: CrossSigningOptions = {}): Promise<CrossSigningSetup> {
    await this.processOutgoingRequests();
    return setUpCrossSigning(this.machine, this.transport, options, 'options');
  }

  /**
   * Stores our cross-signing keys and the backup key in secret storage under a new key, and
   * returns its recovery key; creates and enables a key backup when the account has none. See
   * {@link setUpRecovery}.
   */
  setUpRecovery(options: RecoverySetupOptions = {}): Promise<RecoverySetup> {
    return setUpRecovery(this.machine, this.transport, options);
  }

  /**
   * Recovers from secret storage with the recovery key (or passphrase): cross-signing keys, the
   * signature of this device, the backup and its room keys. See {@link recover}.
   */
  recover(recoveryKey: string, options: RecoverOptions = {}): Promise<RecoveryResult> {
    return recover(this.machine, this.transport, recoveryKey, options);
  }

  /**
   * Uploads every room key not yet in the enabled key backup (nothing when no backup is
   * enabled). {@link syncOnce} calls it after each sync.
   *
   * @returns how many batches were uploaded.
   */
  backUpRoomKeys(): Promise<number> {
    return this.queues.run('backup', async () => {
      let batches = 0;
      for (let request = await this.machine.backupRoomKeys(); request; request = await this.machine.backupRoomKeys()) {
        await this.sendRequest(request);
        batches++;
      }
      return batches;
    });
  }

  /** Our user id. */
  get userId(): string {
    return this.machine.userId;
  }

  /** Our device id. */
  get deviceId(): string {
    return this.machine.deviceId;
  }

  /**
   * The `next_batch` token of the last sync the machine fully processed, or the one given at
   * construction. Save it to continue from there after a restart.
   */
  get syncToken(): string | undefined {
    return this.since;
  }

  /**
   * Sends every request the machine has queued (key uploads, key queries, to-device messages,
   * ...) and marks each one sent with the homeserver's answer. Repeats until the machine has no
   * new request, since an answer can queue another (e.g. more one-time keys to upload).
   *
   * @returns how many requests this call sent.
   * @throws {@link HomeserverError} when the homeserver refuses a request; the request stays
   *   queued in the machine and is sent again by the next call.
   */
  processOutgoingRequests(): Promise<number> {
    return this.drainOutgoing(true);
  }

  /**
   * {@link processOutgoingRequests}; room messages (in-room verification) are sent after the
   * drain, and only with `roomMessages`: encrypting one shares the room key, which drains the
   * queue again (without them, or it would wait for itself).
   */
  private async drainOutgoing(sendRoomMessages: boolean): Promise<number> {
    const roomMessages = new Map<string, RoomMessageRequest>();
    const sent = await this.queues.run('outgoing', async () => {
      let sent = 0;
      // Bounded: an answer queues at most a handful of follow-ups (e.g. more one-time keys).
      for (let round = 0; round < 10; round++) {
        const requests = (await this.machine.outgoingRequests()).filter((r) => {
          if (r.type !== 'room_message') return true;
          roomMessages.set(r.id, r);
          return false;
        });
        if (requests.length === 0) break;
        await settleAll(requests.map((r) => this.sendRequest(r)));
        sent += requests.length;
      }
      return sent;
    });
    if (!sendRoomMessages) return sent;
    for (const r of roomMessages.values()) await this.sendRequest(r);
    return sent + roomMessages.size;
  }

  /**
   * One round of the receive loop: `/sync` from {@link syncToken}, hand the to-device events,
   * device-list changes and key counts to the machine, send what the machine then wants sent
   * (claiming one-time keys for the Olm sessions it asks for, e.g. to answer a key request), and
   * decrypt the sync's timeline events. The sync token advances only after the machine has
   * processed the sync, so a crash in between replays it instead of losing keys.
   */
  async syncOnce(options: SyncOnceOptions = {}): Promise<SyncOnceResult> {
    const sync = await this.transport.sync({
      timeoutMs: options.timeoutMs ?? 30_000,
      ...(this.since !== undefined ? { since: this.since } : {}),
      ...(options.filter !== undefined ? { filter: options.filter } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    const changes = await this.machine.receiveSyncChanges(toSyncChanges(sync));
    this.since = sync.next_batch;
    for (const e of changes.toDeviceEvents) {
      const flow = e.kind === 'decrypted' || e.kind === 'plaintext' ? verificationFlowOf(e.event) : undefined;
      if (flow) this.verifications.track(flow.sender, flow.flowId);
    }
    await this.processOutgoingRequests();
    // Olm sessions the machine wants on its own: to answer a key request from a device it has
    // no session with, or to replace a wedged session.
    if (await this.claimMissingSessions([])) await this.processOutgoingRequests();
    await this.backUpRoomKeys();
    const timeline: TimelineEvent[] = [];
    let verificationEvents = 0;
    for (const [roomId, room] of Object.entries(sync.rooms?.join ?? {})) {
      for (const event of [...(room.state?.events ?? []), ...(room.timeline?.events ?? [])]) {
        if (event.type === 'm.room.encryption' && event.state_key === '') this.encryptedRooms.add(roomId);
      }
      for (const event of room.timeline?.events ?? []) {
        const item = await this.decryptEvent(roomId, event);
        timeline.push(item);
        if (await this.receiveRoomVerificationEvent(item)) verificationEvents++;
      }
    }
    // The machine's answers to them (e.g. the SAS key after an accept).
    if (verificationEvents > 0) await this.processOutgoingRequests();
    await this.driveVerifications();
    if (this.signOwnDevices) await this.signNewOwnDevices();
    return { sync, changes, timeline };
  }

  /**
   * Makes sure every joined member's devices can read the next encrypted event in the room:
   * tracks the members, queries their devices, claims one-time keys for devices without an Olm
   * session, shares the room key (creating or rotating the session as the settings require) and
   * sends every resulting to-device message, withheld notices included.
   *
   * Call before {@link OlmMachine.encryptRoomEvent}; {@link sendEncrypted} calls it for you.
   *
   * @param settings - share settings for this call, over the client's defaults.
   * @returns who got the key and who got a withheld notice.
   */
  prepareRoomForSending(roomId: string, settings: ShareSettings = {}): Promise<ShareResult> {
    return this.queues.run(`room ${roomId}`, () => this.prepare(roomId, settings));
  }

  private async prepare(roomId: string, settings: ShareSettings): Promise<ShareResult> {
    const members = Object.keys((await this.transport.getJoinedMembers(roomId)).joined);
    await this.machine.updateTrackedUsers(members);
    // Sends the key query for members whose devices we do not know yet.
    await this.drainOutgoing(false);
    await this.claimMissingSessions(members);
    const share = await this.machine.shareRoomKey(roomId, members, { ...this.shareSettings, ...settings });
    await settleAll(share.requests.map((r) => this.sendRequest(r)));
    return share;
  }

  /** Claims one-time keys for the devices of `users` without an Olm session (and those the machine asks for). */
  private claimMissingSessions(users: string[]): Promise<boolean> {
    return this.queues.run('claim', async () => {
      const claim = await this.machine.getMissingSessions(users);
      if (claim) await this.sendRequest(claim);
      return claim !== null;
    });
  }

  /**
   * Encrypts an event for the room and sends it as `m.room.encrypted`, after
   * {@link prepareRoomForSending}.
   *
   * @param type - the event type inside the encryption, e.g. `m.room.message`.
   * @param content - the event content, e.g. `{ msgtype: 'm.text', body: 'hello' }`.
   */
  async sendEncrypted(
    roomId: string,
    type: string,
    content: Record<string, unknown>,
    options: SendEncryptedOptions = {},
  ): Promise<SendEncryptedResult> {
    // Share and encrypt back to back, so a concurrent share in the room cannot rotate the
    // session in between.
    const { share, encrypted } = await this.queues.run(`room ${roomId}`, async () => {
      const share = await this.prepare(roomId, options.shareSettings ?? {});
      return { share, encrypted: await this.machine.encryptRoomEvent(roomId, type, content) };
    });
    const { event_id } = await this.transport.sendRoomEvent(roomId, 'm.room.encrypted', encrypted, options.txnId);
    return { eventId: event_id, share };
  }

  /**
   * Decrypts one room event (from a sync timeline, `/messages` or `/event`). Events that are not
   * `m.room.encrypted` come back as `plaintext`; a decryption failure comes back as
   * `undecryptable` with the typed {@link DecryptionError}.
   *
   * @throws {@link MatrixCryptoError} for failures that are not about this event (e.g. `MachineClosed`).
   */
  async decryptEvent(roomId: string, event: RoomEvent): Promise<TimelineEvent> {
    if (event.type !== 'm.room.encrypted') return { kind: 'plaintext', roomId, event };
    try {
      return { kind: 'decrypted', roomId, event, decrypted: await this.machine.decryptRoomEvent(event, roomId) };
    } catch (err) {
      if (err instanceof DecryptionError) return { kind: 'undecryptable', roomId, event, error: err };
      throw err;
    }
  }

  /**
   * Feeds an in-room verification event of another user (decrypted, or plaintext) to the
   * machine and tracks its flow; returns whether it was one.
   */
  private async receiveRoomVerificationEvent(item: TimelineEvent): Promise<boolean> {
    const event = item.kind === 'decrypted' ? item.decrypted.event : item.kind === 'plaintext' ? item.event : undefined;
    const flow = event && roomVerificationFlowOf(event);
    // Our own events come back in the timeline; the machine has nothing to learn from them.
    if (!event || !flow || flow.sender === this.userId) return false;
    if (event.type === 'm.room.message') {
      // The machine ignores a request from a device it does not know: query the sender's devices first.
      await this.machine.updateTrackedUsers([flow.sender]);
      await this.processOutgoingRequests();
    }
    await this.machine.receiveRoomVerificationEvent(item.roomId, event);
    this.verifications.track(flow.sender, flow.flowId);
    return true;
  }

  /** Rooms known to be encrypted (a room's encryption cannot be turned off). */
  private readonly encryptedRooms = new Set<string>();

  /** Whether the room is encrypted: seen in a sync, or asked from the homeserver. */
  private async isRoomEncrypted(roomId: string): Promise<boolean> {
    if (this.encryptedRooms.has(roomId)) return true;
    if ((await this.transport.getStateEvent(roomId, 'm.room.encryption')) === null) return false;
    this.encryptedRooms.add(roomId);
    return true;
  }

  /** Sends an event to a room, encrypted when the room is; returns its event id. */
  private async sendRoomContent(roomId: string, type: string, content: Record<string, unknown>, txnId?: string): Promise<string> {
    if (await this.isRoomEncrypted(roomId)) return (await this.sendEncrypted(roomId, type, content, txnId !== undefined ? { txnId } : {})).eventId;
    return (await this.transport.sendRoomEvent(roomId, type, content, txnId)).event_id;
  }

  /** Room messages of verification flows already sent (their ids), so a concurrent drain does not send one twice. */
  private readonly sentRoomMessages = new Set<string>();

  /** Sends a room message of a verification flow (encrypted in an encrypted room) and marks it sent. */
  private sendRoomMessage(request: RoomMessageRequest): Promise<void> {
    return this.queues.run('verification room messages', async () => {
      if (this.sentRoomMessages.has(request.id)) return;
      const eventId = await this.sendRoomContent(request.roomId, request.eventType, JSON.parse(request.body) as Record<string, unknown>, request.txnId);
      await this.machine.markRequestAsSent(request, JSON.stringify({ event_id: eventId }));
      this.sentRoomMessages.add(request.id);
      // Ids are never reused; keep the set small.
      if (this.sentRoomMessages.size > 256) this.sentRoomMessages.delete(this.sentRoomMessages.values().next().value!);
    });
  }

  /**
   * The metrics of the machine and the transport (see docs/metrics.md): with `metrics: { registry }`
   * at {@link open}, the figures of everything recording into that registry.
   */
  metrics(): MetricsSnapshot {
    const machine = machineRecorder(this.machine);
    const transport = transportRecorder(this.transport);
    return machine === transport ? machine.snapshot() : mergeSnapshots(machine.snapshot(), transport.snapshot());
  }

  /** Closes the machine (see {@link OlmMachine.close}); the transport holds no resources. */
  async close(): Promise<void> {
    await this.machine.close();
  }

  /** Sends one request and marks it sent. */
  private async sendRequest(request: OutgoingRequest): Promise<void> {
    if (request.type === 'room_message') return this.sendRoomMessage(request);
    await this.machine.markRequestAsSent(request, await this.transport.send(request));
  }
}
