// The demo's homeserver mode (`npm run demo -- --homeserver URL --shared-secret S`) against
// Synapse, run as a user would run it: a separate process, judged by its output.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startSynapse, type Homeserver } from './synapse';

const sharedSecret = randomBytes(16).toString('hex');
let hs: Homeserver;

beforeAll(async () => {
  hs = await startSynapse({ extraConfig: { registration_shared_secret: sharedSecret } });
});
afterAll(async () => {
  await hs?.stop();
});

function runDemo(args: string[]): Promise<{ code: number | null; out: string }> {
  const root = join(__dirname, '..', '..');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'examples', 'demo.ts'), ...args], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (out += c));
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, out }));
  });
}

it('the homeserver mode of the demo runs its steps against Synapse', async (ctx) => {
  ctx.onTestFailed(() => console.error(`--- Synapse log tail ---\n${hs.logTail(80)}`));
  const { code, out } = await runDemo(['--homeserver', hs.baseUrl, '--shared-secret', sharedSecret]);
  if (code !== 0) console.error(out);
  expect(code).toBe(0);
  expect(out).toMatch(/alice reads: "Hello from the bot!" from @demo-bot-\w+:localhost\//);
  expect(out).toMatch(/bot reads: "Hi bot, loud and clear\." from @demo-alice-\w+:localhost\//);
  expect(out).toContain('same identity key: yes');
  expect(out).toMatch(/DecryptionError code=MissingRoomKey/);
  expect(out).toMatch(/: m\.unverified \(notice sent\)/);
  expect(out).toMatch(/alice reads: DecryptionError code=MissingRoomKey withheld=m\.unverified \(session\)/);
  expect(out).toMatch(/\nDone\.\n/);
}, 120_000);

it('refuses a wrong shared secret with the homeserver error', async () => {
  const { code, out } = await runDemo(['--homeserver', hs.baseUrl, '--shared-secret', 'not-the-secret']);
  expect(code).toBe(1);
  expect(out).toMatch(/HTTP 403/);
});
