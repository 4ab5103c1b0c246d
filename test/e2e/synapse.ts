/**
 * Test helper: run a throw-away Synapse homeserver on 127.0.0.1 for end-to-end tests.
 *
 * Synapse comes from the project-local venv that `scripts/install-synapse.sh` creates
 * (`.venv-synapse/`, or `$SYNAPSE_VENV`). Each {@link startSynapse} call gets a fresh data
 * directory (config, signing key, SQLite database, media store) under the OS temp dir, a free
 * port, registration closed except through the shared-secret admin API, and every rate limit
 * raised so that tests are never answered 429.
 *
 * Environment:
 * - `SYNAPSE_VENV`: the venv to run Synapse from (default: `.venv-synapse/` in the first
 *   ancestor of the working directory that has one).
 * - `SYNAPSE_KEEP_DATA=1`: keep the data directory after `stop()` (its path is printed).
 * - `SYNAPSE_LOG_LEVEL`: root log level (default `INFO`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac, generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';

/** Options for {@link startSynapse}. */
export interface StartSynapseOptions {
  /** How long to wait for `/_matrix/client/versions` to answer. Default 60 000 ms. */
  startupTimeoutMs?: number;
  /** Top-level keys merged over the generated `homeserver.yaml` (shallow merge). */
  extraConfig?: Record<string, unknown>;
  /** The venv holding Synapse. Default: `$SYNAPSE_VENV` or the nearest `.venv-synapse/`. */
  venv?: string;
  /** Keep the data directory after `stop()`. Default: `$SYNAPSE_KEEP_DATA === '1'`. */
  keepData?: boolean;
  /** Root log level. Default: `$SYNAPSE_LOG_LEVEL` or `INFO`. */
  logLevel?: 'DEBUG' | 'INFO' | 'WARNING' | 'ERROR';
  /**
   * Appservice registrations (the registration file's content, e.g. `{ id, url, as_token,
   * hs_token, sender_localpart, namespaces, ... }`), written to files in the data directory and
   * listed in `app_service_config_files`. See {@link appserviceRegistration}.
   */
  appservices?: Array<Record<string, unknown>>;
}

/**
 * A registration for an encrypting appservice on this Synapse: MSC2409/MSC4203 to-device events
 * and ephemeral events in transactions (`receive_ephemeral`), MSC3202 transaction extensions
 * (`org.matrix.msc3202`) and MSC4190 device management (`io.element.msc4190`). Pair it with
 * {@link APPSERVICE_EXPERIMENTAL_FEATURES} in `extraConfig`.
 */
export function appserviceRegistration(opts: { id: string; url: string; senderLocalpart: string; userRegex: string }): Record<string, unknown> {
  return {
    id: opts.id,
    url: opts.url,
    as_token: randomBytes(16).toString('hex'),
    hs_token: randomBytes(16).toString('hex'),
    sender_localpart: opts.senderLocalpart,
    namespaces: { users: [{ exclusive: true, regex: opts.userRegex }], aliases: [], rooms: [] },
    rate_limited: false,
    receive_ephemeral: true,
    'org.matrix.msc3202': true,
    'io.element.msc4190': true,
  };
}

/** The Synapse experimental features that put to-device events (MSC2409/MSC4203) and MSC3202 data into appservice transactions. */
export const APPSERVICE_EXPERIMENTAL_FEATURES = {
  msc2409_to_device_messages_enabled: true,
  msc3202_transaction_extensions: true,
};

/** A user account on the test homeserver, with a logged-in device. */
export interface TestUser {
  /** Full Matrix user id, e.g. `@alice:localhost`. */
  userId: string;
  /** Access token of the device. */
  accessToken: string;
  /** The device id the token belongs to. */
  deviceId: string;
  /** The account password (for further logins). */
  password: string;
}

/** A running test homeserver. */
export interface Homeserver {
  /** e.g. `http://127.0.0.1:34567` */
  baseUrl: string;
  /** Always `localhost`. */
  serverName: string;
  /** The data directory (config, database, signing key). Removed by `stop()`. */
  dataDir: string;
  /** OS process id of Synapse. */
  pid: number;
  /** Stops Synapse (SIGTERM, then SIGKILL after 5 s) and removes the data directory. Idempotent. */
  stop(): Promise<void>;
  /**
   * Stops Synapse (SIGTERM) and starts it again on the same port, data directory and database,
   * as an operator's restart; resolves once the client API answers again.
   */
  restart(): Promise<void>;
  /** The last `lines` lines (default 100) of Synapse's log (its stdout and stderr). */
  logTail(lines?: number): string;
  /**
   * Registers a user through the shared-secret admin API and returns its first device.
   * `password` defaults to a random one (returned in the result).
   */
  registerUser(
    localpart: string,
    password?: string,
    opts?: { admin?: boolean; displayName?: string },
  ): Promise<TestUser>;
  /** Logs in with a password, creating a new device (or reusing `deviceId`). */
  login(userId: string, password: string, deviceId?: string): Promise<TestUser>;
}

