/**
 * How one phase is measured: wall time, the process's peak RSS during the phase (Linux resets
 * the high-water mark through /proc/self/clear_refs) and the longest event-loop delay.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';

function statusKb(field: string): number {
  const line = readFileSync('/proc/self/status', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(field));
  return line ? Number(line.split(/\s+/)[1]) : NaN;
}

/** Current resident memory, MB. */
export function rssMb(): number {
  return statusKb('VmRSS:') / 1024;
}

/** One measured phase. */
export interface Sample {
  ms: number;
  peakRssMb: number;
  maxEventLoopDelayMs: number;
  toDeviceBytes: number;
}

/**
 * Run `work` and measure it. The event-loop monitor samples every millisecond, so a loop that
 * stays free reports about 1 ms; one blocked by synchronous work reports how long it was blocked.
 */
export async function measure(work: () => Promise<void>): Promise<Sample> {
  (globalThis as { gc?: () => void }).gc?.();
  writeFileSync('/proc/self/clear_refs', '5');
  const monitor = monitorEventLoopDelay({ resolution: 1 });
  monitor.enable();
  // The monitor's first tick only starts its clock: let it tick before the work starts, and
  // again after it ends, so a loop blocked from start to end is recorded too.
  await sleep(5);
  const start = performance.now();
  await work();
  const ms = performance.now() - start;
  await sleep(5);
  monitor.disable();
  return { ms, peakRssMb: statusKb('VmHWM:') / 1024, maxEventLoopDelayMs: monitor.max / 1e6, toDeviceBytes: 0 };
}

/** Median, min and max. */
export function summarise(values: number[]): { median: number; min: number; max: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { median, min: sorted[0]!, max: sorted[sorted.length - 1]! };
}
