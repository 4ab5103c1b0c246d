/**
 * End-to-end encryption for bridges built on `matrix-appservice-bridge` (11.x) `Bridge`, over
 * {@link AppserviceCrypto}: {@link BridgeEncryption.attach} hooks a `Bridge` before it listens,
 * so that
 *
 * - every appservice transaction reaches {@link AppserviceCrypto.processTransaction} (to-device
 *   events, MSC3202 device lists and key counts) and is answered only after it was processed
 *   (500 when it failed, so the homeserver retries it);
 * - the bridge's `onEvent` gets encrypted room events decrypted (the decrypted type and content
 *   over the encrypted event's ids), or, when they cannot be decrypted, the `m.room.encrypted`
 *   event as it came, with the typed {@link DecryptionError} from
 *   {@link BridgeEncryption.decryptionOf};
 * - an intent's `sendEvent` (and so `sendMessage`, `sendText`) into an encrypted room is
 *   encrypted by that intent's user's own cross-signed device
 *   ({@link AppserviceCrypto.sendEncrypted}), created before the intent first joins a room.
 *
 * `matrix-appservice-bridge` is an optional peer dependency: this module loads it only when a
 * bridge is attached.
 *
 * @example
 * ```ts
 * import { Bridge } from 'matrix-appservice-bridge';
 * import { AppserviceCrypto } from 'matrix-crypto-node';
 * import { BridgeEncryption } from 'matrix-crypto-node/appservice-bridge';
 *
 * const bridge = new Bridge({ homeserverUrl, domain, registration: 'registration.yaml', controller: { onEvent } });
 * const crypto = await AppserviceCrypto.open({ homeserverUrl, registration: rawRegistration, storeRoot: './crypto' });
 * const encryption = BridgeEncryption.attach(bridge, crypto);
 * await bridge.run(9000);
 * ```
 *
 * @module
 */
import { AppserviceCrypto, type AppserviceTimelineEvent } from '../appservice';
import { DecryptionError, MatrixCryptoError } from '../errors';

export { DecryptionError, MatrixCryptoError };
import type { DecryptedRoomEvent } from '../types';

/**
 * The parts of a `matrix-appservice-bridge` `Bridge` the adapter hooks; what
 * {@link BridgeEncryption.attach} checks for (this module's types do not depend on the package).
 */
export interface HookableBridge {
  /** `Bridge.listen(port, hostname, backlog, appServiceInstance)`: wrapped to pass the adapter's `AppService`. */
  listen: (port: number, hostname?: string, backlog?: number, appServiceInstance?: unknown) => Promise<void>;
  /** The bridge's options; `onIntentCreate` is wrapped so every intent encrypts. */
  opts: {
    /** Creates the bridge's intents (the bot's among them). */
    onIntentCreate: (userId: string, ...rest: unknown[]) => unknown;
  };
  /** Set once the bridge listens: the adapter must be attached before. */
  appservice?: unknown;
}

/** What the adapter knows about an event it handed to the bridge's `onEvent`. */
export type BridgeEventDecryption =
  | {
      /** The event was encrypted and is decrypted: `onEvent` got the decrypted event. */
      kind: 'decrypted';
      /** The bridged user whose device decrypted it. */
      decryptedBy: string | null;
      /** The decrypted event with its encryption info (sender device, verification state, shields). */
      decrypted: DecryptedRoomEvent;
      /** The `m.room.encrypted` event as the homeserver sent it. */
      encrypted: Record<string, unknown>;
    }
  | {
      /** The event was encrypted and could not be decrypted: `onEvent` got it as it came. */
      kind: 'undecryptable';
      /** The bridged user whose device tried (`null` when no bridged member of the room has a device). */
      decryptedBy: string | null;
      /** Why (`MissingRoomKey`, with the withheld notice that explains it, ...). */
      error: DecryptionError;
    };

/** Options of {@link BridgeEncryption.attach}. */
export interface BridgeEncryptionOptions {
  /**
   * Called with each transaction's failure before it is answered 500 (the homeserver retries
   * it). Default: none.
   */
  onTransactionError?: (err: unknown, txnId: string) => void;
  /**
   * The `AppService` class of `matrix-appservice-bridge` (its export `AppService`). Default:
   * the one `require('matrix-appservice-bridge')` finds.
   */
  appServiceClass?: AppServiceClass;
}

