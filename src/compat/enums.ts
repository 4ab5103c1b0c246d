/**
 * The enums of `@matrix-org/matrix-sdk-crypto-nodejs` 0.6, with the same member names and
 * numbers (code compiled against the official `const enum`s inlines the numbers).
 *
 * @module
 */

/** An encryption algorithm to be used to encrypt messages sent to a room. */
export enum EncryptionAlgorithm {
  /** Olm version 1 using Curve25519, AES-256, and SHA-256 (not usable for rooms). */
  OlmV1Curve25519AesSha2 = 0,
  /** Megolm version 1 using AES-256 and SHA-256. */
  MegolmV1AesSha2 = 1,
}

/** Which devices receive room keys. */
export enum CollectStrategy {
  /** Every device that is not blacklisted (the default). */
  AllDevices = 0,
  /** Like `AllDevices`, but sharing fails when a verified user has an unsigned device or a new identity. */
  ErrorOnVerifiedUserProblem = 1,
  /** Only devices signed by their owner's cross-signing identity. */
  IdentityBasedStrategy = 2,
  /** Only devices we trust (verified locally or through cross-signing, or our own). */
  OnlyTrustedDevices = 3,
}

/** The colour of the shield a client would show next to a message. */
export enum ShieldColor {
  /** A problem with the sender's authenticity. */
  Red = 0,
  /** A minor concern. */
  Grey = 1,
  /** Nothing to flag. */
  None = 2,
}

/** Why a shield is red or grey. */
export enum ShieldStateCode {
  /** Not enough information available to check the authenticity. */
  AuthenticityNotGuaranteed = 0,
  /** The sending device isn't yet known by the Client. */
  UnknownDevice = 1,
  /** The sending device hasn't been verified by the sender. */
  UnsignedDevice = 2,
  /** The sender hasn't been verified by the Client's user. */
  UnverifiedIdentity = 3,
  /** The `sender` of the event is not the owner of the device that created the session. */
  MismatchedSender = 4,
  /** The sender was previously verified but changed their identity. */
  VerificationViolation = 5,
  /** No shield. */
  None = 6,
}

/** Who can see a room's history. */
export enum HistoryVisibility {
  /** Members, from the point they were invited. */
  Invited = 0,
  /** Members, from the point they joined. */
  Joined = 1,
  /** Members, all of it (the default). */
  Shared = 2,
  /** Anyone. */
  WorldReadable = 3,
}

/** The basic key algorithm names in the specification. */
export enum DeviceKeyAlgorithmName {
  /** The Ed25519 signature algorithm. */
  Ed25519 = 0,
  /** The Curve25519 ECDH algorithm. */
  Curve25519 = 1,
  /** Another algorithm; its name is `DeviceKeyAlgorithm.toString()`. */
  Unknown = 2,
}

/** The type of store an `OlmMachine` can use. */
export enum StoreType {
  /** The SQLite store (the only kind with a path). */
  Sqlite = 0,
}

/** The type of an outgoing request. */
export enum RequestType {
  /** A `KeysUploadRequest`. */
  KeysUpload = 0,
  /** A `KeysQueryRequest`. */
  KeysQuery = 1,
  /** A `KeysClaimRequest`. */
  KeysClaim = 2,
  /** A `ToDeviceRequest`. */
  ToDevice = 3,
  /** A `SignatureUploadRequest`. */
  SignatureUpload = 4,
  /** A `RoomMessageRequest`. */
  RoomMessage = 5,
  /** A `KeysBackupRequest`. */
  KeysBackup = 6,
}

/** The result of a signature check. */
export enum SignatureState {
  /** The signature is missing. */
  Missing = 0,
  /** The signature is invalid. */
  Invalid = 1,
  /** The signature is valid, but its signer is not trusted. */
  ValidButNotTrusted = 2,
  /** The signature is valid and its signer is trusted. */
  ValidAndTrusted = 3,
}
