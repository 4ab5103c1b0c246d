/**
 * Store choices of {@link OlmMachine.open}: where a machine keeps its keys.
 *
 * @module
 */
import {
  deleteStoreAccount,
  listStoreAccounts,
  type StorePostgres as NativeStorePostgres,
  type StoreTarget as NativeStoreTarget,
} from '../native/index';
import { MatrixCryptoError, native } from './errors';
import type { OlmMachine } from './machine';

/**
 * libpq's `sslmode`: how much TLS a PostgreSQL connection over TCP demands (TLS is never used
 * over a unix socket).
 * - `disable`: plain text.
 * - `prefer` (the default): TLS when the server offers it, plain text when it does not.
 * - `require`: TLS or no connection; the server's certificate is not checked unless root
 *   certificates are given (`sslrootcert`, or `~/.postgresql/root.crt`), then as `verify-ca`.
 * - `verify-ca`: TLS with a certificate signed by a certificate authority of `sslrootcert`.
 * - `verify-full`: as `verify-ca`, and the certificate names the host (subjectAltName).
 */
export type PostgresSslMode = 'disable' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';

/**
 * How to reach a PostgreSQL database: a connection string, or its parts. The TLS fields may be
 * given with either, and also inside the connection string (libpq's names), but each in one
 * place only.
 */
export interface PostgresConnection {
  /**
   * A libpq connection string (`host=/run/postgresql user=bot dbname=crypto`) or URL
   * (`postgresql://bot:secret@db.internal:5432/crypto?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem`).
   * Excludes `host`, `port`, `user`, `password` and `database`.
   */
  url?: string;
  /** Host name, IP address, or the folder of a unix socket (default `localhost`). */
  host?: string;
  /** TCP port (default 5432). */
  port?: number;
  /** Role to connect as; required without `url`. */
  user?: string;
  /** The role's password, if the server asks for one. */
  password?: string;
  /** Database name (default: the user's name). */
  database?: string;
  /** Connections this process opens to the database at most, shared by all its machines (default 8). */
  maxConnections?: number;
  /** How much TLS the connection demands (default `prefer`; `verify-full` with `sslrootcert: 'system'`). */
  sslmode?: PostgresSslMode;
  /**
   * The certificate authorities the server's certificate must be signed by: a PEM file, or
   * `system` for the operating system's trusted roots (then only `verify-full` is accepted).
   * Default: `~/.postgresql/root.crt` when that file exists, as in libpq.
   */
  sslrootcert?: string;
  /** A client certificate (PEM file) to present, for servers that authenticate with one (default `~/.postgresql/postgresql.crt` when it exists). */
  sslcert?: string;
  /**
   * The client certificate's private key: an unencrypted PEM file that only its owner can read
   * (default `~/.postgresql/postgresql.key`).
   */
  sslkey?: string;
}

/** Where the machine keeps its keys. */
export type StoreOptions =
  | {
      /**
       * The embedded SQLite store: our engine, in
       * `path/matrix-crypto-node.sqlite3`. Any number of accounts share one folder; the folder
       * is locked to one process. A folder written by matrix-sdk-sqlite (this library before
       * its own engine, or matrix-bot-sdk) opens with that store instead, unchanged.
       */
      kind: 'sqlite';
      /** Folder of the database; created if missing. */
      path: string;
      /** Encrypts the account at rest. Must be the same on every open. */
      passphrase?: string;
    }
  | {
      /** The crate's own matrix-sdk-sqlite store: one account per folder. */
      kind: 'sqlite-crate';
      /** Folder of the database; created if missing. */
      path: string;
      /** Encrypts the store at rest. Must be the same on every open. */
      passphrase?: string;
    }
  | ({
      /**
       * PostgreSQL: any number of accounts and processes in one database. An account is open in
       * one process at a time; another process's open fails with `StoreLocked` until the holder
       * closes it or stops renewing its lease (15 s), then reads the account afresh.
       * Connections over TCP use TLS as libpq's `sslmode` says (see {@link PostgresConnection}).
       */
      kind: 'postgres';
      /** Encrypts the account at rest. Must be the same on every open. */
      passphrase?: string;
    } & PostgresConnection)
  | {
      /** Keys live in memory only and are lost on close: for tests and throwaway devices. */
      kind: 'memory';
    };

