// A fake homeserver for the appservice unit tests: the in-process TestHomeserver (keys, claims,
// to-device inboxes) behind a `fetch` that speaks the client-server API as an appservice sees it
// (as_token, `user_id` / `device_id` masquerading, MSC4190 device creation), and builds the
// transactions Synapse would push (MSC4203 to-device events with `to_user_id` / `to_device_id`,
// MSC3202 key counts). Cross-signing keys and signatures are uploaded as the device and returned
// in `/keys/query`; like Synapse, no user-interactive auth is asked of the appservice unless
// `signingKeysNeedAuth` is set.
// As in Synapse, a device's to-device events stay in its inbox after a push
// until the device acknowledges them through `/sync` (`since` = the `next_batch` that returned
// them); a sync returns at most `syncLimit` of them.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AppserviceCrypto, type AppserviceCryptoOptions } from '../src/index';
import { TestHomeserver } from '../src/testing';
import type { OutgoingRequest } from '../src/requests';
import type { TransactionBody } from '../src/appservice';

export const AS_TOKEN = 'as-secret';
export const HS_TOKEN = 'hs-secret';
export const registration = {
  as_token: AS_TOKEN,
  hs_token: HS_TOKEN,
  sender_localpart: 'bridgebot',
  namespaces: { users: [{ regex: '@puppet_.*:example\\.org', exclusive: true }] },
};

export interface FakeCall {
  method: string;
  path: string;
  userId: string | null;
  deviceId: string | null;
}

export class FakeAppserviceHomeserver {
  readonly hs = new TestHomeserver();
  /** Devices created with MSC4190, by user. */
  readonly devices = new Map<string, Set<string>>();
  /** Joined members by room. */
  readonly rooms = new Map<string, string[]>();
  /** Room events sent, in order. */
  readonly sentEvents: Array<{ roomId: string; userId: string; type: string; content: Record<string, unknown> }> = [];
  readonly calls: FakeCall[] = [];
  /** Answer device creation with 404 M_UNRECOGNIZED (a homeserver without MSC4190). */
  noMsc4190 = false;
  /** Fail the next request matching this predicate with HTTP 400 (once each time it is set). */
  failNext: ((call: FakeCall) => boolean) | undefined;
  /** Fail every request matching this predicate with HTTP 400, until it is unset. */
  failWhile: ((call: FakeCall) => boolean) | undefined;
  /** Answer `/keys/device_signing/upload` with a user-interactive auth challenge (a homeserver without the MSC4190 waiver). */
  signingKeysNeedAuth = false;
  /** Delay of every answer, in ms (to let concurrent requests overlap). */
  delayMs = 0;
  inFlight = 0;
  maxInFlight = 0;
  /** Inbox events of each device a push has carried already (a prefix of the inbox). */
  private readonly pushed = new Map<string, number>();
  /** Inbox events of each device deleted by acknowledgements so far. */
  private readonly acknowledged = new Map<string, number>();
  /** Most to-device events one `/sync` returns (Synapse: 100). */
  syncLimit = 100;
  /** Every `/sync` as a device, in order. */
  readonly syncs: Array<{ userId: string; deviceId: string; since: string | null; timeout: string | null; filter: unknown }> = [];

