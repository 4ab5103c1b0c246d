// Packs the published layout from this checkout: the main package, this platform's package
// (with the addon `npm run build` made) and the compat shim, as npm tarballs.
import { execFileSync, spawnSync } from 'node:child_process';
import { accessSync, constants, cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export const repo = path.resolve(__dirname, '..', '..');
const { platformTag } = require('../../native/platform') as { platformTag(): string };
/** napi-rs's tag of this machine, e.g. `linux-x64-gnu`. */
export const tag = platformTag();

/** Run a command, returning its stdout; throws with its stderr on failure. */
export function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): string {
  return execFileSync(cmd, args, { cwd, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 256 * 1024 * 1024 });
}

/** A PATH without any directory that holds cargo: a machine without a Rust toolchain. */
export function pathWithoutCargo(): string {
  return (process.env.PATH ?? '')
    .split(path.delimiter)
    .filter((dir) => {
      try {
        accessSync(path.join(dir, 'cargo'), constants.X_OK);
        return false;
      } catch {
        return true;
      }
    })
    .join(path.delimiter);
}

/** The tarballs of one `npm pack` run. */
export interface Tarballs {
  /** matrix-crypto-node. */
  main: string;
  /** matrix-crypto-node-<tag>, holding the addon. */
  platform: string;
  /** matrix-crypto-node-compat. */
  shim: string;
}

/**
 * The main package as `npm publish` ships it: `prepublishOnly` (napi pre-publish) adds one
 * `optionalDependencies` entry per platform package, which the repository's package.json
 * cannot list while they are unpublished (npm ci would want them in the lock).
 */
function packMain(dir: string): void {
  // prepack compiles the TypeScript.
  run('npm', ['pack', '--pack-destination', dir], repo);
  const tarball = path.join(dir, 'matrix-crypto-node-0.1.0.tgz');
  const staging = mkdtempSync(path.join(dir, 'main-'));
  run('tar', ['-xzf', tarball, '-C', staging], dir);
  const manifestPath = path.join(staging, 'package', 'package.json');
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
  manifest.optionalDependencies = Object.fromEntries(
    readdirSync(path.join(repo, 'npm')).map((platform) => {
      const pkg = JSON.parse(readFileSync(path.join(repo, 'npm', platform, 'package.json'), 'utf8'));
      return [pkg.name, manifest.version];
    }),
  );
  writeFileSync(manifestPath, JSON.stringify(manifest, null, 2));
  run('npm', ['pack', '--ignore-scripts', '--pack-destination', dir], path.join(staging, 'package'));
  rmSync(staging, { recursive: true, force: true });
}

/** `npm pack` the three packages into `dir`. */
export function packDistribution(dir: string): Tarballs {
  packMain(dir);
  const platformDir = path.join(dir, `platform-${tag}`);
  cpSync(path.join(repo, 'npm', tag), platformDir, { recursive: true });
  const addon = path.join(platformDir, `matrix-crypto-node.${tag}.node`);
  cpSync(path.join(repo, 'native', `matrix-crypto-node.${tag}.node`), addon);
  // The debug build carries ~100 MB of debug info; dropping it only makes packing faster.
  spawnSync('strip', ['--strip-debug', addon]);
  run('npm', ['pack', '--pack-destination', dir], platformDir);
  run('npm', ['pack', '--pack-destination', dir], path.join(repo, 'compat-shim'));
  return {
    main: path.join(dir, 'matrix-crypto-node-0.1.0.tgz'),
    platform: path.join(dir, `matrix-crypto-node-${tag}-0.1.0.tgz`),
    shim: path.join(dir, 'matrix-crypto-node-compat-0.1.0.tgz'),
  };
}
