/**
 * MSC2399 withheld notices: the codes, the sending policy and what a share reports.
 *
 * @module
 */

/** The withheld codes of the Matrix spec. */
export type SpecWithheldCode =
  /** The sender blocked this device. */
  | 'm.blacklisted'
  /** The sender shares only with verified devices, and this one is not. */
  | 'm.unverified'
  /** The device is not allowed to have the key (e.g. a key request from outside the room). */
  | 'm.unauthorised'
  /** Answer to a key request: the device asked does not have the key. */
  | 'm.unavailable'
  /** No Olm session could be set up with the device; covers every session of the sender device. */
  | 'm.no_olm'
  /** The room's history was not shared (key bundles, MSC4268); never sent by this library. */
  | 'm.history_not_shared';

/**
 * A withheld code: a spec code, or a namespaced custom code such as `com.example.policy`
 * (custom codes are kept, never dropped).
 */
export type WithheldCode = SpecWithheldCode | (string & Record<never, never>);

/**
 * Which withheld notices leave the machine (sending them is optional under MSC2399).
 *
 * @example Send only `m.unverified`, with our own wording
 * ```ts
 * const policy: WithheldPolicy = { send: ['m.unverified'], reasons: { 'm.unverified': 'Verify this device to read the room.' } };
 * ```
 */
export interface WithheldPolicy {
  /** `'all'` (the default), `'none'`, or the codes to send; every other code is suppressed. */
  send?: 'all' | 'none' | WithheldCode[];
  /** The `reason` text per code. Codes without an entry get a default sentence. */
  reasons?: Partial<Record<WithheldCode, string>>;
}

/** A device, by owner and id. */
export interface DeviceRef {
  /** The owner. */
  userId: string;
  /** The device id. */
  deviceId: string;
}

/** A device that did not get the room key in a share, and the notice it gets. */
export interface WithheldRecipient extends DeviceRef {
  /** The code of the notice. */
  code: WithheldCode;
  /** False when the policy suppressed the notice: the device was refused silently. */
  sent: boolean;
}

/** The `m.no_olm` state of a recipient device (see {@link OlmMachine.noOlmState}). */
export interface NoOlmState {
  /** When the last `m.no_olm` notice was sent (or suppressed), ms since the epoch. */
  notifiedAt: number;
  /** True if the policy suppressed that notice. */
  suppressed: boolean;
  /**
   * True once an Olm session with the device was established after the notice: the next
   * failure to set up a session sends one new notice.
   */
  rearmed: boolean;
}
