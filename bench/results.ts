/** The shape of bench/results/latest.json. */

export type ImplName = 'matrix-crypto-node' | 'wasm' | 'official-node' | 'rust-crate' | 'mautrix-go' | 'floor';
export type PhaseName = 'keys_query' | 'olm_sessions' | 'share_new' | 'share_existing' | 'encrypt_decrypt' | 'share_withheld';

/** One implementation, store, size and phase: medians over `reps` repetitions. */
export interface Run {
  impl: ImplName;
  /** `memory`, `sqlite`, or `none` for the floor. */
  store: string;
  n: number;
  devicesPerUser: number;
  phase: PhaseName;
  /** Median wall time. */
  wallMs: number;
  /** Median wall time divided by the recipient devices (N fixture devices + the decrypting one). */
  usPerDevice: number;
  /** Peak resident memory of the process during the phase (high-water mark reset before it). */
  peakRssMb: number;
  /** Bytes of to-device request bodies the phase produced (0 for phases that send none). */
  toDeviceBytes: number;
  /** Longest event-loop delay while the phase ran; null where there is no event loop (Rust). */
  maxEventLoopDelayMs: number | null;
  reps: number;
  minMs: number;
  maxMs: number;
  /**
   * Wall time of each repetition in the order they ran. The implementations take turns, so
   * repetition i of each ran next to repetition i of the others (absent in older result files).
   */
  repMs?: number[];
  /** Recipient devices: N fixture devices plus the one real recipient that decrypts. */
  devices: number;
  /** CPUs the run could use (the floor reports one row per thread count). */
  cores: number;
  /** Resident memory before the machines were opened (or the floor's inputs were built). */
  rssBaseMb: number;
}

export interface Skip {
  impl: ImplName;
  store?: string;
  n?: number;
  devicesPerUser?: number;
  phase?: PhaseName;
  reason: string;
}

export interface Results {
  date: string;
  command: string;
  machine: { cpus: number; model: string; node: string; rustc: string };
  fixtures: { n: number; devicesPerUser: number; devices: number; generationMs: number }[];
  skipped: Skip[];
  runs: Run[];
}
