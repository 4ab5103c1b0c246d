/**
 * Application services: end-to-end encryption for many bridged users in one process, fed by the
 * homeserver's transactions. See {@link AppserviceCrypto} and {@link serveAppservice}.
 *
 * @module
 */
export { AppserviceCrypto, defaultDeviceStore } from './manager';
export type {
  AppserviceCryptoOptions,
  AppserviceDeliveryCounters,
  AppserviceEncryptOptions,
  AppserviceEncryptResult,
  AppserviceLimits,
  AppserviceRegistration,
  AppserviceStore,
  AppserviceTimelineEvent,
  BridgedDeviceInfo,
  KeyNeverCame,
  KeyWaitOptions,
  ProcessTransactionOptions,
  SetAsideDevice,
  TransactionDeviceResult,
  TransactionResult,
  UnroutedToDeviceEvents,
} from './manager';
export type { BridgedUserTrust } from './trust';
export type { InboxDrainFailure, InboxDrainOptions, InboxDrainProgress, InboxDrainResult } from './inbox';
export { AppserviceError } from './errors';
export type { AppserviceErrorCode } from './errors';
export { serveAppservice } from './server';
export type { HealthOptions, ReadinessCheck, ReadinessCheckResult, ReadinessReport } from './health';
export type { AppserviceServer, ServeAppserviceOptions } from './server';
export type { MalformedTransactionPart, TransactionBody, TransactionDeviceLists, TransactionToDeviceEvent } from './transaction';
