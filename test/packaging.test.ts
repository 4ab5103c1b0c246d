// The published layout, end to end: `npm pack` the main package and the linux-x64-gnu platform
// package, install the tarballs into fresh projects (the registry is only asked about the other
// platforms' optional packages), and run a small encrypt/decrypt program from there.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { packDistribution, pathWithoutCargo, run, tag, type Tarballs } from './helpers/pack';

const PROGRAM = `
const { OlmMachine } = require('matrix-crypto-node');
const { TestHomeserver, TestDevice } = require('matrix-crypto-node/testing');
(async () => {
  const hs = new TestHomeserver();
  const alice = await TestDevice.create(hs, '@alice:example.org', 'ALICE');
  const bob = await TestDevice.create(hs, '@bob:example.org', 'BOB');
  const event = await alice.sendMessage('!room:example.org', [alice.userId, bob.userId], { msgtype: 'm.text', body: 'packed and shipped' });
  await bob.sync();
  const { event: clear } = await bob.machine.decryptRoomEvent(event, '!room:example.org');
  console.log(JSON.stringify({ body: clear.content.body, ciphertext: event.content.algorithm, isClass: typeof OlmMachine.open }));
})().catch((err) => { console.error(err.message); process.exit(1); });
`;

// Code written for the official bindings, run unchanged against the aliased package.
const ALIAS_PROGRAM = `
const { OlmMachine, UserId, DeviceId, RoomId, EncryptionSettings, RequestType } = require('@matrix-org/matrix-sdk-crypto-nodejs');
(async () => {
  const m = await OlmMachine.initialize(new UserId('@bot:example.org'), new DeviceId('BOT'));
  const [upload] = await m.outgoingRequests();
  await m.markRequestAsSent(upload.id, upload.type, JSON.stringify({ one_time_key_counts: { signed_curve25519: 50 } }));
  const room = new RoomId('!r:example.org');
  await m.shareRoomKey(room, [m.userId], new EncryptionSettings());
  const encrypted = JSON.parse(await m.encryptRoomEvent(room, 'm.room.message', JSON.stringify({ body: 'official API, other engine' })));
  const event = { type: 'm.room.encrypted', sender: '@bot:example.org', event_id: '$1', origin_server_ts: 1, content: encrypted };
  const decrypted = await m.decryptRoomEvent(JSON.stringify(event), room);
  console.log(JSON.stringify({ body: JSON.parse(decrypted.event).content.body, type: RequestType.KeysUpload }));
  m.close();
})().catch((err) => { console.error(err); process.exit(1); });
`;

function freshProject(dir: string, tarballs: string[]) {
  mkdirSync(dir);
  writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: path.basename(dir), version: '1.0.0', private: true }));
  writeFileSync(path.join(dir, 'program.js'), PROGRAM);
  run('npm', ['install', '--no-audit', '--no-fund', ...tarballs], dir);
}

