/**
 * The `OlmMachine` of the official bindings, over this library's {@link MainOlmMachine}.
 *
 * @module
 */
import { compatVersions, openMachine, type NativeMachine } from '../../native/index';
import { MatrixCryptoError, native, nativeSync } from '../errors';
import { OlmMachine as MainOlmMachine, wrapNativeMachine } from '../machine';
import type { DecryptedRoomEvent as MainDecryptedRoomEvent, ShieldState as MainShieldState, SharingStrategy } from '../types';
import { BackupKeys, RoomKeyCounts, SignatureVerification, type BackupDecryptionKey } from './backup';
import {
  CollectStrategy,
  EncryptionAlgorithm,
  HistoryVisibility,
  RequestType,
  ShieldColor,
  ShieldStateCode,
  StoreType,
  type SignatureState,
} from './enums';
import { DeviceId, RoomId, UserId, idString, requireString } from './identifiers';
import { IdentityKeys, Signatures } from './keys';
import {
  CrossSigningBootstrapRequests,
  INTERNAL,
  KeysBackupRequest,
  KeysClaimRequest,
  KeysQueryRequest,
  KeysUploadRequest,
  REQUEST_TYPE_NAMES,
  RoomMessageRequest,
  SignatureUploadRequest,
  ToDeviceRequest,
  signedKeysBody,
  toCompatRequest,
} from './requests';
import { SecretStorageItems, type SecretStorageKey } from './secret-storage';

/** The versions of the Rust libraries in the addon. */
export class Versions {
  /** The vodozemac crate's version. */
  vodozemac: string;
  /** The matrix-sdk-crypto crate's version. */
  matrixSdkCrypto: string;

  /** @internal */
  constructor(vodozemac: string, matrixSdkCrypto: string) {
    this.vodozemac = vodozemac;
    this.matrixSdkCrypto = matrixSdkCrypto;
  }
}

/** The versions of vodozemac and matrix-sdk-crypto compiled into the addon. */
export function getVersions(): Versions {
  const v = compatVersions();
  return new Versions(v.vodozemac, v.matrixSdkCrypto);
}

/** An enum member, checked when it is assigned (as the official classes do). */
function member<T extends number>(field: string, table: object, value: unknown): T {
  const names = Object.entries(table).filter(([, v]) => typeof v === 'number');
  if (typeof value !== 'number' || !names.some(([, v]) => v === value)) {
    throw new MatrixCryptoError('InvalidArgument', `${field}: ${String(value)} is not one of ${names.map(([k, v]) => `${k} (${v})`).join(', ')}`, field);
  }
  return value as T;
}

/** A positive bigint, checked when it is assigned. */
function positiveBigint(field: string, value: unknown): bigint {
  if (typeof value !== 'bigint' || value <= 0n) {
    throw new MatrixCryptoError('InvalidArgument', `${field}: must be a positive bigint, got ${typeof value === 'bigint' ? value : typeof value}`, field);
  }
  return value;
}

/**
 * Room-key sharing settings; the defaults are the crate's. Like the official class, each
 * property is checked when it is assigned: `settings.historyVisibility = 42` throws there.
 */
export class EncryptionSettings {
  #algorithm: EncryptionAlgorithm = EncryptionAlgorithm.MegolmV1AesSha2;
  #rotationPeriod = 604_800_000_000n;
  #rotationPeriodMessages = 100n;
  #historyVisibility: HistoryVisibility = HistoryVisibility.Shared;
  #sharingStrategy: CollectStrategy = CollectStrategy.AllDevices;

  /** Settings with the default values. */
  constructor() {}

  /** The algorithm. Default: `MegolmV1AesSha2`. */
  get algorithm(): EncryptionAlgorithm {
    return this.#algorithm;
  }
  /** @throws {@link MatrixCryptoError} `InvalidArgument` naming `algorithm` unless `value` is an EncryptionAlgorithm member. */
  set algorithm(value: EncryptionAlgorithm) {
    this.#algorithm = member('algorithm', EncryptionAlgorithm, value);
  }

