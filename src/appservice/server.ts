/**
 * {@link serveAppservice}: a small `node:http` server for the homeserver → appservice API, for
 * bridges that do not have one already. It answers transactions (through
 * {@link AppserviceCrypto.processTransaction}), pings and, with a callback, user queries;
 * health probes and metrics; everything else gets 404 `M_UNRECOGNIZED`.
 *
 * @module
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { healthOptions, readiness, type HealthOptions } from './health';
import type { AppserviceCrypto, TransactionResult } from './manager';
import { LEASE_MS } from './state';

/** Options of {@link serveAppservice}. */
export interface ServeAppserviceOptions {
  /** The port to listen on; `0` picks a free one (read it from {@link AppserviceServer.port}). */
  port: number;
  /** The address to bind. Default `127.0.0.1`. */
  host?: string;
  /**
   * Called with each processed transaction before it is acknowledged. If it throws, the
   * homeserver is answered 500 and retries the transaction, which is handed to it again; so
   * throw only for failures a retry can fix (the malformed parts of a transaction are in
   * {@link TransactionResult.malformed}, already skipped).
   */
  onEvents?: (result: TransactionResult) => void | Promise<void>;
  /**
   * Answers `GET /_matrix/app/v1/users/{userId}`: whether the user exists (create it first if
   * needed). Default: 404 for every user.
   */
  onUserQuery?: (userId: string) => boolean | Promise<boolean>;
  /** Called with every error answered 500 (for logging). Default: none. */
  onError?: (error: unknown, txnId: string | undefined) => void;
  /** Largest accepted request body in bytes. Default 64 MiB. */
  maxBodyBytes?: number;
  /** The readiness conditions of `GET /health/ready` (see {@link HealthOptions} for the defaults). */
  health?: HealthOptions;
}

/** A running appservice HTTP server. */
export interface AppserviceServer {
  /** The port it listens on. */
  readonly port: number;
  /** The `node:http` server. */
  readonly server: Server;
  /** Stops accepting requests and resolves once open connections are closed. */
  close(): Promise<void>;
}