/** A store database that holds accounts: a `sqlite` folder or a `postgres` database. */
export type StoreDatabase =
  | {
      /** A folder of our SQLite engine. */
      kind: 'sqlite';
      /** The folder, as given to {@link OlmMachine.open}. */
      path: string;
    }
  | ({
      /** A PostgreSQL database. */
      kind: 'postgres';
    } & PostgresConnection);

/** An account kept in a store database. */
export interface StoreAccount {
  /** Its user id. */
  userId: string;
  /** Its device id. */
  deviceId: string;
  /** Whether it is encrypted at rest with a passphrase. */
  encrypted: boolean;
  /** How many rows it has in the database (keys, sessions, devices, …). */
  rows: number;
}

/** The store options as the native `open` takes them. */
export interface NativeStoreOptions {
  storeKind: string;
  storePath?: string;
  storePassphrase?: string;
  storePostgres?: NativeStorePostgres;
}

function optionalString(field: string, value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string') {
    throw new MatrixCryptoError('InvalidArgument', `${field}: must be a string, got ${typeof value}`, field);
  }
  return value;
}

function optionalInteger(field: string, value: unknown): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
    throw new MatrixCryptoError('InvalidArgument', `${field}: must be a non-negative integer`, field);
  }
  return value;
}

function postgres(store: PostgresConnection): NativeStorePostgres {
  return {
    url: optionalString('store.url', store.url),
    host: optionalString('store.host', store.host),
    port: optionalInteger('store.port', store.port),
    user: optionalString('store.user', store.user),
    password: optionalString('store.password', store.password),
    database: optionalString('store.database', store.database),
    maxConnections: optionalInteger('store.maxConnections', store.maxConnections),
    sslmode: optionalString('store.sslmode', store.sslmode),
    sslrootcert: optionalString('store.sslrootcert', store.sslrootcert),
    sslcert: optionalString('store.sslcert', store.sslcert),
    sslkey: optionalString('store.sslkey', store.sslkey),
  };
}

const KINDS = ['sqlite', 'sqlite-crate', 'postgres', 'memory'];

/** Check `store` field by field and put it in the native shape. */
export function nativeStoreOptions(store: unknown): NativeStoreOptions {
  if (store === null || typeof store !== 'object') {
    throw new MatrixCryptoError('InvalidArgument', 'store: must be an object such as { kind: "sqlite", path }', 'store');
  }
  const s = store as Record<string, unknown>;
  const kind = optionalString('store.kind', s.kind);
  if (kind === undefined || !KINDS.includes(kind)) {
    const given = kind === undefined ? 'missing' : JSON.stringify(kind);
    throw new MatrixCryptoError('InvalidArgument', `store.kind: ${given} is not one of ${KINDS.join(', ')}`, 'store.kind');
  }
  if (kind === 'memory') return { storeKind: kind };
  const passphrase = optionalString('store.passphrase', s.passphrase);
  if (kind === 'postgres') {
    return { storeKind: kind, storePassphrase: passphrase, storePostgres: postgres(s as PostgresConnection) };
  }
  const path = optionalString('store.path', s.path);
  if (path === undefined) {
    throw new MatrixCryptoError('InvalidArgument', `store.path: is required for a ${kind} store`, 'store.path');
  }
  return { storeKind: kind, storePath: path, storePassphrase: passphrase };
}

/** A store database in the native shape of `listStoreAccounts` and its kin. @internal */
export function storeTarget(store: StoreDatabase): NativeStoreTarget {
  const options = nativeStoreOptions(store);
  if (options.storeKind !== 'sqlite' && options.storeKind !== 'postgres') {
    throw new MatrixCryptoError('InvalidArgument', 'store.kind: must be sqlite or postgres', 'store.kind');
  }
  return { kind: options.storeKind, path: options.storePath, postgres: options.storePostgres };
}

/** The accounts of a store database, sorted by user id then device id. */
export async function listAccounts(store: StoreDatabase): Promise<StoreAccount[]> {
  return native(() => listStoreAccounts(storeTarget(store)));
}

/** Delete an account and everything stored for it; whether it existed. */
export async function deleteAccount(store: StoreDatabase, userId: string, deviceId: string): Promise<boolean> {
  return native(() => deleteStoreAccount(storeTarget(store), userId, deviceId));
}
