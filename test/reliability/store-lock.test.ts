import { describe, it, expect, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MatrixCryptoError, OlmMachine } from '../../src/index';

const dirs: string[] = [];
const tempDir = (prefix: string) => {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(dir);
  return dir;
};
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

const opts = (path: string) => ({ userId: '@bot:example.org', deviceId: 'BOT', store: { kind: 'sqlite' as const, path } });

/** A second Node process that opens the store, reports, and holds it until told to close. */
function holder(path: string) {
  const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, 'store-holder.ts'), path], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines: string[] = [];
  let wake: (() => void) | undefined;
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    lines.push(...d.split('\n').filter(Boolean));
    wake?.();
  });
  const next = async () => {
    while (lines.length === 0) await new Promise<void>((r) => (wake = r));
    return JSON.parse(lines.shift()!) as { opened?: string; error?: { code: string; field?: string; message: string } };
  };
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return { child, next, exited };
}

describe('two processes on one SQLite store', () => {
  it('the second gets StoreLocked naming the holder, never a shared store; the lock goes with the process', async () => {
    const path = tempDir('mcn-lock-');
    const first = holder(path);
    const opened = await first.next();
    expect(opened.opened).toMatch(/^\S+$/);

    const err = await OlmMachine.open(opts(path)).catch((e) => e);
    expect(err).toBeInstanceOf(MatrixCryptoError);
    expect(err.code).toBe('StoreLocked');
    expect(err.field).toBe('store.path');
    expect(err.message).toContain(`process ${first.child.pid}`);

    // Killed without a chance to clean up: the kernel drops the lock with the process.
    first.child.kill('SIGKILL');
    await first.exited;
    const m = await OlmMachine.open(opts(path));
    expect(m.identityKeys.curve25519).toBe(opened.opened);
    await m.close();
  });

  it('two processes racing to open: exactly one wins, the other gets StoreLocked', async () => {
    const path = tempDir('mcn-race-');
    const a = holder(path);
    const b = holder(path);
    const results = await Promise.all([a.next(), b.next()]);
    expect(results.filter((r) => r.opened)).toHaveLength(1);
    expect(results.filter((r) => r.error?.code === 'StoreLocked')).toHaveLength(1);
    for (const h of [a, b]) h.child.stdin.end();
    await Promise.all([a.exited, b.exited]);
  });

  it('in one process: a second open fails until the first machine is closed', async () => {
    const path = tempDir('mcn-same-');
    const m = await OlmMachine.open(opts(path));
    await expect(OlmMachine.open(opts(path))).rejects.toMatchObject({ code: 'StoreLocked', field: 'store.path' });
    await m.close();
    const again = await OlmMachine.open(opts(path));
    expect(again.identityKeys).toEqual(m.identityKeys);
    await again.close();
  });
});
