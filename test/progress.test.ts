import { describe, it, expect } from 'vitest';
import { MatrixCryptoError, OlmMachine, terminalProgressBar } from '../src/index';

const ROOMS = 1000;

/** A machine holding `rooms` inbound room keys: its own outbound session in each room. */
async function machineWithKeys(rooms: number): Promise<OlmMachine> {
  const m = await OlmMachine.open({ userId: '@keys:example.org', deviceId: 'KEYS', store: { kind: 'memory' } });
  for (let i = 0; i < rooms; i++) {
    await m.shareRoomKey(`!r${i}:example.org`, [m.userId]);
  }
  return m;
}

function recorder() {
  const calls: Array<[number, number]> = [];
  return { calls, onProgress: (done: number, total: number) => void calls.push([done, total]) };
}

function expectWellFormed(calls: Array<[number, number]>, total: number) {
  expect(calls.length).toBeGreaterThan(1);
  // Thousands of keys must not mean thousands of callbacks.
  expect(calls.length).toBeLessThanOrEqual(201);
  for (const [, t] of calls) expect(t).toBe(total);
  for (let i = 1; i < calls.length; i++) expect(calls[i][0]).toBeGreaterThan(calls[i - 1][0]);
  expect(calls.at(-1)).toEqual([total, total]);
}

describe('progress of room-key export and import', () => {
  it('reports export and import progress up to done === total before resolving', async () => {
    const source = await machineWithKeys(ROOMS);
    const exportProgress = recorder();
    const keys = await source.exportRoomKeys({ onProgress: exportProgress.onProgress });
    expect(keys).toHaveLength(ROOMS);
    expectWellFormed(exportProgress.calls, ROOMS);

    const target = await OlmMachine.open({ userId: '@other:example.org', deviceId: 'OTHER', store: { kind: 'memory' } });
    const importProgress = recorder();
    const result = await target.importRoomKeys(keys, { onProgress: importProgress.onProgress });
    expect(result).toMatchObject({ imported: ROOMS, total: ROOMS });
    expectWellFormed(importProgress.calls, ROOMS);
    await source.close();
    await target.close();
  });

  it('reports 0/0 for an empty export, once', async () => {
    const m = await OlmMachine.open({ userId: '@empty:example.org', deviceId: 'EMPTY', store: { kind: 'memory' } });
    const { calls, onProgress } = recorder();
    expect(await m.exportRoomKeys({ roomId: '!none:example.org', onProgress })).toEqual([]);
    expect(calls).toEqual([[0, 0]]);
    await m.close();
  });

  it('finishes the import when the callback throws, then rejects with its error', async () => {
    const source = await machineWithKeys(5);
    const keys = await source.exportRoomKeys();
    const target = await OlmMachine.open({ userId: '@t:example.org', deviceId: 'T', store: { kind: 'memory' } });
    const boom = new Error('progress listener failed');
    let calls = 0;
    await expect(
      target.importRoomKeys(keys, {
        onProgress: () => {
          calls++;
          throw boom;
        },
      }),
    ).rejects.toBe(boom);
    // Reported once, then silenced; the keys were imported regardless.
    expect(calls).toBe(1);
    expect(await target.exportRoomKeys()).toHaveLength(5);
  });

  it('rejects a progress callback that is not a function', async () => {
    const m = await OlmMachine.open({ userId: '@x:example.org', deviceId: 'X', store: { kind: 'memory' } });
    const bad = { onProgress: 'yes' as unknown as () => void };
    await expect(m.importRoomKeys([], bad)).rejects.toMatchObject({ code: 'InvalidArgument', field: 'onProgress' });
    await expect(m.exportRoomKeys(bad)).rejects.toBeInstanceOf(MatrixCryptoError);
  });
});

describe('terminalProgressBar', () => {
  function stream(isTTY: boolean) {
    let out = '';
    const s = { isTTY, write: (chunk: string) => ((out += chunk), true) };
    return { s: s as unknown as NodeJS.WriteStream, text: () => out };
  }

  it('redraws one line on a terminal and ends it at 100%', () => {
    const { s, text } = stream(true);
    const bar = terminalProgressBar('keys', { stream: s, width: 10 });
    bar(5, 10);
    bar(10, 10);
    bar(10, 10);
    expect(text()).toBe('\rkeys [#####-----] 5/10\rkeys [##########] 10/10\n');
  });

  it('prints only the final count when not on a terminal', () => {
    const { s, text } = stream(false);
    const bar = terminalProgressBar('keys', { stream: s });
    bar(1, 3);
    bar(3, 3);
    expect(text()).toBe('keys: 3/3\n');
  });
});
