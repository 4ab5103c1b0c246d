/**
 * Request floods: thousands of room-key requests or withheld notices from one device, as a
 * hostile user can send them. The cost must stay bounded (time and memory grow at most in
 * proportion to the flood, never with its square), and so must what the machine sends in
 * return and what it keeps in its store.
 *
 * Shared by the vitest suite (a flood of a few thousand) and `npm run reliability` (larger).
 */
import { randomUUID } from 'node:crypto';
import { TestDevice, TestHomeserver } from '../../src/testing';
import type { MatrixEvent } from '../../src/types';

const ALICE = '@alice:example.org';
const MALLORY = '@mallory:example.org';
const ROOM = '!room:example.org';

export interface FloodFigures {
  kind: 'key requests' | 'room notices' | 'm.no_olm notices';
  /** Events in the flood, delivered in batches of `batch`. */
  events: number;
  batch: number;
  /** Wall time of each tenth of the flood, in ms: flat means linear cost. */
  tenthsMs: number[];
  totalMs: number;
  /** RSS growth over the flood, in MiB. */
  rssGrowthMiB: number;
  /** To-device messages alice sent in answer. */
  answersSent: number;
  /** Withheld records alice keeps afterwards (room records of the flooded sessions, or no_olm records). */
  recordsKept: number;
  /** Entries reported back to the application (keyRequestAnswers or withheldNotices). */
  reported: number;
}

function floodEvent(kind: FloodFigures['kind'], i: number): MatrixEvent {
  switch (kind) {
    case 'key requests':
      return {
        type: 'm.room_key_request',
        sender: MALLORY,
        content: {
          action: 'request',
          requesting_device_id: 'M',
          request_id: randomUUID(),
          body: { algorithm: 'm.megolm.v1.aes-sha2', room_id: ROOM, session_id: `s${i}` },
        },
      };
    case 'room notices':
      return {
        type: 'm.room_key.withheld',
        sender: MALLORY,
        content: { algorithm: 'm.megolm.v1.aes-sha2', code: 'm.unverified', room_id: ROOM, session_id: `s${i % 100}`, sender_key: `key${i}`, from_device: 'M' },
      };
    case 'm.no_olm notices':
      return {
        type: 'm.room_key.withheld',
        sender: MALLORY,
        content: { algorithm: 'm.megolm.v1.aes-sha2', code: 'm.no_olm', sender_key: `key${i}`, from_device: `M${i}` },
      };
  }
}

export async function runFlood(kind: FloodFigures['kind'], events: number, batch = 500): Promise<FloodFigures> {
  const hs = new TestHomeserver();
  const alice = await TestDevice.create(hs, ALICE, 'ALICE');
  // Mallory's devices were never queried: nothing contradicts what her notices claim, which is
  // the most a flood can get stored.
  const sentBefore = hs.sent.length;
  const tenthsMs: number[] = [];
  let reported = 0;
  global.gc?.();
  const rssBefore = process.memoryUsage().rss;
  const start = performance.now();
  let tenthStart = start;
  for (let done = 0; done < events; ) {
    const n = Math.min(batch, events - done);
    const toDeviceEvents = Array.from({ length: n }, (_, k) => floodEvent(kind, done + k));
    const result = await alice.machine.receiveSyncChanges({ toDeviceEvents });
    await alice.flush();
    reported += kind === 'key requests' ? result.keyRequestAnswers.length : result.withheldNotices.length;
    done += n;
    if (done >= ((tenthsMs.length + 1) * events) / 10) {
      const now = performance.now();
      tenthsMs.push(Math.round(now - tenthStart));
      tenthStart = now;
    }
  }
  const totalMs = Math.round(performance.now() - start);
  global.gc?.();
  const rssGrowthMiB = Math.round(((process.memoryUsage().rss - rssBefore) / 2 ** 20) * 10) / 10;
  let recordsKept = 0;
  if (kind === 'm.no_olm notices') recordsKept = (await alice.machine.getNoOlmNotices(MALLORY)).length;
  else if (kind === 'room notices') {
    for (let s = 0; s < 100; s++) recordsKept += (await alice.machine.getWithheldRecords(ROOM, `s${s}`)).length;
  }
  return { kind, events, batch, tenthsMs, totalMs, rssGrowthMiB, answersSent: hs.sent.length - sentBefore, recordsKept, reported };
}
