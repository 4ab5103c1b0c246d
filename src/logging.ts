/**
 * Logs of the Rust core (matrix-sdk-crypto's `tracing` output), routed to a logger the
 * application passes in. Off until {@link setLogger} is called.
 *
 * @module
 */
import { flushLogSink, setLogSink, type LogRecord as NativeLogRecord } from '../native/index';
import { MatrixCryptoError, nativeSync } from './errors';

/** Severity of a {@link LogRecord}, most severe first. */
export type LogLevel = 'error' | 'warn' | 'info' | 'debug' | 'trace';

/** A span (a unit of work such as `decrypt_room_event`) that a log event happened in. */
export interface LogSpan {
  /** The span's name, e.g. `decrypt_room_event` or `receive_sync_changes`. */
  name: string;
  /** The fields recorded on the span, e.g. `room_id`, `session_id`, `sender`. */
  fields: Record<string, string>;
}

/** One log event of the Rust core. */
export interface LogRecord {
  /** Its severity. */
  level: LogLevel;
  /** The Rust module that logged it, e.g. `matrix_sdk_crypto::machine`. */
  target: string;
  /** The message, e.g. `Failed to decrypt a room event: ...`. */
  message: string;
  /** Structured fields of the event. */
  fields: Record<string, string>;
  /** The spans the event happened in, outermost first: they carry the room, session, sender. */
  spans: LogSpan[];
  /** When it was logged, in milliseconds since the Unix epoch. */
  timestamp: number;
}

/** A function that receives every {@link LogRecord} at or above the chosen level. */
export type LogSink = (record: LogRecord) => void;

/**
 * An object logger such as `console`, pino, winston or bunyan: each record is passed as one
 * formatted string ({@link formatLogRecord}) to the method of its level; `trace` records go to
 * `debug`, because `console.trace` prints a stack.
 */
export interface LoggerLike {
  /** Receives `error` records. */
  error(message: string): void;
  /** Receives `warn` records. */
  warn(message: string): void;
  /** Receives `info` records. */
  info(message: string): void;
  /** Receives `debug` and `trace` records. */
  debug(message: string): void;
}

/** Options of {@link setLogger}. */
export interface LoggingOptions {
  /** The least severe level passed on. Default: `info`. */
  level?: LogLevel;
}

const LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug', 'trace'];

/** The target of the native marker record that {@link flushLogs} waits for (never passed on). */
const FLUSH_TARGET = 'matrix_crypto_node::flush';
const flushes = new Map<string, () => void>();
let flushCount = 0;

function settleFlush(token: string): void {
  const resolve = flushes.get(token);
  flushes.delete(token);
  resolve?.();
}

function settleAllFlushes(): void {
  for (const token of [...flushes.keys()]) settleFlush(token);
}

function spanText(span: LogSpan): string {
  const fields = Object.entries(span.fields).map(([k, v]) => `${k}=${v}`);
  return fields.length === 0 ? span.name : `${span.name}{${fields.join(' ')}}`;
}

/**
 * One line for a record: `target: message key=value [span{field=value} > span{...}]`, without
 * the level and time (loggers add their own).
 *
 * @example
 * ```ts
 * setLogger((record) => myLog.write(`${record.level} ${formatLogRecord(record)}`));
 * // warn matrix_sdk_crypto::machine: Failed to decrypt a room event: ... [decrypt_room_event{room_id="!r:x" session_id=... sender=...}]
 * ```
 */
export function formatLogRecord(record: LogRecord): string {
  let line = `${record.target}: ${record.message}`;
  for (const [k, v] of Object.entries(record.fields)) line += ` ${k}=${v}`;
  if (record.spans.length > 0) line += ` [${record.spans.map(spanText).join(' > ')}]`;
  return line;
}

