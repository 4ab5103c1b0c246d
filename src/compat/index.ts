/**
 * `matrix-crypto-node/compat`: the API of `@matrix-org/matrix-sdk-crypto-nodejs` 0.6 (same
 * classes, method names, argument order and JSON-string conventions), so code written for the
 * official bindings, matrix-bot-sdk among it, runs on this library unchanged.
 *
 * To use it under the official package's name, install the `matrix-crypto-node-compat` shim
 * through an npm alias (see docs/compat.md).
 *
 * @example
 * ```ts
 * import { OlmMachine, UserId, DeviceId, DeviceLists } from 'matrix-crypto-node/compat';
 * const machine = await OlmMachine.initialize(new UserId('@bot:example.org'), new DeviceId('BOT'), './crypto');
 * const [events, roomKeys] = JSON.parse(
 *   await machine.receiveSyncChanges(JSON.stringify(sync.to_device.events), new DeviceLists(), {}, []),
 * );
 * ```
 *
 * @module matrix-crypto-node/compat
 */
export * from './enums';
export { MatrixCryptoError, DecryptionError } from '../errors';
export { UserId, DeviceId, DeviceKeyId, DeviceKeyAlgorithm, RoomId, ServerName } from './identifiers';
export { Ed25519PublicKey, Curve25519PublicKey, IdentityKeys, Ed25519Signature, Signature, MaybeSignature, Signatures } from './keys';
export {
  KeysUploadRequest,
  KeysQueryRequest,
  KeysClaimRequest,
  ToDeviceRequest,
  SignatureUploadRequest,
  RoomMessageRequest,
  KeysBackupRequest,
  CrossSigningBootstrapRequests,
} from './requests';
export type { AnyOutgoingRequest } from './requests';
export { BackupDecryptionKey, MegolmV1BackupKey, RoomKeyCounts, BackupKeys, SignatureVerification } from './backup';
export { SecretStorageKey, SecretStorageItems } from './secret-storage';
export { Attachment, EncryptedAttachment } from './attachment';
export {
  OlmMachine,
  EncryptionSettings,
  DeviceLists,
  ShieldState,
  DecryptedRoomEvent,
  CrossSigningStatus,
  Device,
  Versions,
  getVersions,
} from './machine';
