/**
 * matrix-crypto-node: end-to-end encryption for Node Matrix bots, bridges and application
 * services, over matrix-sdk-crypto.
 *
 * @module matrix-crypto-node
 */
export { OlmMachine } from './machine';
export type { OpenOptions, StoreOptions, CrossSigningBootstrapRequests, ShareResult } from './machine';
export type { PostgresConnection, PostgresSslMode, StoreAccount, StoreDatabase } from './store';
export { MatrixCryptoError, DecryptionError } from './errors';
export type { ErrorCode, DecryptionErrorCode } from './errors';
export type * from './requests';
export type * from './types';
export type * from './withheld';
export type * from './bundles';
export * from './transport';
export { terminalProgressBar } from './progress';
export type { ProgressCallback, ProgressBarOptions } from './progress';
export { setLogger, formatLogRecord, flushLogs } from './logging';
export type { LogLevel, LogRecord, LogSpan, LogSink, LoggerLike, LoggingOptions } from './logging';
export * from './client';
export * from './trust';
export * from './appservice';
export type { CounterSnapshot, HistogramSample, HistogramSnapshot, MetricSample, MetricsOptions, MetricsSnapshot, PrometheusRegistry } from './metrics/recorder';
export type { HistogramMetricName, MetricName, ValueMetricName } from './metrics/definitions';