describe('npm pack, install into a fresh project, run', () => {
  let tmp: string;
  let tgz: Tarballs;

  beforeAll(() => {
    tmp = mkdtempSync(path.join(tmpdir(), 'mcn-pack-'));
    tgz = packDistribution(tmp);
  }, 180_000);

  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('ships the sources for a source build and no binary in the main package', () => {
    const files = run('tar', ['-tzf', tgz.main], tmp).split('\n');
    expect(files).toEqual(expect.arrayContaining(['package/native/src/lib.rs', 'package/Cargo.lock', 'package/dist/compat/index.js']));
    expect(files.filter((f) => f.endsWith('.node'))).toEqual([]);
    const manifest = JSON.parse(run('tar', ['-xzOf', tgz.main, 'package/package.json'], tmp));
    expect(Object.keys(manifest.optionalDependencies)).toHaveLength(manifest.napi.targets.length);
    expect(manifest.optionalDependencies).toMatchObject({ [`matrix-crypto-node-${tag}`]: manifest.version });
    expect(manifest.scripts).not.toHaveProperty('install');
    expect(manifest.scripts).not.toHaveProperty('postinstall');
  });

  it('ships Rust sources that cargo loads as a workspace with the pinned Cargo.lock', () => {
    const unpacked = mkdtempSync(path.join(tmp, 'sources-'));
    run('tar', ['-xzf', tgz.main, '-C', unpacked], tmp);
    const pkg = path.join(unpacked, 'package');
    run(process.execPath, ['-e', `require(${JSON.stringify(path.join(pkg, 'native', 'build-from-source.js'))}).pruneWorkspaceMembers()`], pkg);
    const metadata = JSON.parse(run('cargo', ['metadata', '--locked', '--format-version', '1', '--manifest-path', path.join(pkg, 'Cargo.toml')], pkg));
    expect(metadata.workspace_members).toHaveLength(1);
    expect(metadata.packages.find((p: { name: string }) => p.name === 'matrix-sdk-crypto')?.version).toMatch(/^0\.19\./);
  });

  it('installs with the prebuilt platform package and encrypts/decrypts', () => {
    const app = path.join(tmp, 'app');
    freshProject(app, [tgz.main, tgz.platform]);
    const installed = path.join(app, 'node_modules', 'matrix-crypto-node');
    // The addon comes from the platform package: nothing was built, nothing downloaded.
    expect(readdirSync(path.join(installed, 'native')).filter((f) => f.endsWith('.node'))).toEqual([]);
    expect(existsSync(path.join(installed, 'target'))).toBe(false);
    const out = run(process.execPath, ['program.js'], app, { ...process.env, PATH: pathWithoutCargo() });
    expect(JSON.parse(out)).toEqual({ body: 'packed and shipped', ciphertext: 'm.megolm.v1.aes-sha2', isClass: 'function' });
  }, 180_000);

  it('stands in for @matrix-org/matrix-sdk-crypto-nodejs under that name through the compat shim', () => {
    const app = path.join(tmp, 'app-alias');
    mkdirSync(app);
    writeFileSync(
      path.join(app, 'package.json'),
      JSON.stringify({
        name: 'app-alias',
        version: '1.0.0',
        private: true,
        dependencies: { '@matrix-org/matrix-sdk-crypto-nodejs': `file:${tgz.shim}`, 'matrix-crypto-node': `file:${tgz.main}`, [`matrix-crypto-node-${tag}`]: `file:${tgz.platform}` },
      }),
    );
    writeFileSync(path.join(app, 'program.js'), ALIAS_PROGRAM);
    run('npm', ['install', '--no-audit', '--no-fund'], app);
    expect(JSON.parse(run(process.execPath, ['program.js'], app))).toEqual({ body: 'official API, other engine', type: 0 });
  }, 180_000);

  it('without a prebuilt addon and without cargo, fails with one error that says what to install', () => {
    const app = path.join(tmp, 'app-no-prebuilt');
    freshProject(app, [tgz.main]);
    const result = spawnSync(process.execPath, ['program.js'], {
      cwd: app,
      encoding: 'utf8',
      env: { ...process.env, PATH: pathWithoutCargo() },
    });
    expect(result.status).not.toBe(0);
    expect(result.stderr).toContain(`matrix-crypto-node: no native addon for ${tag}`);
    expect(result.stderr).toContain('cargo is not on PATH');
    expect(result.stderr).toMatch(/install a Rust toolchain >= 1\.\d+ \(cargo, from https:\/\/rustup\.rs\)/);
    expect(result.stderr).toContain('npx matrix-crypto-node-build');
  }, 180_000);

  // A release build of the whole dependency tree takes many minutes on two cores: opt in.
  it.runIf(process.env.MCN_TEST_SOURCE_BUILD === '1')(
    'without a prebuilt addon but with cargo, builds from source on first use',
    () => {
      const app = path.join(tmp, 'app-source-build');
      freshProject(app, [tgz.main]);
      const out = run(process.execPath, ['program.js'], app);
      expect(JSON.parse(out)).toMatchObject({ body: 'packed and shipped' });
      const native = path.join(app, 'node_modules', 'matrix-crypto-node', 'native');
      expect(existsSync(path.join(native, `matrix-crypto-node.${tag}.node`))).toBe(true);
    },
    3_600_000,
  );
});