const SERVER_NAME = 'localhost';

/**
 * Runs `synapse.app.homeserver` as `__main__` and exits when its parent process goes away, so a
 * test runner killed hard (no 'exit' handlers) does not leave Synapse running.
 */
const BOOTSTRAP = [
  'import os, runpy, threading, time',
  'ppid = os.getppid()',
  'def watch():',
  '    while True:',
  '        time.sleep(1)',
  '        if os.getppid() != ppid:',
  '            os._exit(1)',
  'threading.Thread(target=watch, daemon=True).start()',
  "runpy.run_module('synapse.app.homeserver', run_name='__main__', alter_sys=True)",
].join('\n');
const LOG_RING_LINES = 5000;

/** The relaxed rate limit used for every limiter: effectively unlimited. */
const UNLIMITED = { per_second: 100_000, burst_count: 100_000 };

/** Finds the Synapse venv: `$SYNAPSE_VENV`, else `.venv-synapse/` in the nearest ancestor of cwd. */
export function findSynapseVenv(): string | undefined {
  const env = process.env.SYNAPSE_VENV;
  if (env) return existsSync(join(env, 'bin', 'python')) ? resolve(env) : undefined;
  let dir = process.cwd();
  for (;;) {
    const candidate = join(dir, '.venv-synapse');
    if (existsSync(join(candidate, 'bin', 'python'))) return candidate;
    const parent = dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

/** Whether a Synapse venv is installed (see `scripts/install-synapse.sh`). */
export function synapseInstalled(): boolean {
  return findSynapseVenv() !== undefined;
}

/** A free TCP port on 127.0.0.1 (the OS picks it; there is a small race until Synapse binds it). */
async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => {
        if (addr && typeof addr === 'object') resolvePort(addr.port);
        else reject(new Error('could not get a free port'));
      });
    });
  });
}

function unpaddedBase64(buf: Buffer): string {
  return buf.toString('base64').replace(/=+$/, '');
}

/** An ed25519 signing key in Synapse's file format: `ed25519 <version> <unpadded base64 seed>`. */
function signingKeyFile(): string {
  const { privateKey } = generateKeyPairSync('ed25519');
  // PKCS#8 DER of an ed25519 key ends with the 32-byte seed.
  const der = privateKey.export({ format: 'der', type: 'pkcs8' });
  const seed = der.subarray(der.length - 32);
  return `ed25519 a_${randomBytes(3).toString('hex')} ${unpaddedBase64(seed)}\n`;
}

function homeserverConfig(dataDir: string, port: number, sharedSecret: string): Record<string, unknown> {
  return {
    server_name: SERVER_NAME,
    public_baseurl: `http://127.0.0.1:${port}/`,
    pid_file: join(dataDir, 'homeserver.pid'),
    listeners: [
      {
        port,
        bind_addresses: ['127.0.0.1'],
        type: 'http',
        tls: false,
        x_forwarded: false,
        resources: [{ names: ['client'], compress: false }],
      },
    ],
    database: { name: 'sqlite3', args: { database: join(dataDir, 'homeserver.db') } },
    log_config: join(dataDir, 'log.config'),
    media_store_path: join(dataDir, 'media_store'),
    signing_key_path: join(dataDir, 'signing.key'),
    registration_shared_secret: sharedSecret,
    macaroon_secret_key: randomBytes(24).toString('hex'),
    form_secret: randomBytes(24).toString('hex'),
    enable_registration: false,
    report_stats: false,
    enable_metrics: false,
    url_preview_enabled: false,
    presence: { enabled: false },
    // No federation: no key servers, no outbound federation.
    trusted_key_servers: [],
    suppress_key_server_warning: true,
    federation_domain_whitelist: [],
    // Password hashing dominates registration/login time at the default cost (12).
    bcrypt_rounds: 4,
    // Rate limits: effectively off.
    rc_message: UNLIMITED,
    rc_registration: UNLIMITED,
    rc_registration_token_validity: UNLIMITED,
    rc_login: { address: UNLIMITED, account: UNLIMITED, failed_attempts: UNLIMITED },
    rc_joins: { local: UNLIMITED, remote: UNLIMITED },
    rc_joins_per_room: UNLIMITED,
    rc_key_requests: UNLIMITED,
    rc_invites: { per_room: UNLIMITED, per_user: UNLIMITED, per_issuer: UNLIMITED },
    rc_3pid_validation: UNLIMITED,
    rc_third_party_invite: UNLIMITED,
    rc_admin_redaction: UNLIMITED,
    rc_media_create: UNLIMITED,
    rc_presence: { per_user: UNLIMITED },
    rc_delayed_event_mgmt: UNLIMITED,
    rc_room_creation: UNLIMITED,
    rc_reports: UNLIMITED,
    rc_user_directory: UNLIMITED,
    rc_profile: UNLIMITED,
    rc_federation: { window_size: 1000, sleep_limit: 100_000, sleep_delay: 0, reject_limit: 100_000, concurrent: 100 },
  };
}