/** The `AppService` class of `matrix-appservice` as the adapter extends it. */
export type AppServiceClass = new (config: { homeserverToken: string; httpMaxSizeBytes?: number }) => AppServiceLike;

/** The members of `matrix-appservice`'s `AppService` the adapter's subclass uses. */
export interface AppServiceLike {
  /** EventEmitter's `emit`: `event`, `type:<type>`, `ephemeral`, `ephemeral_type:<type>`. */
  emit(name: string, ...args: unknown[]): boolean;
  /** Answers 403 and returns `true` when the request carries no valid `hs_token`. */
  isInvalidToken(req: unknown, res: unknown): boolean;
}

interface ExpressRequest {
  params: { txnId?: string };
  body: unknown;
}
interface ExpressResponse {
  status(code: number): ExpressResponse;
  send(body: unknown): void;
}

/** The members of a `matrix-appservice-bridge` `Intent` the adapter wraps or calls. */
interface HookableIntent {
  userId: string;
  sendEvent: (roomId: string, type: string, content: Record<string, unknown>) => Promise<{ event_id: string }>;
  _ensureJoined: (roomIdOrAlias: string, ...rest: unknown[]) => Promise<string>;
  ensureRegistered: () => Promise<unknown>;
  _ensureHasPowerLevelFor?: (roomId: string, type: string, isState: boolean) => Promise<unknown>;
}

function invalid(field: string, message: string): MatrixCryptoError {
  return new MatrixCryptoError('InvalidArgument', `${field}: ${message}`, field);
}

function isFunction(value: unknown): value is (...args: unknown[]) => unknown {
  return typeof value === 'function';
}

/** How long a room found unencrypted is believed so before an intent's send asks again. */
const UNENCRYPTED_RECHECK_MS = 60_000;

const EPHEMERAL_FIELDS = ['ephemeral', 'de.sorunome.msc2409.ephemeral'];

/**
 * End-to-end encryption for a `matrix-appservice-bridge` `Bridge`; see the module
 * documentation. Create it with {@link BridgeEncryption.attach} before `bridge.run()` /
 * `bridge.listen()`.
 */
export class BridgeEncryption {
  private readonly decryption = new WeakMap<object, BridgeEventDecryption>();
  /** Rooms known to be encrypted (encryption cannot be turned off). */
  private readonly encryptedRooms = new Set<string>();
  /** Rooms found unencrypted, until when that answer is trusted. */
  private readonly unencryptedUntil = new Map<string, number>();
  private readonly hooked = new WeakSet<object>();

  private constructor(
    /** The {@link AppserviceCrypto} the bridge's transactions and sends go through. */
    readonly crypto: AppserviceCrypto,
    private readonly options: BridgeEncryptionOptions,
  ) {}

  /**
   * Hooks `bridgeObject` (a `Bridge`; see {@link HookableBridge}) so that its transactions, events and intents' sends go through `crypto`.
   * Call it after `new Bridge(...)` and before `bridge.run()` / `bridge.listen()`; do not pass
   * your own `AppService` instance to those (the adapter supplies one).
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming what is missing: `bridge` is not a
   *   `Bridge` (no `listen` function, no `opts.onIntentCreate`), it already listens
   *   (`bridge.appservice`), `crypto` is not an open {@link AppserviceCrypto}, or an option has
   *   the wrong type.
   */
  static attach(bridgeObject: object, crypto: AppserviceCrypto, options: BridgeEncryptionOptions = {}): BridgeEncryption {
    // Checked member by member below: a Bridge's `opts` is private in its own typings.
    const bridge = bridgeObject as HookableBridge;
    if (bridge === null || typeof bridge !== 'object') {
      throw invalid('bridge', 'must be a matrix-appservice-bridge Bridge');
    }
    if (!isFunction(bridge.listen)) {
      throw invalid('bridge.listen', 'must be a function (a matrix-appservice-bridge 11 Bridge): the adapter supplies the AppService through it');
    }
    if (bridge.opts === null || typeof bridge.opts !== 'object' || !isFunction(bridge.opts.onIntentCreate)) {
      throw invalid('bridge.opts.onIntentCreate', 'must be a function (a matrix-appservice-bridge 11 Bridge): the adapter wraps every intent it creates');
    }
    if (bridge.appservice !== undefined && bridge.appservice !== null) {
      throw invalid('bridge', 'already listens: attach the adapter before bridge.run() / bridge.listen()');
    }
    if (!(crypto instanceof AppserviceCrypto)) {
      throw invalid('crypto', 'must be an AppserviceCrypto (AppserviceCrypto.open)');
    }
    if (crypto.isClosed) throw invalid('crypto', 'is closed');
    if (options === null || typeof options !== 'object') throw invalid('options', 'must be an object');
    if (options.onTransactionError !== undefined && !isFunction(options.onTransactionError)) {
      throw invalid('options.onTransactionError', 'must be a function');
    }
    if (options.appServiceClass !== undefined && !isFunction(options.appServiceClass)) {
      throw invalid('options.appServiceClass', 'must be the AppService class of matrix-appservice-bridge');
    }
    const adapter = new BridgeEncryption(crypto, options);
    adapter.hookListen(bridge);
    adapter.hookIntents(bridge);
    return adapter;
  }