function toSink(logger: LogSink | LoggerLike): LogSink {
  if (typeof logger === 'function') return logger;
  for (const method of ['error', 'warn', 'info', 'debug'] as const) {
    if (typeof logger[method] !== 'function') {
      throw new MatrixCryptoError('InvalidArgument', `logger: must be a function or have an ${method}() method`, 'logger');
    }
  }
  return (record) => {
    const method = record.level === 'trace' ? 'debug' : record.level;
    logger[method](formatLogRecord(record));
  };
}

/**
 * Send the Rust core's logs to `logger`, from `options.level` (default `info`) up; `null`
 * turns logging off again. The setting is process-wide: the last call wins, for every
 * machine. Records arrive asynchronously, on the JS thread, shortly after the operation that
 * logged them. If the logger throws, the error is reported once as a process warning and
 * later records are still delivered.
 *
 * @throws {@link MatrixCryptoError} `InvalidArgument` for an unknown level or a logger that is
 *   neither a function nor has `error`/`warn`/`info`/`debug` methods.
 *
 * @example See why a message failed to decrypt
 * ```ts
 * import { setLogger } from 'matrix-crypto-node';
 *
 * setLogger(console, { level: 'warn' });
 * // console.warn: matrix_sdk_crypto::machine: Failed to decrypt a room event: Can't find the
 * //   room key to decrypt the event, withheld code: Some(Unverified) [decrypt_room_event{...}]
 * ```
 *
 * @example Structured records into your own logger
 * ```ts
 * setLogger((r) => pino.child({ target: r.target, spans: r.spans })[r.level](r.fields, r.message), { level: 'debug' });
 * ```
 */
export function setLogger(logger: LogSink | LoggerLike | null, options: LoggingOptions = {}): void {
  const level = options.level ?? 'info';
  if (!LEVELS.includes(level)) {
    throw new MatrixCryptoError('InvalidArgument', `level: ${JSON.stringify(level)} is not one of ${LEVELS.join(', ')}`, 'level');
  }
  if (logger === null) {
    nativeSync(() => setLogSink(null, 'off'));
    settleAllFlushes();
    jsSink = null;
    return;
  }
  const sink = toSink(logger);
  settleAllFlushes();
  let warned = false;
  const deliver = (record: LogRecord): void => {
    try {
      sink(record);
    } catch (err) {
      if (!warned) {
        warned = true;
        process.emitWarning(`matrix-crypto-node: the logger passed to setLogger threw: ${String(err)}`);
      }
    }
  };
  nativeSync(() =>
    setLogSink((record: NativeLogRecord) => {
      if (record.target === FLUSH_TARGET) settleFlush(record.message);
      else deliver(record as LogRecord);
    }, level),
  );
  jsSink = { deliver, upTo: LEVELS.indexOf(level) };
}

/** Where records of the TypeScript layer go: the logger of the last {@link setLogger}, if any. */
let jsSink: { deliver: (record: LogRecord) => void; upTo: number } | null = null;

/**
 * Logs a record of the TypeScript layer (e.g. the appservice manager) to the same logger as the
 * Rust core's, under a `matrix_crypto_node::...` target.
 *
 * @internal
 */
export function logRecord(level: LogLevel, target: string, message: string, fields: Record<string, string> = {}): void {
  if (jsSink === null || LEVELS.indexOf(level) > jsSink.upTo) return;
  jsSink.deliver({ level, target, message, fields, spans: [], timestamp: Date.now() });
}

/**
 * Resolves once every record the Rust core logged before this call has reached the logger set
 * with {@link setLogger} (records arrive asynchronously, on the JS thread). Resolves at once
 * when no logger is set, and when the logger is replaced or logging turned off before the
 * records arrive.
 * @example Read the records an operation logged
 * ```ts
 * const records: LogRecord[] = [];
 * setLogger((r) => records.push(r), { level: 'warn' });
 * await machine.receiveSyncChanges(changes);
 * await flushLogs(); // records now holds every warning receiveSyncChanges logged
 * ```
 */
export function flushLogs(): Promise<void> {
  const token = String(++flushCount);
  return new Promise((resolve) => {
    flushes.set(token, resolve);
    if (!nativeSync(() => flushLogSink(token))) settleFlush(token);
  });
}
