/**
 * Trust: cross-signing of our own account, secret storage and recovery, interactive
 * verification, other users' identities.
 *
 * @module
 */
export * from './cross-signing';
export * from './secret-storage';
export * from './recovery';
export type {
  VerificationCancelCode,
  VerificationCancelInfo,
  VerificationInfo,
  VerificationPhase,
  VerificationPolicy,
  VerificationStep,
  VerificationQrCode,
  VerificationMethodKind,
  SasEmoji,
} from './verification';
