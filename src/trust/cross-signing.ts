/**
 * Cross-signing for our own account, driven over a {@link HomeserverTransport}: publish the
 * identity (with user-interactive auth when the homeserver demands it) and sign our devices.
 *
 * Clients that exclude insecure devices (Element's "only cross-signed devices", MSC4153) share
 * room keys only with devices their owner signed; this is what makes a bot such a device.
 *
 * @module
 */
import { MatrixCryptoError } from '../errors';
import type { OlmMachine } from '../machine';
import type { OutgoingRequest } from '../requests';
import { HomeserverError, type HomeserverTransport } from '../transport';
import type { CrossSigningStatus } from '../types';

/** The homeserver's user-interactive auth challenge (the body of its 401 answer). */
export interface UiaChallenge {
  /** The auth session to name in the next attempt. */
  session?: string;
  /** The flows the homeserver accepts, each a list of stage types (e.g. `m.login.password`). */
  flows: Array<{
    /** The stage types of the flow, in order. */
    stages: string[];
  }>;
  /** Parameters of the stages, by stage type. */
  params?: Record<string, unknown>;
  /** The stages already completed in this session. */
  completed?: string[];
}

/**
 * How to answer user-interactive auth when publishing cross-signing keys:
 * - `{ type: 'password', password }`: the `m.login.password` stage for our own user;
 * - a function that gets the challenge and returns the `auth` object to send (any flow);
 * - omitted: no auth. Homeservers waive it for the first upload of an account (MSC3967) and
 *   Synapse for appservice users (MSC4190); otherwise the upload fails with `InvalidArgument`
 *   naming `auth`.
 */
export type UiaAuth =
  | {
      /** The password stage. */
      type: 'password';
      /** Our account's password. */
      password: string;
    }
  | ((challenge: UiaChallenge) => Promise<Record<string, unknown>> | Record<string, unknown>);

/** Options of {@link setUpCrossSigning} and `crossSigning` of {@link EncryptedClientOpenOptions}. */
export interface CrossSigningOptions {
  /**
   * - `if-missing` (default): create and publish an identity when the account has none; when
   *   this device holds the keys, only make sure our device is signed. When the account has an
   *   identity whose keys this device lacks, fail with `CrossSigningKeyMissing` (`EncryptedClient.open`
   *   recovers the keys first when given `crossSigning.recoveryKey`).
   * - `reset`: always create and publish a new identity (other users' verification of us is
   *   lost; the homeserver demands `auth`).
   */
  bootstrap?: 'if-missing' | 'reset';
  /** User-interactive auth for the upload; see {@link UiaAuth}. */
  auth?: UiaAuth;
  /**
   * `EncryptedClient` only: after each sync, sign every other device of our account that our
   * self-signing key has not signed, so other clients trust it too. Only for accounts no one
   * else logs into: it vouches for any device the homeserver lists for us. Default `false`.
   */
  signOwnDevices?: boolean;
}

/** What {@link setUpCrossSigning} did. */
export interface CrossSigningSetup {
  /** A new identity was created and published. */
  created: boolean;
  /** Our device was signed (the signature uploaded) by this call. */
  signedDevice: boolean;
  /** The private keys this device holds now. */
  status: CrossSigningStatus;
}

async function sendAndMark(machine: OlmMachine, transport: HomeserverTransport, request: OutgoingRequest): Promise<void> {
  await machine.markRequestAsSent(request, await transport.send(request));
}

/** Sends our queued key uploads and queries until none is left (our own keys query among them). */
async function drain(machine: OlmMachine, transport: HomeserverTransport): Promise<void> {
  for (let round = 0; round < 10; round++) {
    const requests = await machine.outgoingRequests();
    if (requests.length === 0) return;
    for (const r of requests) await sendAndMark(machine, transport, r);
  }
}

/**
 * Queries our own keys (the machine learns them) and returns the master key the homeserver
 * publishes for our account, or `null` when it has none.
 */
export async function queryOwnMasterKey(machine: OlmMachine, transport: HomeserverTransport): Promise<string | null> {
  const request = machine.queryOwnKeys();
  const response = await transport.send(request);
  await machine.markRequestAsSent(request, response);
  const master = (JSON.parse(response) as { master_keys?: Record<string, { keys?: Record<string, string> }> }).master_keys?.[machine.userId];
  return Object.values(master?.keys ?? {})[0] ?? null;
}

/** Parses the 401 body of a UIA challenge, or returns `undefined` when it is not one. */
function challengeOf(err: unknown): UiaChallenge | undefined {
  if (!(err instanceof HomeserverError) || err.status !== 401) return undefined;
  try {
    const body = JSON.parse(err.body) as Partial<UiaChallenge>;
    return Array.isArray(body.flows) ? (body as UiaChallenge) : undefined;
  } catch {
    return undefined;
  }
}