function logConfig(level: string): Record<string, unknown> {
  // Log to stderr, which the helper keeps in a ring buffer for logTail().
  return {
    version: 1,
    formatters: {
      precise: { format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s' },
    },
    handlers: { console: { class: 'logging.StreamHandler', formatter: 'precise', stream: 'ext://sys.stderr' } },
    loggers: { 'synapse.storage.SQL': { level: 'INFO' }, 'twisted': { level: 'WARNING' } },
    root: { level, handlers: ['console'] },
    disable_existing_loggers: false,
  };
}

/** Keeps the last `max` lines of a stream of text chunks. */
class LineRing {
  private lines: string[] = [];
  private partial = '';
  constructor(private readonly max: number) {}
  push(chunk: string): void {
    const parts = (this.partial + chunk).split('\n');
    this.partial = parts.pop() ?? '';
    for (const line of parts) this.lines.push(line);
    if (this.lines.length > this.max) this.lines.splice(0, this.lines.length - this.max);
  }
  tail(n: number): string {
    const all = this.partial ? [...this.lines, this.partial] : this.lines;
    return all.slice(-n).join('\n');
  }
}

async function postJson(url: string, body: unknown, what: string): Promise<Record<string, unknown>> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${what}: HTTP ${res.status}: ${text}`);
  return JSON.parse(text) as Record<string, unknown>;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Starts a fresh Synapse and resolves once `/_matrix/client/versions` answers.
 * Always `stop()` it (e.g. in `afterAll`); the child is also killed if this process exits.
 */
export async function startSynapse(opts: StartSynapseOptions = {}): Promise<Homeserver> {
  const venv = opts.venv ?? findSynapseVenv();
  if (!venv) {
    throw new Error('Synapse is not installed: run scripts/install-synapse.sh (or set SYNAPSE_VENV)');
  }
  const python = join(venv, 'bin', 'python');
  const startupTimeoutMs = opts.startupTimeoutMs ?? 60_000;
  const keepData = opts.keepData ?? process.env.SYNAPSE_KEEP_DATA === '1';
  const logLevel = opts.logLevel ?? process.env.SYNAPSE_LOG_LEVEL ?? 'INFO';

  const dataDir = await mkdtemp(join(tmpdir(), 'synapse-test-'));
  const sharedSecret = randomBytes(32).toString('hex');
  // Another process can take the port between freePort() and Synapse's bind: retry then.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const appserviceFiles: string[] = [];
    for (const [i, registration] of (opts.appservices ?? []).entries()) {
      const file = join(dataDir, `appservice-${i}.yaml`);
      await writeFile(file, JSON.stringify(registration, null, 2));
      appserviceFiles.push(file);
    }
    const config = {
      ...homeserverConfig(dataDir, port, sharedSecret),
      ...(appserviceFiles.length ? { app_service_config_files: appserviceFiles } : {}),
      ...opts.extraConfig,
    };
    const configPath = join(dataDir, 'homeserver.yaml');
    // JSON is valid YAML, so no YAML library is needed.
    await writeFile(configPath, JSON.stringify(config, null, 2));
    await writeFile(join(dataDir, 'log.config'), JSON.stringify(logConfig(logLevel), null, 2));
    if (!existsSync(join(dataDir, 'signing.key'))) {
      await writeFile(join(dataDir, 'signing.key'), signingKeyFile(), { mode: 0o600 });
    }
    try {
      let current = await launch(python, configPath, dataDir, port, sharedSecret, startupTimeoutMs, keepData);
      const hs: Homeserver = {
        baseUrl: current.baseUrl,
        serverName: current.serverName,
        dataDir,
        get pid() {
          return current.pid;
        },
        stop: () => current.stop(),
        restart: async () => {
          await current.halt();
          current = await launch(python, configPath, dataDir, port, sharedSecret, startupTimeoutMs, keepData);
        },
        logTail: (lines) => current.logTail(lines),
        registerUser: (...args) => current.registerUser(...args),
        login: (...args) => current.login(...args),
      };
      return hs;
    } catch (err) {
      if (attempt < 3 && err instanceof Error && /Address already in use|CannotListenError/.test(err.message)) {
        continue;
      }
      if (!keepData) await rm(dataDir, { recursive: true, force: true });
      throw err;
    }
  }
}

async function launch(
  python: string,
  configPath: string,
  dataDir: string,
  port: number,
  sharedSecret: string,
  startupTimeoutMs: number,
  keepData: boolean,
): Promise<Omit<Homeserver, 'restart'> & { halt(): Promise<void> }> {
  const t0 = Date.now();
  const log = new LineRing(LOG_RING_LINES);
  const child: ChildProcess = spawn(python, ['-c', BOOTSTRAP, '-c', configPath], {
    cwd: dataDir,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PYTHONUNBUFFERED: '1', PYTHONDONTWRITEBYTECODE: '1' },
  });
  child.stdout?.setEncoding('utf8').on('data', (c: string) => log.push(c));
  child.stderr?.setEncoding('utf8').on('data', (c: string) => log.push(c));
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exitPromise = new Promise<void>((r) =>
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      r();
    }),
  );
  child.on('error', (err) => log.push(`[spawn error] ${err.message}\n`));
  const killOnExit = (): void => {
    if (!exited) child.kill('SIGKILL');
  };
  process.once('exit', killOnExit);

  const baseUrl = `http://127.0.0.1:${port}`;
  let stopped = false;
  /** Stops the process, keeping the data directory. */
  const halt = async (): Promise<void> => {
    if (!exited) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => {
        if (!exited) child.kill('SIGKILL');
      }, 5000);
      await exitPromise;
      clearTimeout(timer);
    }
    process.removeListener('exit', killOnExit);
  };
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await halt();
    if (keepData) console.error(`[synapse] data kept in ${dataDir}`);
    else await rm(dataDir, { recursive: true, force: true });
  };

  // Wait for the client API.
  for (;;) {
    if (exited) {
      process.removeListener('exit', killOnExit);
      throw new Error(
        `Synapse exited during startup (code ${exited.code}, signal ${exited.signal}):\n${log.tail(60)}`,
      );
    }
    if (Date.now() - t0 > startupTimeoutMs) {
      await stop().catch(() => undefined);
      throw new Error(`Synapse did not answer within ${startupTimeoutMs} ms:\n${log.tail(60)}`);
    }
    try {
      const res = await fetch(`${baseUrl}/_matrix/client/versions`, { signal: AbortSignal.timeout(2000) });
      if (res.ok) {
        await res.arrayBuffer();
        break;
      }
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  log.push(`[synapse helper] client API up after ${Date.now() - t0} ms on ${baseUrl}\n`);

  const toUser = (r: Record<string, unknown>, password: string): TestUser => ({
    userId: String(r.user_id),
    accessToken: String(r.access_token),
    deviceId: String(r.device_id),
    password,
  });

  const registerUser: Homeserver['registerUser'] = async (localpart, password, opts = {}) => {
    const pw = password ?? randomBytes(12).toString('hex');
    const nonceRes = await fetch(`${baseUrl}/_synapse/admin/v1/register`);
    const nonceText = await nonceRes.text();
    if (!nonceRes.ok) throw new Error(`register nonce: HTTP ${nonceRes.status}: ${nonceText}`);
    const { nonce } = JSON.parse(nonceText) as { nonce: string };
    const admin = opts.admin ?? false;
    // HMAC-SHA1 over nonce \0 username \0 password \0 ("admin" | "notadmin"), keyed by the shared secret.
    const mac = createHmac('sha1', sharedSecret)
      .update(nonce, 'utf8')
      .update('\0')
      .update(localpart, 'utf8')
      .update('\0')
      .update(pw, 'utf8')
      .update('\0')
      .update(admin ? 'admin' : 'notadmin')
      .digest('hex');
    const body: Record<string, unknown> = { nonce, username: localpart, password: pw, admin, mac };
    if (opts.displayName !== undefined) body.displayname = opts.displayName;
    const r = await postJson(`${baseUrl}/_synapse/admin/v1/register`, body, `register ${localpart}`);
    return toUser(r, pw);
  };

  const login: Homeserver['login'] = async (userId, password, deviceId) => {
    const body: Record<string, unknown> = {
      type: 'm.login.password',
      identifier: { type: 'm.id.user', user: userId },
      password,
    };
    if (deviceId !== undefined) body.device_id = deviceId;
    const r = await postJson(`${baseUrl}/_matrix/client/v3/login`, body, `login ${userId}`);
    return toUser(r, password);
  };

  return {
    baseUrl,
    serverName: SERVER_NAME,
    dataDir,
    pid: child.pid ?? -1,
    stop,
    halt,
    logTail: (lines = 100) => log.tail(lines),
    registerUser,
    login,
  };
}