  readonly fetch: typeof fetch = async (input, init) => {
    const url = new URL(String(input));
    const method = init?.method ?? 'GET';
    const body = typeof init?.body === 'string' ? init.body : '{}';
    const call: FakeCall = { method, path: url.pathname, userId: url.searchParams.get('user_id'), deviceId: url.searchParams.get('device_id') };
    const query = url.searchParams;
    this.calls.push(call);
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
      const auth = (init?.headers as Record<string, string> | undefined)?.Authorization;
      if (auth !== `Bearer ${AS_TOKEN}`) return json(401, { errcode: 'M_UNKNOWN_TOKEN', error: 'bad token' });
      if (this.failNext?.(call)) {
        this.failNext = undefined;
        return json(400, { errcode: 'M_UNKNOWN', error: 'scripted failure' });
      }
      if (this.failWhile?.(call)) return json(400, { errcode: 'M_UNKNOWN', error: 'scripted failure' });
      return this.answer(call, body, query);
    } finally {
      this.inFlight--;
    }
  };

  private answer(call: FakeCall, body: string, query: URLSearchParams): Response {
    const user = call.userId ?? '@bridgebot:example.org';
    const p = call.path.replace('/_matrix/client/v3', '');
    const device = /^\/devices\/([^/]+)$/.exec(p);
    if (device) {
      const id = decodeURIComponent(device[1]!);
      if (call.method === 'PUT') {
        if (this.noMsc4190) return json(404, { errcode: 'M_UNRECOGNIZED', error: 'Unrecognized request' });
        if (call.deviceId) return json(400, { errcode: 'M_UNKNOWN', error: 'device_id must not be given when creating' });
        if (!this.devices.has(user)) this.devices.set(user, new Set());
        const created = !this.devices.get(user)!.has(id);
        this.devices.get(user)!.add(id);
        return json(created ? 201 : 200, {});
      }
      if (call.method === 'DELETE') {
        this.devices.get(user)?.delete(id);
        this.hs.deviceKeys.get(user)?.delete(id);
        return json(200, {});
      }
    }
    const members = /^\/rooms\/([^/]+)\/joined_members$/.exec(p);
    if (members) {
      const list = this.rooms.get(decodeURIComponent(members[1]!)) ?? [];
      return json(200, { joined: Object.fromEntries(list.map((u) => [u, {}])) });
    }
    const send = /^\/rooms\/([^/]+)\/send\/([^/]+)\/([^/]+)$/.exec(p);
    if (send) {
      this.sentEvents.push({ roomId: decodeURIComponent(send[1]!), userId: user, type: decodeURIComponent(send[2]!), content: JSON.parse(body) });
      return json(200, { event_id: `$ev${this.sentEvents.length}` });
    }
    // The crypto endpoints need a real device.
    if (!call.deviceId || !this.devices.get(user)?.has(call.deviceId)) {
      return json(400, { errcode: 'M_UNKNOWN_DEVICE', error: `no device ${call.deviceId} for ${user}` });
    }
    if (p === '/sync' && call.method === 'GET') return this.sync(user, call.deviceId, query);
    let request: OutgoingRequest;
    const toDevice = /^\/sendToDevice\/([^/]+)\/([^/]+)$/.exec(p);
    if (p === '/keys/upload') request = { type: 'keys_upload', id: 'x', body };
    else if (p === '/keys/query') request = { type: 'keys_query', id: 'x', body };
    else if (p === '/keys/claim') request = { type: 'keys_claim', id: 'x', body };
    else if (p === '/keys/signatures/upload') request = { type: 'signature_upload', id: 'x', body };
    else if (p === '/keys/device_signing/upload') {
      if (this.signingKeysNeedAuth) {
        return json(401, { session: 'uia', flows: [{ stages: ['m.login.password'] }], params: {} });
      }
      const handled = this.hs.handle(user, call.deviceId, { type: 'signing_keys_upload', id: 'x', body });
      return new Response(handled, { status: 200, headers: { 'Content-Type': 'application/json' } });
    }
    else if (toDevice) request = { type: 'to_device', id: 'x', body, eventType: decodeURIComponent(toDevice[1]!), txnId: toDevice[2]! };
    else return json(404, { errcode: 'M_UNRECOGNIZED', error: `not faked: ${call.method} ${call.path}` });
    return new Response(this.hs.handle(user, call.deviceId, request), { status: 200, headers: { 'Content-Type': 'application/json' } });
  }

  /** `GET /sync` as a device: deletes what `since` acknowledges, returns the next events of its inbox. */
  private sync(userId: string, deviceId: string, query: URLSearchParams): Response {
    const k = `${userId}|${deviceId}`;
    const since = query.get('since');
    const filter = query.get('filter');
    this.syncs.push({ userId, deviceId, since, timeout: query.get('timeout'), filter: filter === null ? null : JSON.parse(filter) });
    const inbox = this.hs.inbox.get(k) ?? [];
    const gone = this.acknowledged.get(k) ?? 0;
    const upTo = since === null ? 0 : Number(/^fake_(\d+)$/.exec(since)?.[1] ?? NaN);
    if (Number.isNaN(upTo)) return json(400, { errcode: 'M_INVALID_PARAM', error: `bad since ${since}` });
    const remove = Math.max(0, Math.min(inbox.length, upTo - gone));
    inbox.splice(0, remove);
    this.hs.inbox.set(k, inbox);
    this.acknowledged.set(k, gone + remove);
    this.pushed.set(k, Math.max(0, (this.pushed.get(k) ?? 0) - remove));
    const events = inbox.slice(0, this.syncLimit);
    return json(200, {
      next_batch: `fake_${gone + remove + events.length}`,
      to_device: { events },
      device_one_time_keys_count: { signed_curve25519: this.hs.oneTimeKeyCount(userId, deviceId) },
    });
  }

  /** The to-device events waiting in a device's inbox (pushed or not, not yet acknowledged). */
  inboxOf(userId: string, deviceId: string): number {
    return this.hs.inbox.get(`${userId}|${deviceId}`)?.length ?? 0;
  }

  /**
   * The transaction Synapse would push now: the to-device events of `devices` not pushed yet
   * (they stay in the inbox until acknowledged) under `field`, their one-time-key counts, and
   * `events`.
   */
  transaction(
    devices: Array<{ userId: string; deviceId: string }>,
    events: Record<string, unknown>[] = [],
    field: 'de.sorunome.msc2409.to_device' | 'to_device' = 'de.sorunome.msc2409.to_device',
  ): TransactionBody {
    const toDevice: Record<string, unknown>[] = [];
    const counts: Record<string, Record<string, Record<string, number>>> = {};
    for (const { userId, deviceId } of devices) {
      const k = `${userId}|${deviceId}`;
      const inbox = this.hs.inbox.get(k) ?? [];
      for (const e of inbox.slice(this.pushed.get(k) ?? 0)) toDevice.push({ ...e, to_user_id: userId, to_device_id: deviceId });
      this.pushed.set(k, inbox.length);
      counts[userId] = { ...counts[userId], [deviceId]: { signed_curve25519: this.hs.oneTimeKeyCount(userId, deviceId) } };
    }
    return {
      events: events as TransactionBody['events'],
      [field]: toDevice,
      'org.matrix.msc3202.device_one_time_keys_count': counts,
    } as TransactionBody;
  }
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

/**
 * A temporary store root and an `open` that opens an {@link AppserviceCrypto} on it against
 * `fake` (`base`, then each call's `extra`, over the defaults); the root and every manager opened
 * are cleaned up through `cleanup`, last first.
 */
export async function appserviceRoot(
  fake: FakeAppserviceHomeserver,
  cleanup: Array<() => Promise<void>>,
  base: Partial<AppserviceCryptoOptions> = {},
): Promise<{ root: string; open: (extra?: Partial<AppserviceCryptoOptions>) => Promise<AppserviceCrypto> }> {
  const root = await mkdtemp(join(tmpdir(), 'mcn-as-'));
  cleanup.push(() => rm(root, { recursive: true, force: true }));
  const open = async (extra: Partial<AppserviceCryptoOptions> = {}): Promise<AppserviceCrypto> => {
    const c = await AppserviceCrypto.open({
      homeserverUrl: 'http://hs.invalid',
      registration,
      storeRoot: root,
      transport: { fetch: fake.fetch, maxRetries: 0 },
      ...base,
      ...extra,
    });
    cleanup.push(() => c.close());
    return c;
  };
  return { root, open };
}