  /** How long a session is used before it rotates, in microseconds. Default: one week. */
  get rotationPeriod(): bigint {
    return this.#rotationPeriod;
  }
  /** @throws {@link MatrixCryptoError} `InvalidArgument` naming `rotationPeriod` unless `value` is a positive bigint. */
  set rotationPeriod(value: bigint) {
    this.#rotationPeriod = positiveBigint('rotationPeriod', value);
  }

  /** How many messages a session encrypts before it rotates. Default: 100. */
  get rotationPeriodMessages(): bigint {
    return this.#rotationPeriodMessages;
  }
  /** @throws {@link MatrixCryptoError} `InvalidArgument` naming `rotationPeriodMessages` unless `value` is a positive bigint. */
  set rotationPeriodMessages(value: bigint) {
    this.#rotationPeriodMessages = positiveBigint('rotationPeriodMessages', value);
  }

  /** The room's history visibility. Default: `Shared`. */
  get historyVisibility(): HistoryVisibility {
    return this.#historyVisibility;
  }
  /** @throws {@link MatrixCryptoError} `InvalidArgument` naming `historyVisibility` unless `value` is a HistoryVisibility member. */
  set historyVisibility(value: HistoryVisibility) {
    this.#historyVisibility = member('historyVisibility', HistoryVisibility, value);
  }

  /** Which devices get the key. Default: `AllDevices`. */
  get sharingStrategy(): CollectStrategy {
    return this.#sharingStrategy;
  }
  /** @throws {@link MatrixCryptoError} `InvalidArgument` naming `sharingStrategy` unless `value` is a CollectStrategy member. */
  set sharingStrategy(value: CollectStrategy) {
    this.#sharingStrategy = member('sharingStrategy', CollectStrategy, value);
  }
}

/** Device-list changes from a sync response. */
export class DeviceLists {
  readonly #changed: UserId[];
  readonly #left: UserId[];

  /** From the `device_lists` of a sync response. */
  constructor(changed?: UserId[] | null, left?: UserId[] | null) {
    this.#changed = changed ?? [];
    this.#left = left ?? [];
  }

  /** Whether there is no change. */
  isEmpty(): boolean {
    return this.#changed.length === 0 && this.#left.length === 0;
  }

