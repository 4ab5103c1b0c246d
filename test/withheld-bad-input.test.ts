// Every public method, given bad values: the rejection names the exact path of the bad value and
// says what was expected in JavaScript terms (never serde's or Rust's vocabulary, never a JSON
// position in text the caller did not write).
import { beforeAll, describe, expect, it } from 'vitest';
import { MatrixCryptoError, OlmMachine } from '../src/index';

const ROOM = '!r:example.org';
const BOB = '@bob:example.org';

/** Words that belong to Rust, serde or a JSON parser, not to a JavaScript caller. */
const INTERNALS = /serde|untagged|variant|struct |sequence|\bmap\b|line \d+ column|invalid type|u64|u32|i64|Some\(|None\b|Rust/;

type Case = [name: string, call: (m: OlmMachine) => unknown, field: string, message: RegExp];

const cases: Case[] = [
  ['open: userId not a string', () => OlmMachine.open({ userId: 5, deviceId: 'D', store: { kind: 'memory' } } as never), 'userId', /must be a string, got number/],
  ['open: no store', () => OlmMachine.open({ userId: BOB, deviceId: 'D' } as never), 'store', /is required/],
  ['open: store kind', () => OlmMachine.open({ userId: BOB, deviceId: 'D', store: { kind: 'disk' } } as never), 'store.kind', /"disk" is not one of sqlite, sqlite-crate, postgres, memory/],
  ['open: policy as a string', () => OlmMachine.open({ userId: BOB, deviceId: 'D', store: { kind: 'memory' }, withheld: 'all' } as never), 'withheld', /must be an object \{ send, reasons \}, got a string/],
  ['open: policy send', () => OlmMachine.open({ userId: BOB, deviceId: 'D', store: { kind: 'memory' }, withheld: { send: 7 } } as never), 'withheld.send', /must be "all", "none" or an array of withheld codes, got the number 7/],
  ['open: reactToNoOlm', () => OlmMachine.open({ userId: BOB, deviceId: 'D', store: { kind: 'memory' }, reactToNoOlm: 'yes' } as never), 'reactToNoOlm', /must be a boolean/],
  ['receiveSyncChanges: changed not an array', (m) => m.receiveSyncChanges({ changedDevices: { changed: 'x' } } as never), 'changes.changedDevices.changed', /must be an array, got the string "x"/],
  ['receiveSyncChanges: a changed user not a string', (m) => m.receiveSyncChanges({ changedDevices: { changed: [BOB, 3] } } as never), 'changes.changedDevices.changed[1]', /must be a string, got the number 3/],
  ['receiveSyncChanges: a malformed user id', (m) => m.receiveSyncChanges({ changedDevices: { changed: ['bob'] } } as never), 'changes.changedDevices.changed[0]', /./],
  ['receiveSyncChanges: key counts', (m) => m.receiveSyncChanges({ oneTimeKeyCounts: { signed_curve25519: -1 } }), 'changes.oneTimeKeyCounts.signed_curve25519', /must be a non-negative integer, got the number -1/],
  ['receiveSyncChanges: toDeviceEvents not an array', (m) => m.receiveSyncChanges({ toDeviceEvents: {} } as never), 'changes.toDeviceEvents', /must be an array, got an object/],
  ['receiveSyncChanges: unknown property', (m) => m.receiveSyncChanges({ toDevice: [] } as never), 'changes.toDevice', /has an unknown property "toDevice"; the known ones are /],
  ['receiveSyncChanges: not an object', (m) => m.receiveSyncChanges(7 as never), 'changes', /must be an object/],
  ['setWithheldPolicy: a string', (m) => m.setWithheldPolicy('not json' as never), 'policy', /must be an object \{ send, reasons \}, got a string/],
  ['setWithheldPolicy: send', (m) => m.setWithheldPolicy({ send: 'some' } as never), 'policy.send', /"some" is not "all", "none" or a list of codes/],
  ['setWithheldPolicy: a code in send', (m) => m.setWithheldPolicy({ send: ['m.unverified', 3] } as never), 'policy.send[1]', /must be a string, got the number 3/],
  ['setWithheldPolicy: undefined in send', (m) => m.setWithheldPolicy({ send: ['m.unverified', undefined] } as never), 'policy.send[1]', /must not be undefined/],
  ['setWithheldPolicy: a function as a reason', (m) => m.setWithheldPolicy({ reasons: { 'm.unverified': () => 'x' } } as never), 'policy.reasons["m.unverified"]', /a function is not a JSON value/],
  ['setWithheldPolicy: a reason', (m) => m.setWithheldPolicy({ reasons: { 'm.unverified': 5 } } as never), 'policy.reasons["m.unverified"]', /must be a string, got the number 5/],
  ['setWithheldPolicy: a reason for a bad code', (m) => m.setWithheldPolicy({ reasons: { nodots: 'x' } } as never), 'policy.reasons["nodots"]', /is not a withheld code/],
  ['setWithheldPolicy: unknown property', (m) => m.setWithheldPolicy({ sned: 'all' } as never), 'policy.sned', /has an unknown property "sned"; the known ones are send, reasons/],
  ['setReactToNoOlm', (m) => m.setReactToNoOlm('on' as never), 'on', /must be a boolean/],
  ['shareRoomKey: roomId', (m) => m.shareRoomKey('room', [BOB]), 'roomId', /./],
  ['shareRoomKey: users', (m) => m.shareRoomKey(ROOM, 'bob' as never), 'users', /must be an array of strings/],
  ['shareRoomKey: a user', (m) => m.shareRoomKey(ROOM, [BOB, 'bob']), 'users[1]', /./],
  ['shareRoomKey: rotation period', (m) => m.shareRoomKey(ROOM, [BOB], { rotationPeriodMs: 'x' } as never), 'settings.rotationPeriodMs', /must be a non-negative integer, got the string "x"/],
  ['shareRoomKey: strategy', (m) => m.shareRoomKey(ROOM, [BOB], { sharingStrategy: 'everyone' } as never), 'settings.sharingStrategy', /"everyone" is not one of all_devices, /],
  ['shareRoomKey: per-call policy', (m) => m.shareRoomKey(ROOM, [BOB], { withheld: { reasons: { 'm.blacklisted': false } } } as never), 'settings.withheld.reasons["m.blacklisted"]', /must be a string, got false/],
  ['shareRoomKey: unknown setting', (m) => m.shareRoomKey(ROOM, [BOB], { rotation: 1 } as never), 'settings.rotation', /has an unknown property "rotation"/],
  ['encryptRoomEvent: content', (m) => m.encryptRoomEvent(ROOM, 'm.room.message', 5 as never), 'content', /must be an object/],
  ['encryptRoomEvent: eventType', (m) => m.encryptRoomEvent(ROOM, '', {}), 'eventType', /must not be empty/],
  ['decryptRoomEvent: roomId', (m) => m.decryptRoomEvent({ type: 'm.room.encrypted', content: {} } as never, 'nope'), 'roomId', /./],
  ['decryptRoomEvent: event', (m) => m.decryptRoomEvent(5 as never, ROOM), 'event', /must be an object/],
  ['getDevice: userId', (m) => m.getDevice(5 as never, 'D'), 'userId', /must be a string, got number/],
  ['getUserDevices: userId', (m) => m.getUserDevices('bob'), 'userId', /./],
  ['getNoOlmNotices: deviceId', (m) => m.getNoOlmNotices(BOB, 5 as never), 'deviceId', /must be a string, got number/],
  ['getNoOlmState: userId', (m) => m.getNoOlmState('bob', 'D'), 'userId', /./],
  ['getWithheldRecords: sessionId', (m) => m.getWithheldRecords(ROOM, 5 as never), 'sessionId', /must be a string/],
  ['setLocalTrust: trust', (m) => m.setLocalTrust(BOB, 'BOB', 'trusted' as never), 'trust', /./],
  ['updateTrackedUsers: a user', (m) => m.updateTrackedUsers([BOB, 7 as never]), 'users[1]', /must be a string, got number/],
  ['getMissingSessions: users', (m) => m.getMissingSessions(null as never), 'users', /must be an array of strings/],
  ['markRequestAsSent: unknown id', (m) => m.markRequestAsSent('nope', 'keys_query', '{}'), 'id', /is not a request this machine handed out/],
  [
    'markRequestAsSent: a response of the wrong shape',
    async (m) => {
      const upload = (await m.outgoingRequests()).find((r) => r.type === 'keys_upload')!;
      return m.markRequestAsSent(upload, { one_time_key_counts: 7 });
    },
    'response',
    /^is not a valid homeserver response for this request \(.*must be an object, got the number 7\)$/,
  ],
  ['markRequestAsSent: request', (m) => m.markRequestAsSent(5 as never, '{}'), 'request', /must be a request object or its id/],
  ['exportRoomKeysFile: rounds', (m) => m.exportRoomKeysFile('p', { rounds: 0 }), 'rounds', /must be a positive integer/],
  ['exportRoomKeysFile: passphrase', (m) => m.exportRoomKeysFile(''), 'passphrase', /must not be empty/],
  ['importRoomKeys: a key', (m) => m.importRoomKeys([{ foo: 1 }] as never), 'keys[0]', /./],
  ['enableBackup: version', (m) => m.enableBackup({ publicKey: 'x', version: 5 } as never), 'version', /must be a string/],
  ['on: event', (m) => m.on('message' as never, () => undefined), 'event', /only 'withheld'/],
];

describe('every public method names the bad value in JavaScript terms', () => {
  let machine: OlmMachine;
  beforeAll(async () => {
    machine = await OlmMachine.open({ userId: '@alice:example.org', deviceId: 'ALICE', store: { kind: 'memory' } });
  });

  for (const [name, call, field, message] of cases) {
    it(name, async () => {
      let err: unknown;
      try {
        await call(machine);
      } catch (e) {
        err = e;
      }
      expect(err, 'expected a rejection').toBeInstanceOf(MatrixCryptoError);
      const e = err as MatrixCryptoError;
      expect({ code: e.code, field: e.field }).toEqual({ code: 'InvalidArgument', field });
      expect(e.message.startsWith(`${field}: `), e.message).toBe(true);
      expect(e.message.slice(field.length + 2)).toMatch(message);
      expect(e.message, e.message).not.toMatch(INTERNALS);
    });
  }

  it('the machine still works after every rejection', async () => {
    expect((await machine.shareRoomKey(ROOM, ['@alice:example.org'])).requests).toEqual([]);
  });
});
