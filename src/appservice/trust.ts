/**
 * How a bridged user's device treats the devices it talks to: which devices get its room keys,
 * and whose events it decrypts (MSC4153 lets clients refuse devices their owner did not sign).
 *
 * @module
 */
import { MatrixCryptoError } from '../errors';
import type { SharingStrategy, TrustRequirement } from '../types';

/**
 * What a bridged user's device requires of the devices it talks to. Every field has a default
 * that works with every client in use today (see docs/appservice.md):
 * - `sharingStrategy`: {@link AppserviceCryptoOptions.shareSettings}' strategy, else `all_devices`
 *   (every device that is not blacklisted gets the room key, unsigned bots included);
 * - `decryptionTrustRequirement`: `untrusted` (every sender's event is decrypted; each decrypted
 *   event carries its `verificationState` and shields for the bridge to judge).
 */
export interface BridgedUserTrust {
  /**
   * Which devices get the room keys of this user's messages, e.g. `identity_based` to send only
   * to devices their owner cross-signed (the others get an `m.unverified` withheld notice).
   * A per-call {@link AppserviceEncryptOptions.shareSettings} still overrides it.
   */
  sharingStrategy?: SharingStrategy;
  /**
   * The trust in a sender's device this user's device requires to decrypt an event, e.g.
   * `cross_signed_or_legacy` as matrix-js-sdk applies when it excludes insecure devices. An
   * event refused for it is `undecryptable` with the code `SenderIdentityNotTrusted`.
   */
  decryptionTrustRequirement?: TrustRequirement;
}

// Exactly the members of each union (tsc rejects a missing or an extra key).
const SHARING_STRATEGIES: { readonly [K in SharingStrategy]: true } = {
  all_devices: true,
  only_trusted_devices: true,
  identity_based: true,
  error_on_verified_user_problem: true,
};
const TRUST_REQUIREMENTS: { readonly [K in TrustRequirement]: true } = {
  untrusted: true,
  cross_signed_or_legacy: true,
  cross_signed: true,
};

function oneOf(field: string, value: unknown, allowed: Record<string, true>): void {
  if (value === undefined) return;
  if (typeof value !== 'string' || !Object.hasOwn(allowed, value)) {
    throw new MatrixCryptoError('InvalidArgument', `${field}: ${JSON.stringify(value)} is not one of ${Object.keys(allowed).join(', ')}`, field);
  }
}

/** Checks one {@link BridgedUserTrust}; `field` names it in errors. */
function checked(field: string, value: unknown): BridgedUserTrust {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new MatrixCryptoError('InvalidArgument', `${field}: must be an object`, field);
  }
  for (const key of Object.keys(value)) {
    if (key !== 'sharingStrategy' && key !== 'decryptionTrustRequirement') {
      throw new MatrixCryptoError('InvalidArgument', `${field}.${key}: unknown option (sharingStrategy, decryptionTrustRequirement)`, `${field}.${key}`);
    }
  }
  const trust = value as BridgedUserTrust;
  oneOf(`${field}.sharingStrategy`, trust.sharingStrategy, SHARING_STRATEGIES);
  oneOf(`${field}.decryptionTrustRequirement`, trust.decryptionTrustRequirement, TRUST_REQUIREMENTS);
  return trust;
}

/** @internal The `trust` option of the manager: one value for every user, or a function of the user. */
export class TrustSettings {
  private readonly fixed: BridgedUserTrust | undefined;
  private readonly perUser: ((userId: string) => BridgedUserTrust | undefined) | undefined;

  /** @throws {@link MatrixCryptoError} `InvalidArgument` naming the bad field under `options.trust`. */
  constructor(option: unknown) {
    if (typeof option === 'function') this.perUser = option as (userId: string) => BridgedUserTrust | undefined;
    else this.fixed = checked('options.trust', option);
  }

  /**
   * The settings of one user (checked on every call: a function may answer anything).
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming e.g. `options.trust("@u:x").sharingStrategy`.
   */
  of(userId: string): BridgedUserTrust {
    return this.fixed ?? checked(`options.trust(${JSON.stringify(userId)})`, this.perUser!(userId));
  }
}
