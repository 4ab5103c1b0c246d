/**
 * Progress reports of long operations (room-key export and import) and a terminal progress bar
 * to show them.
 *
 * @module
 */
import { MatrixCryptoError } from './errors';

/**
 * Called as a long operation advances: `done` of `total` items are finished. Calls come in
 * increasing order of `done`; the last one has `done === total` (also when `total` is 0) and
 * runs before the operation's promise resolves. Large operations are reported in about 200
 * steps, not once per item.
 */
export type ProgressCallback = (done: number, total: number) => void;

/** Options of {@link terminalProgressBar}. */
export interface ProgressBarOptions {
  /** Where to draw. Default: `process.stderr`. */
  stream?: NodeJS.WriteStream;
  /** Width of the bar in characters. Default: 30. */
  width?: number;
}

/**
 * A {@link ProgressCallback} that draws `label [#####-----] done/total` on one terminal line,
 * redrawn in place, and ends the line when the operation completes. When the stream is not a
 * terminal (a log file, CI), it prints a single line with the final count instead.
 *
 * @example Show progress while importing a key backup file
 * ```ts
 * import { OlmMachine, terminalProgressBar } from 'matrix-crypto-node';
 *
 * const keys = JSON.parse(await fs.readFile('keys.json', 'utf8'));
 * await machine.importRoomKeys(keys, { onProgress: terminalProgressBar('importing room keys') });
 * ```
 */
export function terminalProgressBar(label: string, options: ProgressBarOptions = {}): ProgressCallback {
  const stream = options.stream ?? process.stderr;
  const width = options.width ?? 30;
  let finished = false;
  return (done, total) => {
    if (finished) return;
    if (stream.isTTY) {
      const fraction = total === 0 ? 1 : Math.min(1, done / total);
      const filled = Math.round(fraction * width);
      const bar = '#'.repeat(filled) + '-'.repeat(width - filled);
      stream.write(`\r${label} [${bar}] ${done}/${total}`);
      if (done >= total) stream.write('\n');
    } else if (done >= total) {
      stream.write(`${label}: ${done}/${total}\n`);
    }
    finished = done >= total;
  };
}

/**
 * Wrap a user's callback for the native layer: a throw inside it must not reach the tokio
 * thread that queued the call (that would abort the process), so the first error is kept and
 * rethrown by {@link ProgressRelay.rethrow} once the operation is over. @internal
 */
export class ProgressRelay {
  #error: { value: unknown } | null = null;
  /** The function to hand to the native call, or `undefined` without a user callback. */
  readonly callback: ProgressCallback | undefined;

  constructor(user: ProgressCallback | undefined, field: string) {
    if (user !== undefined && typeof user !== 'function') {
      throw new MatrixCryptoError('InvalidArgument', `${field}: must be a function (done, total) => void`, field);
    }
    this.callback =
      user === undefined
        ? undefined
        : (done, total) => {
            if (this.#error) return;
            try {
              user(done, total);
            } catch (err) {
              this.#error = { value: err };
            }
          };
  }

  /** Throw what the user's callback threw, if anything. */
  rethrow(): void {
    if (this.#error) throw this.#error.value;
  }
}