  /**
   * What the adapter knows about an event it handed to the bridge's `onEvent` (pass
   * `request.getData()`): `decrypted` with its encryption info, `undecryptable` with the typed
   * {@link DecryptionError}; `undefined` for events that were not encrypted.
   */
  decryptionOf(event: object): BridgeEventDecryption | undefined {
    return this.decryption.get(event);
  }

  /**
   * Whether the adapter knows `roomId` to be encrypted (from an `m.room.encryption` event of a
   * transaction, or the homeserver's answer when an intent sent there).
   */
  isRoomEncrypted(roomId: string): boolean {
    return this.encryptedRooms.has(roomId);
  }

  private hookListen(bridge: HookableBridge): void {
    const listen = bridge.listen;
    bridge.listen = async (port, hostname, backlog, appServiceInstance) => {
      if (appServiceInstance !== undefined) {
        throw invalid('appServiceInstance', 'must be left out: the encryption adapter supplies the AppService');
      }
      const bridgeWithToken = bridge as HookableBridge & { registration?: { getHomeserverToken?: () => string | null } };
      const token = bridgeWithToken.registration?.getHomeserverToken?.() ?? this.crypto.hsToken;
      return listen.call(bridge, port, hostname ?? '0.0.0.0', backlog ?? 10, this.createAppService(token));
    };
  }

  private createAppService(homeserverToken: string): AppServiceLike {
    const Base = this.options.appServiceClass ?? (require('matrix-appservice-bridge') as { AppService: AppServiceClass }).AppService;
    const adapter = this;
    // The base constructor binds `this.onTransaction` to its route, so the override is what runs.
    class EncryptedAppService extends Base {
      async onTransaction(req: ExpressRequest, res: ExpressResponse): Promise<void> {
        if (this.isInvalidToken(req, res)) return;
        await adapter.onTransaction(this, req, res);
      }
    }
    return new EncryptedAppService({ homeserverToken });
  }

  private async onTransaction(appservice: AppServiceLike, req: ExpressRequest, res: ExpressResponse): Promise<void> {
    const txnId = req.params.txnId ?? '';
    try {
      await this.crypto.processTransaction(txnId, req.body, {
        onResult: (result) => {
          for (const item of [...result.events, ...result.lateDecryptions]) this.emitEvent(appservice, item);
          const body = req.body as Record<string, unknown> | null;
          if (result.duplicate || body === null || typeof body !== 'object') return;
          for (const field of EPHEMERAL_FIELDS) {
            const list = body[field];
            if (!Array.isArray(list)) continue;
            for (const event of list) {
              if (event === null || typeof event !== 'object') continue;
              appservice.emit('ephemeral', event);
              const type = (event as { type?: unknown }).type;
              if (typeof type === 'string') appservice.emit(`ephemeral_type:${type}`, event);
            }
          }
        },
      });
      res.send({});
    } catch (err) {
      this.options.onTransactionError?.(err, txnId);
      res.status(500).send({ errcode: 'M_UNKNOWN', error: err instanceof Error ? err.message : String(err) });
    }
  }

