/**
 * Application services: end-to-end encryption for many bridged users in one process, fed by the
 * homeserver's transactions. See {@link AppserviceCrypto} and {@link serveAppservice}.
 *
 * @module
 */
export { AppserviceCrypto, defaultDeviceStore } from './manager';
export type {
  AppserviceCryptoOptions,
  AppserviceEncryptOptions,
  AppserviceEncryptResult,
  AppserviceLimits,
  AppserviceRegistration,
  AppserviceStore,
  AppserviceTimelineEvent,
  BridgedDeviceInfo,
  ProcessTransactionOptions,
  TransactionDeviceResult,
  TransactionResult,
} from './manager';
export { AppserviceError } from './errors';
export type { AppserviceErrorCode } from './errors';
export { serveAppservice } from './server';
export type { AppserviceServer, ServeAppserviceOptions } from './server';
export type { TransactionBody, TransactionDeviceLists, TransactionToDeviceEvent } from './transaction';