  /** Users whose devices changed, or who now share an encrypted room with us. */
  get changed(): UserId[] {
    return [...this.#changed];
  }

  /** Users who no longer share an encrypted room with us. */
  get left(): UserId[] {
    return [...this.#left];
  }
}

/** The shield a client would show next to a message. */
export class ShieldState {
  /** Its colour. */
  color: ShieldColor;
  /** Why, when red or grey. */
  code: ShieldStateCode;
  /** A short English explanation, when red or grey. */
  message?: string;

  /** @internal */
  constructor(state: MainShieldState) {
    if (state.color === 'none') {
      this.color = ShieldColor.None;
      this.code = ShieldStateCode.None;
      return;
    }
    this.color = state.color === 'red' ? ShieldColor.Red : ShieldColor.Grey;
    this.code = ShieldStateCode[state.code as keyof typeof ShieldStateCode] ?? ShieldStateCode.AuthenticityNotGuaranteed;
    this.message = state.message;
  }
}

/** A decrypted room event and what is known about its sender. */
export class DecryptedRoomEvent {
  /** The decrypted event as JSON. */
  readonly event: string;
  readonly #result: MainDecryptedRoomEvent;

  /** @internal */
  constructor(result: MainDecryptedRoomEvent) {
    this.event = JSON.stringify(result.event);
    this.#result = result;
  }

  /** The sender (trust it as far as {@link shieldState} says). */
  get sender(): UserId | null {
    return new UserId(this.#result.sender);
  }

  /** The sender's device, if known. */
  get senderDevice(): DeviceId | null {
    return this.#result.senderDevice === null ? null : new DeviceId(this.#result.senderDevice);
  }

  /** The Curve25519 key of the device that created the room key. */
  get senderCurve25519Key(): string | null {
    return this.#result.senderCurve25519Key;
  }

  /** The Ed25519 key the room key's creator claimed. */
  get senderClaimedEd25519Key(): string | null {
    return this.#result.senderClaimedEd25519Key;
  }

  /** Curve25519 keys of the devices the room key was forwarded through, oldest first; empty if it came from its creator. */
  get forwardingCurve25519KeyChain(): string[] {
    return [...this.#result.forwardingCurve25519KeyChain];
  }

  /** The shield under the strict (`true`) or lax rules. */
  shieldState(strict: boolean): ShieldState | null {
    return new ShieldState(strict ? this.#result.shieldStateStrict : this.#result.shieldState);
  }
}

/** Which private cross-signing keys this device holds. */
export class CrossSigningStatus {
  readonly #status: { hasMaster: boolean; hasSelfSigning: boolean; hasUserSigning: boolean };

  /** @internal */
  constructor(status: { hasMaster: boolean; hasSelfSigning: boolean; hasUserSigning: boolean }) {
    this.#status = status;
  }

  /** The master key. */
  get hasMaster(): boolean {
    return this.#status.hasMaster;
  }

  /** The self-signing key (signs our own devices). */
  get hasSelfSigning(): boolean {
    return this.#status.hasSelfSigning;
  }

  /** The user-signing key (signs other users). */
  get hasUserSigning(): boolean {
    return this.#status.hasUserSigning;
  }
}

/** A device of some user and how far we trust it. */
export class Device {
  readonly #trust: { isVerified: boolean; isCrossSigningTrusted: boolean; isCrossSignedByOwner: boolean };

  /** @internal */
  constructor(trust: { isVerified: boolean; isCrossSigningTrusted: boolean; isCrossSignedByOwner: boolean }) {
    this.#trust = trust;
  }

  /** Verified locally or through cross-signing. */
  isVerified(): boolean {
    return this.#trust.isVerified;
  }

  /** Verified through cross-signing. */
  isCrossSigningTrusted(): boolean {
    return this.#trust.isCrossSigningTrusted;
  }

  /** Signed by its owner's self-signing key. */
  isCrossSignedByOwner(): boolean {
    return this.#trust.isCrossSignedByOwner;
  }
}

const HISTORY: Record<HistoryVisibility, 'invited' | 'joined' | 'shared' | 'world_readable'> = {
  [HistoryVisibility.Invited]: 'invited',
  [HistoryVisibility.Joined]: 'joined',
  [HistoryVisibility.Shared]: 'shared',
  [HistoryVisibility.WorldReadable]: 'world_readable',
};

const STRATEGY: Record<CollectStrategy, SharingStrategy> = {
  [CollectStrategy.AllDevices]: 'all_devices',
  [CollectStrategy.ErrorOnVerifiedUserProblem]: 'error_on_verified_user_problem',
  [CollectStrategy.IdentityBasedStrategy]: 'identity_based',
  [CollectStrategy.OnlyTrustedDevices]: 'only_trusted_devices',
};

function enumValue<T extends number>(field: string, table: Record<T, unknown>, value: unknown): T {
  if (typeof value !== 'number' || !(value in table)) {
    throw new MatrixCryptoError('InvalidArgument', `${field}: ${String(value)} is not one of ${Object.keys(table).join(', ')}`, field);
  }
  return value as T;
}

function positiveInteger(field: string, value: unknown): number {
  const n = typeof value === 'bigint' ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isFinite(n) || n <= 0) {
    throw new MatrixCryptoError('InvalidArgument', `${field}: must be a positive bigint`, field);
  }
  return n;
}

function userStrings(field: string, users: unknown): string[] {
  if (!Array.isArray(users)) throw new MatrixCryptoError('InvalidArgument', `${field}: must be an array of UserId`, field);
  return users.map((u, i) => idString(`${field}[${i}]`, u));
}

let create: (inner: NativeMachine) => OlmMachine;

/**
 * One device's end-to-end encryption, with the API of `@matrix-org/matrix-sdk-crypto-nodejs`
 * 0.6: same methods, argument order, identifier classes and JSON strings. It runs on this
 * library's {@link MainOlmMachine} (`.inner`), so both APIs can be mixed.
 *
 * @example What matrix-bot-sdk does
 * ```ts
 * import { OlmMachine, UserId, DeviceId, RoomId, EncryptionSettings } from 'matrix-crypto-node/compat';
 * const machine = await OlmMachine.initialize(new UserId('@bot:example.org'), new DeviceId('BOT'), './crypto', '');
 * for (const r of await machine.outgoingRequests()) {
 *   await machine.markRequestAsSent(r.id, r.type, JSON.stringify(await send(r)));
 * }
 * const content = await machine.encryptRoomEvent(new RoomId(roomId), 'm.room.message', JSON.stringify({ body: 'hi' }));
 * ```
 */
export class OlmMachine {
  readonly #main: MainOlmMachine;
  readonly #native: NativeMachine;
  readonly #userId: UserId;
  readonly #deviceId: DeviceId;
  readonly #identityKeys: IdentityKeys;
  /** Signature uploads from `importSecretsFromSecretStorage`: the crate needs no response for them. */
  readonly #untracked = new Set<string>();

  static {
    create = (inner) => new OlmMachine(inner);
  }

  /**
   * Hidden: opening a machine is asynchronous, so machines come from {@link OlmMachine.initialize}.
   * Like the official bindings, `new OlmMachine()` from JavaScript throws.
   */
  private constructor(inner?: NativeMachine) {
    if (inner === undefined) throw new Error('To build an `OlmMachine`, please use the `initialize` method');
    this.#main = wrapNativeMachine(inner);
    this.#native = inner;
    this.#userId = new UserId(this.#main.userId);
    this.#deviceId = new DeviceId(this.#main.deviceId);
    this.#identityKeys = new IdentityKeys(this.#main.identityKeys);
  }

  /**
   * Open the account of `userId`/`deviceId`, creating it on first use. With `storePath`, keys
   * persist in a SQLite store in that folder (encrypted with `storePassphrase`, if given; an
   * empty string is a passphrase too, as in the official bindings); without, in memory.
   *
   * @throws {@link MatrixCryptoError} `StorePassphrase` for a wrong passphrase, `StoreLocked`
   *   if another process holds the store, `StoreMismatchedAccount` for another account's store.
   */
  static async initialize(
    userId: UserId,
    deviceId: DeviceId,
    storePath?: string | null,
    storePassphrase?: string | null,
    storeType?: StoreType | null,
  ): Promise<OlmMachine> {
    if (storeType != null && storeType !== StoreType.Sqlite) {
      throw new MatrixCryptoError('InvalidArgument', `storeType: ${String(storeType)} is not StoreType.Sqlite`, 'storeType');
    }
    const user = idString('userId', userId);
    const device = idString('deviceId', deviceId);
    const inner = await native(() =>
      openMachine({
        userId: user,
        deviceId: device,
        storeKind: storePath == null ? 'memory' : 'sqlite',
        storePath: storePath ?? undefined,
        storePassphrase: storePath == null ? undefined : (storePassphrase ?? undefined),
      }),
    );
    return create(inner);
  }

  /** This library's machine under this one, for its typed API (withheld policy, trust, ...). */
  get inner(): MainOlmMachine {
    return this.#main;
  }

  /** Our user id. */
  get userId(): UserId {
    return this.#userId;
  }

  /** Our device id. */
  get deviceId(): DeviceId {
    return this.#deviceId;
  }

  /** Our device's public identity keys. */
  get identityKeys(): IdentityKeys {
    return this.#identityKeys;
  }

  /**
   * Process the encryption parts of a sync response. `toDeviceEvents` is the JSON array of
   * `to_device.events`. Returns JSON `[events, roomKeyInfos]`: the to-device events (decrypted
   * where they were encrypted and could be), and `{ algorithm, room_id, sender_key, session_id }`
   * for each room key received.
   */
  async receiveSyncChanges(
    toDeviceEvents: string,
    changedDevices: DeviceLists,
    oneTimeKeyCounts: Record<string, number>,
    unusedFallbackKeys: string[],
  ): Promise<string> {
    let events: unknown;
    try {
      events = JSON.parse(toDeviceEvents);
    } catch (err) {
      throw new MatrixCryptoError('InvalidArgument', `toDeviceEvents: not valid JSON (${(err as Error).message})`, 'toDeviceEvents');
    }
    const lists = changedDevices ?? new DeviceLists();
    const result = await this.#main.receiveSyncChanges({
      toDeviceEvents: events as never,
      changedDevices: { changed: lists.changed.map(String), left: lists.left.map(String) },
      oneTimeKeyCounts: oneTimeKeyCounts ?? {},
      unusedFallbackKeys: unusedFallbackKeys ?? [],
    });
    const keys = result.roomKeyUpdates.map((k) => ({
      algorithm: k.algorithm,
      room_id: k.roomId,
      sender_key: k.senderKey,
      session_id: k.sessionId,
    }));
    return JSON.stringify([result.toDeviceEvents.map((e) => e.event), keys]);
  }

  /** The requests to send now; pass each response to {@link markRequestAsSent}. */
  async outgoingRequests(): Promise<
    Array<KeysUploadRequest | KeysQueryRequest | KeysClaimRequest | ToDeviceRequest | SignatureUploadRequest | RoomMessageRequest | KeysBackupRequest>
  > {
    return (await this.#main.outgoingRequests()).map(toCompatRequest);
  }

  /**
   * Pass the homeserver's response (JSON) to a sent request. Resolves to `true`. As in the
   * official bindings, an id this machine never handed out is accepted and the response
   * processed (e.g. the answer to a keys/query or keys/claim the program built itself); the
   * main API's {@link MainOlmMachine.markRequestAsSent} rejects such ids.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` for a type that does not match a
   *   request handed out, or a response that does not parse.
   */
  async markRequestAsSent(requestId: string, requestType: RequestType, response: string): Promise<boolean> {
    const type = REQUEST_TYPE_NAMES[enumValue<RequestType>('requestType', REQUEST_TYPE_NAMES, requestType)];
    if (type === 'signature_upload' && this.#untracked.delete(requestId)) return true;
    if (typeof requestId !== 'string') {
      throw new MatrixCryptoError('InvalidArgument', `requestId: must be a string, got ${typeof requestId}`, 'requestId');
    }
    if (typeof response !== 'string') {
      throw new MatrixCryptoError('InvalidArgument', `response: must be a JSON string, got ${typeof response}`, 'response');
    }
    // As the official bindings do, a request id the machine never handed out is accepted.
    await native(() => this.#native.markRequestAsSent(requestId, type, response, true));
    return true;
  }

  /**
   * A keys/claim request for the devices of `users` without an Olm session, or `null`.
   * Keep one in flight at a time.
   */
  async getMissingSessions(users?: UserId[] | null): Promise<KeysClaimRequest | null> {
    const r = await this.#main.getMissingSessions(userStrings('users', users ?? []));
    return r ? new KeysClaimRequest(INTERNAL, r.id, r.body) : null;
  }

  /** Track the device lists of these users (members of the encrypted rooms we send to). */
  async updateTrackedUsers(users: UserId[]): Promise<void> {
    await this.#main.updateTrackedUsers(userStrings('users', users));
  }

  /**
   * The to-device requests that share the room's key with the devices of `users` (room keys
   * and withheld notices). Send them all before the encrypted event.
   */
  async shareRoomKey(roomId: RoomId, users: UserId[], encryptionSettings: EncryptionSettings): Promise<ToDeviceRequest[]> {
    const s = encryptionSettings ?? new EncryptionSettings();
    if (s.algorithm !== EncryptionAlgorithm.MegolmV1AesSha2) {
      throw new MatrixCryptoError('InvalidArgument', 'encryptionSettings.algorithm: only MegolmV1AesSha2 encrypts rooms', 'encryptionSettings.algorithm');
    }
    const micros = positiveInteger('encryptionSettings.rotationPeriod', s.rotationPeriod);
    const result = await this.#main.shareRoomKey(idString('roomId', roomId), userStrings('users', users), {
      algorithm: 'm.megolm.v1.aes-sha2',
      // Microseconds here, milliseconds in the main API (which has no finer rotation).
      rotationPeriodMs: Math.max(1, Math.round(micros / 1000)),
      rotationPeriodMessages: positiveInteger('encryptionSettings.rotationPeriodMessages', s.rotationPeriodMessages),
      historyVisibility: HISTORY[enumValue<HistoryVisibility>('encryptionSettings.historyVisibility', HISTORY, s.historyVisibility)],
      sharingStrategy: STRATEGY[enumValue<CollectStrategy>('encryptionSettings.sharingStrategy', STRATEGY, s.sharingStrategy)],
    });
    return result.requests.map((r) => new ToDeviceRequest(INTERNAL, r.id, r.eventType, r.txnId, r.body));
  }

  /**
   * A keys/query request for `users` outside the usual tracking, for the freshest device lists.
   * Mark it sent like the others.
   */
  queryKeysForUsers(users: UserId[]): KeysQueryRequest {
    const list = userStrings('users', users);
    const r = nativeSync(() => this.#native.compatQueryKeysForUsers(list));
    return new KeysQueryRequest(INTERNAL, r.id, r.body);
  }

  /** Encrypt event content (JSON) for the room; returns the `m.room.encrypted` content as JSON. */
  async encryptRoomEvent(roomId: RoomId, eventType: string, content: string): Promise<string> {
    // The content is JSON already, and so is the answer: straight to the native machine, with
    // the main API's argument checks and error mapping.
    const room = idString('roomId', roomId);
    requireString('eventType', eventType);
    requireString('content', content);
    return native(() => this.#native.encryptRoomEvent(room, eventType, content));
  }

  /**
   * Decrypt a room event (JSON).
   *
   * @throws {@link DecryptionError} with a `code` that says why (`MissingRoomKey`, ...).
   */
  async decryptRoomEvent(event: string, roomId: RoomId): Promise<DecryptedRoomEvent> {
    return new DecryptedRoomEvent(await this.#main.decryptRoomEvent(event, idString('roomId', roomId)));
  }

  /** Which private cross-signing keys we hold. */
  async crossSigningStatus(): Promise<CrossSigningStatus> {
    return new CrossSigningStatus(await this.#main.crossSigningStatus());
  }

  /**
   * Create cross-signing keys (new ones with `reset`) and return the requests that publish
   * them. The signing-keys upload needs user-interactive auth and is never marked as sent.
   */
  async bootstrapCrossSigning(reset: boolean): Promise<CrossSigningBootstrapRequests> {
    const r = await this.#main.bootstrapCrossSigning(reset);
    return new CrossSigningBootstrapRequests(
      r.uploadKeys ? new KeysUploadRequest(INTERNAL, r.uploadKeys.id, r.uploadKeys.body) : undefined,
      r.uploadSigningKeys.body,
      new SignatureUploadRequest(INTERNAL, r.uploadSignatures.id, signedKeysBody(r.uploadSignatures.body)),
    );
  }

  /** Sign `message` with our device key and, if we hold it, our master key. */
  async sign(message: string): Promise<Signatures> {
    return Signatures.fromJSON(await native(() => this.#native.compatSign(message)));
  }

  /** Save the backup decryption key (and its backup version) in the store. */
  async saveBackupDecryptionKey(decryptionKey: BackupDecryptionKey, version: string): Promise<void> {
    await native(() => this.#native.compatSaveBackupDecryptionKey(decryptionKey.toBase64(), version));
  }

  /** The backup key and version saved in the store. */
  async getBackupKeys(): Promise<BackupKeys> {
    const k = await native(() => this.#native.compatGetBackupKeys());
    return new BackupKeys(k.decryptionKeyBase64, k.backupVersion);
  }

  /**
   * Whether a backup version (JSON of `GET /room_keys/version`) is signed by us or a device
   * of ours that we trust.
   */
  async verifyBackup(backupInfo: string): Promise<SignatureVerification> {
    const v = await native(() => this.#native.compatVerifyBackup(backupInfo));
    return new SignatureVerification(v.deviceState as SignatureState, v.userState as SignatureState, v.trusted);
  }

  /** Back up room keys to `version`, encrypted to this public key. Check it first ({@link verifyBackup}). */
  async enableBackupV1(publicKeyBase64: string, version: string): Promise<void> {
    await native(() => this.#native.compatEnableBackupV1(publicKeyBase64, version));
  }

  /** Whether room-key backup is enabled. */
  async isBackupEnabled(): Promise<boolean> {
    return native(() => this.#native.compatIsBackupEnabled());
  }

  /** Stop backing up and forget which keys were backed up. */
  async disableBackup(): Promise<void> {
    await native(() => this.#native.disableBackup());
  }

  /** The next batch of room keys to back up, or `null` when all are backed up. */
  async backupRoomKeys(): Promise<KeysBackupRequest | null> {
    const r = await native(() => this.#native.backupRoomKeys());
    return r ? new KeysBackupRequest(INTERNAL, r.id, r.body) : null;
  }

  /** The exported room key (JSON array) of one session. */
  async exportRoomKeysForSession(roomId: string, sessionId: string): Promise<string> {
    return JSON.stringify(await this.#main.exportRoomKeys({ roomId, sessionId }));
  }

  /** How many room keys we hold, and how many are backed up. */
  async roomKeyCounts(): Promise<RoomKeyCounts> {
    const c = await native(() => this.#native.backupRoomKeyCounts());
    return new RoomKeyCounts(c.total, c.backedUp);
  }

  /** Release the store. Later calls reject with `MachineClosed` (the official bindings panic). */
  close(): void {
    this.#native.closeSync();
  }

  /** Our private cross-signing keys, encrypted with `secretStorageKey`, as account-data contents. */
  async exportSecretsForSecretStorage(secretStorageKey: SecretStorageKey): Promise<SecretStorageItems> {
    const items = await native(() => this.#native.compatExportSecretsForSecretStorage(secretStorageKey.native));
    return new SecretStorageItems({ masterKey: items.masterKey, userSigningKey: items.userSigningKey, selfSigningKey: items.selfSigningKey });
  }

  /**
   * Import our cross-signing keys from secret storage and sign our device with them. Returns
   * the signature upload to send. Query our own keys first: the keys must match our identity.
   */
  async importSecretsFromSecretStorage(secretStorageKey: SecretStorageKey, items: SecretStorageItems): Promise<SignatureUploadRequest> {
    const r = await native(() =>
      this.#native.compatImportSecretsFromSecretStorage(secretStorageKey.native, items.masterKey, items.selfSigningKey, items.userSigningKey),
    );
    this.#untracked.add(r.id);
    return new SignatureUploadRequest(INTERNAL, r.id, signedKeysBody(r.body));
  }

  /** A device we know of, or `null`. `timeout` (seconds) waits for a key query in flight. */
  async getDevice(userId: UserId, deviceId: DeviceId, timeout?: number | null): Promise<Device | null> {
    const trust = await native(() =>
      this.#native.compatDeviceTrust(idString('userId', userId), idString('deviceId', deviceId), timeout ?? undefined),
    );
    return trust ? new Device(trust) : null;
  }
}
