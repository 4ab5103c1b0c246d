/**
 * Cross-signing of the devices an appservice creates: each bridged user (puppets and the
 * appservice's own user) gets a cross-signing identity of its own, held in the store of its
 * one device, and that device is signed by it.
 *
 * Clients that exclude insecure devices (MSC4153, in the spec; Element enforces it) share room
 * keys only with devices their owner cross-signed and refuse the messages of the others, so an
 * unsigned puppet can neither read nor be read by their users.
 *
 * The upload of the identity (`/keys/device_signing/upload`) is made as the user and device
 * like every other request. It needs no user-interactive auth from an appservice: a first
 * upload never does (MSC3967), and Synapse waives it for appservice requests that replace an
 * identity (MSC4190). A user whose published identity this device holds no private keys for
 * (its store was lost, or the identity was made elsewhere) gets a new identity: the only way to
 * sign the device.
 *
 * @module
 */
import { MatrixCryptoError } from '../errors';
import { logRecord } from '../logging';
import { queryOwnMasterKey, setUpCrossSigning } from '../trust/cross-signing';
import type { BridgedDevice } from './device';
import { AppserviceError } from './errors';

const TARGET = 'matrix_crypto_node::appservice::cross_signing';

/**
 * A demand for user-interactive auth (which an appservice cannot answer) becomes
 * `CrossSigningFailed`; other failures (the homeserver unreachable, ...) pass unchanged.
 */
function failed(device: BridgedDevice, err: unknown): unknown {
  if (!(err instanceof MatrixCryptoError && err.code === 'InvalidArgument')) return err;
  return new AppserviceError(
    'CrossSigningFailed',
    `the homeserver demands user-interactive auth to publish the cross-signing keys of ${device.userId}, which an appservice cannot give (Synapse waives it for appservices; MSC4190): ${err.message}`,
    { userId: device.userId, cause: err },
  );
}

/**
 * Whether the identity the homeserver publishes for the device's user is the one in the
 * device's store (self-signing key held) and has signed the device. One `/keys/query` of the
 * user's own keys: the store alone cannot tell an identity whose upload failed (or that was
 * replaced since) from the published one.
 */
async function signedByPublished(device: BridgedDevice): Promise<boolean> {
  const { machine } = device;
  const published = await queryOwnMasterKey(machine, device.transport);
  if (published === null || (await machine.getUserIdentity(device.userId))?.masterKey !== published) return false;
  return (await machine.crossSigningStatus()).hasSelfSigning && (await machine.isOwnDeviceCrossSigned());
}

/**
 * {@link signedByPublished}, from one query of the user's own keys that also says whether the
 * homeserver still lists the device's keys.
 */
async function ownKeysState(device: BridgedDevice): Promise<{ signed: boolean; listed: boolean }> {
  const { machine } = device;
  const request = machine.queryOwnKeys();
  const response = await device.transport.send(request);
  await machine.markRequestAsSent(request, response);
  const answer = JSON.parse(response) as {
    master_keys?: Record<string, { keys?: Record<string, string> }>;
    device_keys?: Record<string, Record<string, unknown>>;
  };
  const listed = answer.device_keys?.[device.userId]?.[device.deviceId] !== undefined;
  const published = Object.values(answer.master_keys?.[device.userId]?.keys ?? {})[0] ?? null;
  if (published === null || (await machine.getUserIdentity(device.userId))?.masterKey !== published) return { signed: false, listed };
  return { signed: (await machine.crossSigningStatus()).hasSelfSigning && (await machine.isOwnDeviceCrossSigned()), listed };
}

/** @internal */
export class BridgeCrossSigning {
  /** Users whose device is known to be cross-signed in this process. */
  private readonly signed = new Set<string>();
  private resetCount = 0;

  /** Identities replaced because their private keys were missing, since the manager opened. */
  get resets(): number {
    return this.resetCount;
  }

  /** Whether the user's device is known to be cross-signed in this process. */
  isSigned(userId: string): boolean {
    return this.signed.has(userId);
  }

  /** Forgets the user (their device was deleted). */
  forget(userId: string): void {
    this.signed.delete(userId);
  }

  /**
   * {@link ensure} for a machine being opened: a device created before devices were signed
   * (an older store root) is signed now. A failure is logged, not thrown, so the operation that
   * opened the machine goes on; the next open (or `deviceFor`) tries again.
   */
  async onOpen(device: BridgedDevice, checkListed = false): Promise<'ok' | 'keys-gone'> {
    try {
      return await this.ensure(device, checkListed);
    } catch (err) {
      logRecord('warn', TARGET, `could not cross-sign the device of a bridged user; tried again on its next open: ${String((err as Error)?.message ?? err)}`, {
        user_id: device.userId,
        device_id: device.deviceId,
      });
      return 'ok';
    }
  }

  /**
   * Makes the device cross-signed by its user, under the device's request queue. Once per
   * process and user; costs one query of the user's own keys when the device is signed already
   * (the usual case after the first time).
   *
   * With `checkListed`, resolves `keys-gone` (and changes nothing) when the homeserver no
   * longer lists the device's keys in that query (the device was deleted, or the server lost
   * them): the device can then only be replaced.
   *
   * @throws {@link HomeserverError} when the homeserver refuses an upload.
   */
  async ensure(device: BridgedDevice, checkListed = false): Promise<'ok' | 'keys-gone'> {
    if (this.signed.has(device.userId)) return 'ok';
    return device.exclusive(async () => {
      const { machine, transport } = device;
      const first = await ownKeysState(device);
      if (checkListed && !first.listed) return 'keys-gone';
      if (first.signed) {
        this.signed.add(device.userId);
        return 'ok';
      }
      try {
        const setup = await setUpCrossSigning(machine, transport);
        if (setup.created) {
          logRecord('info', TARGET, 'created the cross-signing identity of a bridged user and signed its device', {
            user_id: device.userId,
            device_id: device.deviceId,
          });
        }
      } catch (err) {
        if (!(err instanceof MatrixCryptoError && err.code === 'CrossSigningKeyMissing')) throw failed(device, err);
        // The published identity is not one this device holds the keys of: the device can only
        // be signed under a new one.
        await setUpCrossSigning(machine, transport, { bootstrap: 'reset' }).catch((e: unknown) => {
          throw failed(device, e);
        });
        this.resetCount++;
        logRecord(
          'warn',
          TARGET,
          "reset the cross-signing identity of a bridged user: its device's store holds no private keys of the published identity (store lost, or the identity was created elsewhere); users who verified the old identity see it change",
          { user_id: device.userId, device_id: device.deviceId },
        );
      }
      if (!(await signedByPublished(device))) {
        throw new AppserviceError(
          'CrossSigningFailed',
          `the device ${device.deviceId} of ${device.userId} is not signed by the published cross-signing identity after its signature was uploaded: the homeserver did not keep it`,
          { userId: device.userId },
        );
      }
      this.signed.add(device.userId);
      return 'ok';
    });
  }
}