function reply(res: ServerResponse, status: number, body: Record<string, unknown>): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function readBody(req: IncomingMessage, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > max) {
        reject(Object.assign(new Error('request body too large'), { status: 413 }));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/** The token the homeserver presented: the `Authorization` header, or the legacy `access_token` parameter. */
function presentedToken(req: IncomingMessage, url: URL): string | undefined {
  const auth = req.headers.authorization;
  if (auth?.startsWith('Bearer ')) return auth.slice('Bearer '.length);
  return url.searchParams.get('access_token') ?? undefined;
}

function sameToken(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * Serves the homeserver → appservice API for an {@link AppserviceCrypto}:
 * `PUT /_matrix/app/v1/transactions/{txnId}` (and the legacy `/transactions/{txnId}`),
 * `POST /_matrix/app/v1/ping` and `GET /_matrix/app/v1/users/{userId}`. Every request must carry
 * the registration's `hs_token` (401 `M_UNAUTHORIZED` without one, 403 `M_FORBIDDEN` for a
 * wrong one). A transaction is answered 200 once processed, malformed parts included (they are
 * skipped and reported in the {@link TransactionResult}, as is a body that is not JSON at all);
 * 500 when it failed in a way a retry can fix ({@link AppserviceCrypto.processTransaction}
 * rejected, or `onEvents` threw), so the homeserver retries it; 413 for a body over
 * `maxBodyBytes`.
 *
 * Without the token (for probes and scrapers): `GET /health/live` answers 200
 * `{ status: 'live' }` while the process serves; `GET /health/ready` answers 200 or 503 with a
 * {@link ReadinessReport} (see {@link HealthOptions}); `GET /metrics` answers the text
 * exposition of the prom-client registry the `AppserviceCrypto` was opened with (404 without one).
 *
 * On a PostgreSQL store shared by several processes (see {@link AppserviceCrypto.open}), call it
 * once `open` resolved: only the serving process listens. When the port is still held by a
 * process that lost the lease (it was paused past it), listening is retried until that process
 * lets go (for at most two leases); a process that loses the lease stops listening.
 *
 * @throws {@link MatrixCryptoError} `InvalidArgument` naming the bad `health` option.
 */
export async function serveAppservice(crypto: AppserviceCrypto, options: ServeAppserviceOptions): Promise<AppserviceServer> {
  const host = options.host ?? '127.0.0.1';
  const maxBody = options.maxBodyBytes ?? 64 * 1024 * 1024;
  const health = healthOptions(options.health);
  const server = createServer((req, res) => {
    void handle(req, res).catch((err: unknown) => {
      options.onError?.(err, undefined);
      if (!res.headersSent) reply(res, 500, { errcode: 'M_UNKNOWN', error: 'internal error' });
    });
  });
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://appservice');
    if (req.method === 'GET' && url.pathname === '/health/live') return reply(res, 200, { status: 'live' });
    if (req.method === 'GET' && url.pathname === '/health/ready') {
      const report = await readiness(crypto, health);
      return reply(res, report.status === 'ready' ? 200 : 503, { ...report });
    }
    if (req.method === 'GET' && url.pathname === '/metrics') {
      const registry = crypto.metricsRegistry;
      if (!registry) return reply(res, 404, { errcode: 'M_NOT_FOUND', error: 'no metrics registry: open the AppserviceCrypto with metrics: { registry }' });
      const text = await registry.metrics();
      res.writeHead(200, { 'Content-Type': registry.contentType, 'Content-Length': Buffer.byteLength(text) });
      return void res.end(text);
    }
    const token = presentedToken(req, url);
    if (token === undefined) return reply(res, 401, { errcode: 'M_UNAUTHORIZED', error: 'missing hs_token' });
    if (!sameToken(token, crypto.hsToken)) return reply(res, 403, { errcode: 'M_FORBIDDEN', error: 'wrong hs_token' });
    const path = url.pathname;
    const txn = /^(?:\/_matrix\/app\/v1)?\/transactions\/([^/]+)$/.exec(path);
    if (txn && req.method === 'PUT') {
      const txnId = decodeURIComponent(txn[1]!);
      let body: unknown;
      try {
        body = JSON.parse(await readBody(req, maxBody));
      } catch (err) {
        const status = (err as { status?: number }).status;
        if (status === 413) return reply(res, 413, { errcode: 'M_TOO_LARGE', error: (err as Error).message });
        // Not JSON: processed as a malformed body (reported in the result), so that the
        // homeserver, which resends a transaction until it is answered 200, can move on.
        body = undefined;
      }
      try {
        await crypto.processTransaction(txnId, body, options.onEvents ? { onResult: options.onEvents } : {});
      } catch (err) {
        options.onError?.(err, txnId);
        return reply(res, 500, { errcode: 'M_UNKNOWN', error: `transaction ${txnId} failed; retry it` });
      }
      return reply(res, 200, {});
    }
    if (path === '/_matrix/app/v1/ping' && req.method === 'POST') {
      await readBody(req, maxBody);
      return reply(res, 200, {});
    }
    const user = /^(?:\/_matrix\/app\/v1)?\/users\/([^/]+)$/.exec(path);
    if (user && req.method === 'GET') {
      const exists = options.onUserQuery ? await options.onUserQuery(decodeURIComponent(user[1]!)) : false;
      return exists ? reply(res, 200, {}) : reply(res, 404, { errcode: 'M_NOT_FOUND', error: 'no such user' });
    }
    return reply(res, 404, { errcode: 'M_UNRECOGNIZED', error: `unrecognised request ${req.method} ${path}` });
  };
  const listen = (): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  for (const deadline = Date.now() + 2 * LEASE_MS; ; ) {
    try {
      await listen();
      break;
    } catch (err) {
      if (!(crypto.sharesStore && (err as NodeJS.ErrnoException).code === 'EADDRINUSE' && Date.now() < deadline)) throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  // Another process serves now: let it have the port.
  void crypto.whenLeaseLost().then(() => {
    server.close();
    server.closeAllConnections();
  });
  return {
    port: (server.address() as AddressInfo).port,
    server,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}