/** `POST /keys/device_signing/upload`, answering the UIA challenge with `auth`. */
export async function uploadSigningKeys(
  transport: HomeserverTransport,
  userId: string,
  body: string,
  auth: UiaAuth | undefined,
  field = 'auth',
): Promise<string> {
  let challenge: UiaChallenge | undefined;
  try {
    return await transport.uploadSigningKeys(body);
  } catch (err) {
    challenge = challengeOf(err);
    if (!challenge) throw err;
  }
  const flows = challenge.flows.map((f) => f.stages.join(' -> ')).join(', ');
  if (auth === undefined) {
    throw new MatrixCryptoError(
      'InvalidArgument',
      `${field}: the homeserver demands user-interactive auth to publish cross-signing keys (flows: ${flows}); pass { type: 'password', password } or a function that answers the challenge`,
      field,
    );
  }
  let dict: Record<string, unknown>;
  if (typeof auth === 'function') {
    dict = await auth(challenge);
  } else if (auth && auth.type === 'password' && typeof auth.password === 'string') {
    if (!challenge.flows.some((f) => f.stages.length === 1 && f.stages[0] === 'm.login.password')) {
      throw new MatrixCryptoError('InvalidArgument', `${field}: the homeserver offers no password flow (flows: ${flows}); pass a function that answers the challenge`, field);
    }
    dict = { type: 'm.login.password', identifier: { type: 'm.id.user', user: userId }, password: auth.password };
  } else {
    throw new MatrixCryptoError('InvalidArgument', `${field}: must be { type: 'password', password } or a function`, field);
  }
  if (challenge.session !== undefined && dict.session === undefined) dict = { ...dict, session: challenge.session };
  return transport.uploadSigningKeys(body, dict);
}

/**
 * Makes our device cross-signed: publishes our cross-signing identity when the account has
 * none (or a new one with `reset`) and uploads the self-signing key's signature of our device.
 * Sends the machine's queued requests first, so our own keys are queried.
 *
 * @throws {@link MatrixCryptoError} `CrossSigningKeyMissing` when the account has an identity
 *   this device holds no keys for, or other keys than (recover them from secret storage, or `reset`);
 *   `InvalidArgument` naming `auth` when the homeserver demands auth that was not given.
 * @throws {@link HomeserverError} when the homeserver refuses an upload (e.g. a wrong password: 401 `M_FORBIDDEN`).
 */
export async function setUpCrossSigning(
  machine: OlmMachine,
  transport: HomeserverTransport,
  options: CrossSigningOptions = {},
  field = 'crossSigning',
): Promise<CrossSigningSetup> {
  const mode = options.bootstrap ?? 'if-missing';
  if (mode !== 'if-missing' && mode !== 'reset') {
    throw new MatrixCryptoError('InvalidArgument', `${field}.bootstrap: must be 'if-missing' or 'reset'`, `${field}.bootstrap`);
  }
  await drain(machine, transport);
  // The store's view of our identity can be old (it was replaced from another device while we
  // were away): read it fresh. Whether one is published is the homeserver's answer, not the
  // store's: a bootstrap whose upload failed leaves an identity in the store that no one has seen.
  const published = await queryOwnMasterKey(machine, transport);
  let status = await machine.crossSigningStatus();
  const held = status.hasMaster && status.hasSelfSigning && status.hasUserSigning;
  let created = false;
  if (mode === 'reset' || !published) {
    // Without `reset`, keys this device holds but never published are published again.
    const requests = await machine.bootstrapCrossSigning(mode === 'reset');
    if (requests.uploadKeys) await sendAndMark(machine, transport, requests.uploadKeys);
    const response = await uploadSigningKeys(transport, machine.userId, requests.uploadSigningKeys.body, options.auth, `${field}.auth`);
    await machine.markRequestAsSent(requests.uploadSigningKeys, response);
    await sendAndMark(machine, transport, requests.uploadSignatures);
    created = mode === 'reset' || !held;
    status = await machine.crossSigningStatus();
    // Our device's signature is on the server now; read it back so the machine sees it too.
    await sendAndMark(machine, transport, machine.queryOwnKeys());
    return { created, signedDevice: true, status };
  }
  if (!status.hasSelfSigning) {
    throw new MatrixCryptoError(
      'CrossSigningKeyMissing',
      `${field}: the account ${machine.userId} has a cross-signing identity whose private keys this device does not hold: recover them from secret storage (recoveryKey) or pass bootstrap: 'reset' to replace the identity`,
      field,
    );
  }
  if (await machine.isOwnDeviceCrossSigned()) return { created, signedDevice: false, status };
  await sendAndMark(machine, transport, await machine.signOwnDevice(machine.deviceId));
  await sendAndMark(machine, transport, machine.queryOwnKeys());
  if (!(await machine.isOwnDeviceCrossSigned())) {
    // The homeserver dropped the signature: our keys are not the published identity's (it was
    // replaced from another device).
    throw new MatrixCryptoError(
      'CrossSigningKeyMissing',
      `${field}: the cross-signing keys this device holds are not the published identity of ${machine.userId} (replaced from another device?): recover the current keys from secret storage (recoveryKey) or pass bootstrap: 'reset'`,
      field,
    );
  }
  return { created, signedDevice: true, status };
}
