/**
 * Hostile input through the public API, with fast-check: to-device events (Olm-encrypted room
 * keys, withheld notices, key requests), whole sync changes, encrypted room events, homeserver
 * responses and key exports, as a bot receives them from a homeserver and from other users.
 *
 * Inputs start from real traffic between two devices on the test homeserver and are mutated
 * node by node (replaced, deleted, retyped, truncated, inflated), plus arbitrary JSON. For every
 * input: the call resolves or rejects with a typed {@link MatrixCryptoError} (never another
 * error, never an `InternalError`, which is what a Rust panic becomes), and a call that rejects
 * changes nothing a user can read back (room keys, withheld records, devices).
 *
 * Shared by the vitest suite (a few hundred runs) and `npm run reliability` (many more).
 */
import fc from 'fast-check';
import { MatrixCryptoError, type OlmMachine } from '../../src/index';
import { TestDevice, TestHomeserver } from '../../src/testing';
import type { MatrixEvent } from '../../src/types';

export const ALICE = '@alice:example.org';
export const BOB = '@bob:example.org';
export const ROOM = '!room:example.org';

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Figures of one run. */
export interface HostileFigures {
  /** Inputs fed to the machine. */
  tried: number;
  /** Inputs the machine refused with a typed error. */
  rejected: number;
  /** Rejections that were not a typed `MatrixCryptoError`, or were `InternalError` (a panic). */
  untyped: number;
  /** Refused inputs after which the store read back differently. */
  storeChanges: number;
  /** Per input kind: [tried, rejected]. */
  byKind: Record<string, [number, number]>;
}

export interface Setup {
  hs: TestHomeserver;
  alice: TestDevice;
  bob: TestDevice;
  /** Real to-device events bob sent alice (Olm-encrypted room keys), and handmade notices and requests. */
  toDevice: MatrixEvent[];
  /** A room event alice can decrypt. */
  roomEvent: MatrixEvent;
  sessionId: string;
}

/** Alice (the target) and Bob (a real peer) with an Olm session and a shared room key. */
export async function setup(): Promise<Setup> {
  const hs = new TestHomeserver();
  const alice = await TestDevice.create(hs, ALICE, 'ALICE');
  const bob = await TestDevice.create(hs, BOB, 'BOB');
  await alice.machine.updateTrackedUsers([ALICE, BOB]);
  await alice.flush();
  const { requests } = await bob.prepareRoom(ROOM, [ALICE, BOB]);
  for (const r of requests) await bob.send(r);
  const olm = hs.inbox.get(`${ALICE}|ALICE`)?.map((e) => structuredClone(e)) ?? [];
  const roomEvent = await bob.encrypt(ROOM, { msgtype: 'm.text', body: 'hello' });
  await alice.sync();
  await alice.machine.decryptRoomEvent(roomEvent, ROOM);
  const sessionId = String(roomEvent.content.session_id);
  const bobKey = bob.machine.identityKeys.curve25519;
  const toDevice: MatrixEvent[] = [
    ...olm,
    {
      type: 'm.room_key.withheld',
      sender: BOB,
      content: { algorithm: 'm.megolm.v1.aes-sha2', code: 'm.unverified', reason: 'verify', room_id: ROOM, session_id: sessionId, sender_key: bobKey, from_device: 'BOB' },
    },
    { type: 'm.room_key.withheld', sender: BOB, content: { algorithm: 'm.megolm.v1.aes-sha2', code: 'm.no_olm', sender_key: bobKey, from_device: 'BOB' } },
    {
      type: 'm.room_key_request',
      sender: BOB,
      content: { action: 'request', requesting_device_id: 'BOB', request_id: 'r1', body: { algorithm: 'm.megolm.v1.aes-sha2', room_id: ROOM, session_id: sessionId, sender_key: bobKey } },
    },
    { type: 'm.room_key_request', sender: ALICE, content: { action: 'request_cancellation', requesting_device_id: 'OTHER', request_id: 'r2' } },
    { type: 'm.dummy', sender: BOB, content: {} },
  ];
  return { hs, alice, bob, toDevice, roomEvent, sessionId };
}

/** What a user can read back from the store about the conversation. */
export async function snapshot(machine: OlmMachine, sessionId: string): Promise<string> {
  const keys = await machine.exportRoomKeys();
  return JSON.stringify({
    keys: keys.map((k) => [k.room_id, k.session_id, k.session_key]).sort(),
    records: await machine.getWithheldRecords(ROOM, sessionId),
    noOlm: await machine.getNoOlmNotices(BOB),
    devices: (await machine.getUserDevices(BOB)).map((d) => [d.deviceId, d.curve25519Key, d.localTrust]),
  });
}