  private emitEvent(appservice: AppServiceLike, item: AppserviceTimelineEvent): void {
    let event: Record<string, unknown> = item.event;
    if (event.type === 'm.room.encryption' && typeof event.state_key === 'string' && event.state_key === '') {
      this.encryptedRooms.add(item.roomId);
      this.unencryptedUntil.delete(item.roomId);
    }
    if (item.kind === 'decrypted') {
      // The decrypted type and content over the encrypted event's ids, sender and timestamp.
      event = { ...item.event, ...item.decrypted.event };
      this.decryption.set(event, { kind: 'decrypted', decryptedBy: item.decryptedBy, decrypted: item.decrypted, encrypted: item.event });
    } else if (item.kind === 'undecryptable') {
      this.decryption.set(event, { kind: 'undecryptable', decryptedBy: item.decryptedBy, error: item.error });
    }
    appservice.emit('event', event);
    if (typeof event.type === 'string') appservice.emit(`type:${event.type}`, event);
  }

  private hookIntents(bridge: HookableBridge): void {
    const create = bridge.opts.onIntentCreate;
    bridge.opts.onIntentCreate = (userId, ...rest) => {
      const intent = create.call(bridge, userId, ...rest);
      this.hookIntent(intent, userId);
      return intent;
    };
  }

  private hookIntent(intent: unknown, userId: string): void {
    if (intent === null || typeof intent !== 'object') {
      throw invalid('onIntentCreate()', `must return an Intent object (for ${userId})`);
    }
    if (this.hooked.has(intent)) return;
    const i = intent as HookableIntent;
    for (const name of ['sendEvent', '_ensureJoined', 'ensureRegistered'] as const) {
      if (!isFunction(i[name])) {
        throw invalid(`intent.${name}`, `must be a function (a matrix-appservice-bridge 11 Intent): the adapter wraps it (intent of ${userId})`);
      }
    }
    this.hooked.add(intent);
    const crypto = this.crypto;
    const ensureJoined = i._ensureJoined;
    const sendEvent = i.sendEvent;
    // The device must exist before the user is in a room, so that members share room keys with it.
    i._ensureJoined = async (roomIdOrAlias, ...rest) => {
      if (crypto.isBridgedUser(i.userId)) {
        await i.ensureRegistered();
        await crypto.deviceFor(i.userId);
      }
      return ensureJoined.call(i, roomIdOrAlias, ...rest);
    };
    i.sendEvent = async (roomId, type, content) => {
      if (!crypto.isBridgedUser(i.userId)) return sendEvent.call(i, roomId, type, content);
      // Joined first, as the intent's own sendEvent does: the room's state is readable then.
      await i.ensureRegistered();
      const joined = await i._ensureJoined(roomId);
      if (!(await this.roomEncrypted(i.userId, joined))) return sendEvent.call(i, joined, type, content);
      await i._ensureHasPowerLevelFor?.call(i, joined, 'm.room.encrypted', false);
      const { eventId } = await crypto.sendEncrypted(i.userId, joined, type, content);
      return { event_id: eventId };
    };
  }

  /**
   * Whether a room is encrypted: known from its `m.room.encryption` event in a transaction, else
   * asked of the homeserver as the user (a room found unencrypted is asked again after
   * 60 s). A failed question throws: never send plaintext by mistake.
   */
  private async roomEncrypted(userId: string, roomId: string): Promise<boolean> {
    if (this.encryptedRooms.has(roomId)) return true;
    const until = this.unencryptedUntil.get(roomId);
    if (until !== undefined && until > Date.now()) return false;
    const transport = await this.crypto.transportFor(userId);
    const state = await transport.getStateEvent(roomId, 'm.room.encryption');
    if (state !== null && typeof state.algorithm === 'string') {
      this.encryptedRooms.add(roomId);
      this.unencryptedUntil.delete(roomId);
      return true;
    }
    if (this.unencryptedUntil.size >= 10_000) this.unencryptedUntil.delete(this.unencryptedUntil.keys().next().value as string);
    this.unencryptedUntil.set(roomId, Date.now() + UNENCRYPTED_RECHECK_MS);
    return false;
  }
}
