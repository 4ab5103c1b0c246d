import { describe, it, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

/** Run a scenario of memory.ts in `node --expose-gc` and return its figures. */
function scenario(...args: (string | number)[]) {
  const out = execFileSync(process.execPath, ['--expose-gc', '--import', 'tsx', join(__dirname, 'memory-child.ts'), ...args.map(String)], {
    encoding: 'utf8',
    env: { ...process.env, RUST_BACKTRACE: '0' },
    maxBuffer: 16 * 2 ** 20,
  });
  return JSON.parse(out.trim().split('\n').at(-1)!);
}

describe('native memory', () => {
  it('machines dropped without close() are finalized, and their native side releases the store', () => {
    const f = scenario('finalizers', 80);
    expect(f.finalized).toBe(80);
    expect(f.reopenedAfterCollection).toBe(f.sqlite);
  });

  // How far RSS drifts over the cycles is a figure of `npm run reliability -- memory`, not a test.
  it('machines opened and closed in cycles each reopen their SQLite account', () => {
    const f = scenario('cycles', 5, 40);
    expect(f.rssMiB).toHaveLength(5);
    expect(f.sqlitePerCycle).toBe(20);
    expect(f.sqliteAccountsKept).toBe(20);
  });

  it('a reduced soak: every message decrypts; a repeated 200-device share reaches every device each time', () => {
    expect(scenario('soak', 2_000).failures).toBe(0);
    expect(scenario('shares', 200, 4).toDeviceMessagesPerShare).toBe(200);
  });
});