/** Paths to every node of a JSON value. */
function paths(v: Json, prefix: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  out.push(prefix);
  if (Array.isArray(v)) v.forEach((c, i) => paths(c, [...prefix, i], out));
  else if (v !== null && typeof v === 'object') for (const [k, c] of Object.entries(v)) paths(c, [...prefix, k], out);
  return out;
}

type Edit = { at: number; op: 'delete' | 'set' | 'truncate' | 'flip' | 'inflate' | 'addKey'; value: Json; n: number; key: string };

const editArb: fc.Arbitrary<Edit> = fc.record({
  at: fc.nat(),
  op: fc.constantFrom('delete', 'set', 'truncate', 'flip', 'inflate', 'addKey'),
  value: fc.oneof<fc.Arbitrary<Json>[]>(
    fc.string(),
    fc.integer(),
    fc.double(),
    fc.boolean(),
    fc.constant(null),
    fc.constant([] as Json[]),
    fc.constant({} as Json),
    fc.jsonValue({ maxDepth: 2 }) as fc.Arbitrary<Json>,
    fc.constantFrom('m.no_olm', 'm.unverified', 'm.room_key.withheld', '@bob:example.org', '!room:example.org', 'request', 'request_cancellation'),
  ),
  n: fc.nat(),
  key: fc.string({ maxLength: 12 }),
});

/** Apply edits to a copy of `template`. */
export function mutate(template: Json, edits: Edit[]): Json {
  let root = structuredClone(template);
  for (const e of edits) {
    const all = paths(root);
    const path = all[e.at % all.length];
    if (path.length === 0) {
      if (e.op === 'set') root = structuredClone(e.value);
      continue;
    }
    const parent = path.slice(0, -1).reduce<any>((node, step) => node?.[step], root);
    const last = path[path.length - 1];
    if (parent === null || typeof parent !== 'object') continue;
    const current = parent[last];
    switch (e.op) {
      case 'delete':
        if (Array.isArray(parent)) parent.splice(Number(last), 1);
        else delete parent[last];
        break;
      case 'set':
        parent[last] = structuredClone(e.value);
        break;
      case 'truncate':
        if (typeof current === 'string') parent[last] = current.slice(0, e.n % (current.length + 1));
        break;
      case 'flip':
        if (typeof current === 'string' && current.length > 0) {
          const i = e.n % current.length;
          parent[last] = current.slice(0, i) + String.fromCharCode((current.charCodeAt(i) + 1 + (e.n % 60)) % 128) + current.slice(i + 1);
        }
        break;
      case 'inflate':
        parent[last] = 'A'.repeat((e.n % 64) * 1024);
        break;
      case 'addKey':
        if (current !== null && typeof current === 'object' && !Array.isArray(current)) current[e.key] = structuredClone(e.value);
        break;
    }
  }
  return root;
}

const mutation = (template: unknown) => fc.array(editArb, { maxLength: 8 }).map((edits) => mutate(template as Json, edits));

/** One input: which API it goes to, and what. */
type Input =
  | { kind: 'toDevice'; events: Json[] }
  | { kind: 'syncChanges'; changes: Json }
  | { kind: 'roomEvent'; event: Json }
  | { kind: 'response'; response: Json; requestType: 'keys_query' | 'keys_claim' | 'keys_upload' | 'to_device' }
  | { kind: 'keyExport'; keys: Json };

export function inputs(s: Setup): fc.Arbitrary<Input> {
  const templates = s.toDevice;
  const anyTemplate = fc.nat({ max: templates.length - 1 }).chain((i) => mutation(templates[i]));
  const query = { device_keys: { [BOB]: { BOB: JSON.parse(JSON.stringify(s.hs.deviceKeys.get(BOB)?.get('BOB') ?? {})) } }, failures: {} };
  return fc.oneof(
    { weight: 4, arbitrary: fc.array(anyTemplate, { minLength: 1, maxLength: 4 }).map((events) => ({ kind: 'toDevice' as const, events })) },
    {
      weight: 1,
      arbitrary: fc
        .record({
          toDeviceEvents: fc.oneof(fc.array(fc.jsonValue({ maxDepth: 3 }), { maxLength: 3 }), fc.array(anyTemplate, { maxLength: 2 })),
          changedDevices: fc.oneof(fc.record({ changed: fc.array(fc.string()), left: fc.array(fc.string()) }), fc.jsonValue({ maxDepth: 2 })),
          oneTimeKeyCounts: fc.oneof(fc.dictionary(fc.constantFrom('signed_curve25519', 'curve25519', 'x'), fc.integer()), fc.jsonValue({ maxDepth: 1 })),
          unusedFallbackKeys: fc.oneof(fc.constant(undefined), fc.array(fc.string(), { maxLength: 2 })),
        }, { requiredKeys: [] })
        .map((changes) => ({ kind: 'syncChanges' as const, changes: changes as Json })),
    },
    { weight: 3, arbitrary: mutation(s.roomEvent).map((event) => ({ kind: 'roomEvent' as const, event })) },
    {
      weight: 2,
      arbitrary: fc.oneof(
        mutation(query).map((response) => ({ kind: 'response' as const, requestType: 'keys_query' as const, response })),
        mutation({ one_time_keys: { [BOB]: { BOB: { 'signed_curve25519:AAAAAQ': { key: 'x', signatures: {} } } } }, failures: {} }).map(
          (response) => ({ kind: 'response' as const, requestType: 'keys_claim' as const, response }),
        ),
        mutation({ one_time_key_counts: { signed_curve25519: 50 } }).map((response) => ({ kind: 'response' as const, requestType: 'keys_upload' as const, response })),
        fc.jsonValue({ maxDepth: 2 }).map((response) => ({ kind: 'response' as const, requestType: 'to_device' as const, response: response as Json })),
      ),
    },
    {
      weight: 1,
      arbitrary: fc
        .oneof(
          fc.jsonValue({ maxDepth: 3 }),
          mutation([{ algorithm: 'm.megolm.v1.aes-sha2', room_id: ROOM, sender_key: 'K', session_id: 'S', session_key: 'AAAA', sender_claimed_keys: {}, forwarding_curve25519_key_chain: [] }]),
        )
        .map((keys) => ({ kind: 'keyExport' as const, keys: keys as Json })),
    },
  );
}

