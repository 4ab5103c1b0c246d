/**
 * Liveness and readiness of an appservice for {@link serveAppservice}: `GET /health/live` (the
 * process answers) and `GET /health/ready` (the store is open, the homeserver answered
 * recently, and every check the bridge added passes).
 *
 * @module
 */
import { MatrixCryptoError } from '../errors';
import type { AppserviceCrypto } from './manager';

/** The outcome of one readiness check. */
export interface ReadinessCheckResult {
  /** Whether the check passes. */
  ok: boolean;
  /** Why, in a few words (shown in the `/health/ready` body). */
  detail?: string;
}

/** A readiness check: resolves whether the appservice can serve, with why. A throw counts as failed. */
export type ReadinessCheck = () => ReadinessCheckResult | Promise<ReadinessCheckResult>;

/** Options of the health endpoints of {@link serveAppservice}. */
export interface HealthOptions {
  /**
   * How long after the homeserver's last answer (to any request of the appservice, any status
   * below 500) the appservice still counts as connected. Past it, `/health/ready` asks the
   * homeserver (`whoami`, see {@link AppserviceCrypto.pingHomeserver}) and is ready only if it
   * answers. Default 60,000 ms.
   */
  homeserverWindowMs?: number;
  /** How long that question may take, retries included. Default 5,000 ms. */
  probeTimeoutMs?: number;
  /**
   * More readiness conditions by name, besides the built-in `store` and `homeserver`: e.g. a
   * standby that must not take traffic, `{ leader: () => ({ ok: isLeader(), detail: 'standby' }) }`.
   * A check named `store` or `homeserver` replaces the built-in one.
   */
  checks?: Record<string, ReadinessCheck>;
}

/** The body of `GET /health/ready`. */
export interface ReadinessReport {
  /** `ready` (HTTP 200) when every check passes, else `not_ready` (HTTP 503). */
  status: 'ready' | 'not_ready';
  /** Every check by name: `store`, `homeserver` and those of {@link HealthOptions.checks}. */
  checks: Record<string, ReadinessCheckResult>;
}

/** Validated {@link HealthOptions}. @internal */
export interface Health {
  windowMs: number;
  probeTimeoutMs: number;
  checks: Record<string, ReadinessCheck>;
}

/** @internal */
export function healthOptions(options: HealthOptions | undefined): Health {
  const o = options ?? {};
  if (o === null || typeof o !== 'object') throw new MatrixCryptoError('InvalidArgument', 'health: must be an object', 'health');
  const ms = (field: 'homeserverWindowMs' | 'probeTimeoutMs', fallback: number): number => {
    const v = o[field];
    if (v === undefined) return fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
      throw new MatrixCryptoError('InvalidArgument', `health.${field}: must be a non-negative number of milliseconds`, `health.${field}`);
    }
    return v;
  };
  const checks = o.checks ?? {};
  for (const [name, check] of Object.entries(checks)) {
    if (typeof check !== 'function') throw new MatrixCryptoError('InvalidArgument', `health.checks.${name}: must be a function`, `health.checks.${name}`);
  }
  return { windowMs: ms('homeserverWindowMs', 60_000), probeTimeoutMs: Math.max(1, ms('probeTimeoutMs', 5000)), checks };
}

/**
 * The built-in checks, then the bridge's. A PostgreSQL lease for standby processes, once the
 * store has one, belongs here as a built-in `lease` check.
 */
function builtInChecks(crypto: AppserviceCrypto, health: Health): Record<string, ReadinessCheck> {
  return {
    store: () => (crypto.isClosed ? { ok: false, detail: 'the AppserviceCrypto is closed' } : { ok: true }),
    homeserver: async () => {
      const at = crypto.homeserverAnsweredAt;
      const age = at === null ? null : Date.now() - at;
      if (age !== null && age <= health.windowMs) return { ok: true, detail: `answered ${age} ms ago` };
      if (await crypto.pingHomeserver(health.probeTimeoutMs)) return { ok: true, detail: 'answered now' };
      const last = age === null ? 'never answered' : `last answered ${Math.round(age / 1000)} s ago`;
      return { ok: false, detail: `unreachable: ${last} (window ${health.windowMs} ms), no answer to whoami within ${health.probeTimeoutMs} ms` };
    },
  };
}

/** Runs every readiness check. @internal */
export async function readiness(crypto: AppserviceCrypto, health: Health): Promise<ReadinessReport> {
  const all = { ...builtInChecks(crypto, health), ...health.checks };
  const results = await Promise.all(
    Object.entries(all).map(async ([name, check]): Promise<[string, ReadinessCheckResult]> => {
      try {
        const r = await check();
        return [name, r?.detail === undefined ? { ok: r?.ok === true } : { ok: r.ok === true, detail: String(r.detail) }];
      } catch (err) {
        return [name, { ok: false, detail: `check failed: ${err instanceof Error ? err.message : String(err)}` }];
      }
    }),
  );
  const checks = Object.fromEntries(results);
  return { status: Object.values(checks).every((c) => c.ok) ? 'ready' : 'not_ready', checks };
}