/** A pending request of `type` on alice's machine, made for the response under test. */
async function pendingRequest(s: Setup, type: string) {
  const m = s.alice.machine;
  if (type === 'keys_query') {
    await m.updateTrackedUsers([BOB]);
    s.hs.changed.get(`${ALICE}|ALICE`)?.add(BOB);
    await m.receiveSyncChanges({ changedDevices: { changed: [BOB], left: [] } });
  }
  for (const r of await m.outgoingRequests()) if (r.type === type) return r;
  return null;
}

interface Fed {
  rejected: boolean;
  /** The rejection was a typed `MatrixCryptoError` other than `InternalError`. */
  typed: boolean;
  /** After a rejection: the store read back differently than before the call. */
  changed: boolean;
}

/** Feed one input; snapshots the store right before the call and right after a refusal. */
async function feed(s: Setup, input: Input): Promise<Fed> {
  const m = s.alice.machine;
  const call = async (run: () => Promise<unknown>): Promise<Fed> => {
    const before = await snapshot(m, s.sessionId);
    try {
      await run();
      return { rejected: false, typed: true, changed: false };
    } catch (e) {
      const typed = e instanceof MatrixCryptoError && e.code !== 'InternalError';
      return { rejected: true, typed, changed: (await snapshot(m, s.sessionId)) !== before };
    }
  };
  switch (input.kind) {
    case 'toDevice':
      return call(() => m.receiveSyncChanges({ toDeviceEvents: input.events as MatrixEvent[] }));
    case 'syncChanges':
      return call(() => m.receiveSyncChanges(input.changes as never));
    case 'roomEvent':
      return call(() => m.decryptRoomEvent(input.event as MatrixEvent, ROOM));
    case 'keyExport':
      return call(() => m.importRoomKeys(JSON.stringify(input.keys)));
    case 'response': {
      const request = await pendingRequest(s, input.requestType);
      const body = JSON.stringify(input.response);
      if (!request) return call(() => m.markRequestAsSent(`not-pending-${input.requestType}`, input.requestType, body));
      const result = await call(() => m.markRequestAsSent(request, body));
      // A refused response leaves the request pending: answer it properly so the next input starts clean.
      if (result.rejected) await s.alice.send(request);
      return result;
    }
  }
}

/** Run `runs` hostile inputs against a fresh pair of devices. */
export async function runHostileInput(runs: number, seed?: number): Promise<HostileFigures> {
  const s = await setup();
  const figures: HostileFigures = { tried: 0, rejected: 0, untyped: 0, storeChanges: 0, byKind: {} };
  await fc.assert(
    fc.asyncProperty(inputs(s), async (input) => {
      const r = await feed(s, input);
      figures.tried++;
      const kind = (figures.byKind[input.kind] ??= [0, 0]);
      kind[0]++;
      if (r.rejected) {
        figures.rejected++;
        kind[1]++;
        if (!r.typed) figures.untyped++;
        if (r.changed) figures.storeChanges++;
      }
      return r.typed && !r.changed;
    }),
    { numRuns: runs, seed, endOnFailure: true },
  );
  // The machine still works afterwards: bob's next message in a new room reaches alice.
  const room = '!after:example.org';
  const event = await s.bob.sendMessage(room, [ALICE, BOB], { msgtype: 'm.text', body: 'after the storm' });
  await s.alice.sync();
  const decrypted = await s.alice.machine.decryptRoomEvent(event, room);
  if ((decrypted.event.content as { body?: string }).body !== 'after the storm') throw new Error('the machine stopped working');
  return figures;
}
