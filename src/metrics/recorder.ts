/**
 * The figures behind every metric: plain counters, gauges and histograms kept in memory (what
 * `metrics()` snapshots read), mirrored into prom-client metrics when a `Registry` was given.
 * One recorder per registry, so every machine, client and appservice opened with the same
 * registry adds to the same series.
 *
 * @module
 */
import { MatrixCryptoError } from '../errors';
import { DEFINITIONS, type HistogramMetricName, type MetricName } from './definitions';

/**
 * The parts of a prom-client `Registry` this library uses. Pass the registry itself (prom-client
 * 15 or later): `new Registry()`, or prom-client's default `register`.
 */
export interface PrometheusRegistry {
  /** Registers a metric (prom-client calls it from a metric's constructor). */
  registerMetric(metric: unknown): void;
  /** A registered metric by name. */
  getSingleMetric(name: string): unknown;
  /** The text exposition of every registered metric. */
  metrics(): Promise<string>;
  /** Every registered metric with its values. */
  getMetricsAsJSON(): Promise<unknown[]>;
  /** The content type of {@link metrics}. */
  readonly contentType: string;
}

/** The `metrics` option of {@link OlmMachine.open}, {@link EncryptedClient.open}, {@link AppserviceCrypto.open} and {@link HomeserverTransport}. */
export interface MetricsOptions {
  /**
   * A prom-client `Registry` to register this library's metrics in (prom-client is an optional
   * peer dependency: install it to use this). Everything opened with the same registry adds to
   * the same series, and its `metrics()` snapshot shows them all. Without it, the object keeps
   * its own figures, read with its `metrics()`.
   */
  registry?: PrometheusRegistry;
}

/** One series of a counter or gauge. */
export interface MetricSample {
  /** Its label values, by label name. */
  labels: Record<string, string>;
  /** The value. */
  value: number;
}

/** One series of a histogram. */
export interface HistogramSample {
  /** Its label values, by label name. */
  labels: Record<string, string>;
  /** How many values were observed. */
  count: number;
  /** Their sum. */
  sum: number;
  /** How many were at most each of the metric's `buckets` (cumulative, as in Prometheus). */
  bucketCounts: number[];
}

/** A counter's or gauge's figures in a {@link MetricsSnapshot}. */
export interface CounterSnapshot {
  /** `counter` or `gauge`. */
  type: 'counter' | 'gauge';
  /** What it counts. */
  help: string;
  /** One entry per label set recorded so far (one with no labels for an unlabelled metric). */
  samples: MetricSample[];
}

/** A histogram's figures in a {@link MetricsSnapshot}. */
export interface HistogramSnapshot {
  /** `histogram`. */
  type: 'histogram';
  /** What it measures. */
  help: string;
  /** The upper bounds of its buckets. */
  buckets: number[];
  /** One entry per label set recorded so far. */
  samples: HistogramSample[];
}

/**
 * Every metric of this library with its current figures, by metric name: what `metrics()`
 * returns, with or without prom-client. See docs/metrics.md for what each one means.
 */
export type MetricsSnapshot = { [K in MetricName]: K extends HistogramMetricName ? HistogramSnapshot : CounterSnapshot };

interface Series {
  labels: Record<string, string>;
  value: number;
  sum: number;
  buckets: number[];
}

/** The prom-client classes this module uses. */
interface PromClient {
  Counter: new (config: object) => { inc(labels: object, value: number): void };
  Gauge: new (config: object) => { inc(labels: object, value: number): void };
  Histogram: new (config: object) => { observe(labels: object, value: number): void };
}

type PromMetric = { inc?(labels: object, value: number): void; observe?(labels: object, value: number): void };

let promClient: PromClient | null | undefined;

function loadPromClient(): PromClient | null {
  if (promClient === undefined) {
    try {
      // Optional peer dependency: required only when a registry is given.
      promClient = require('prom-client') as PromClient;
    } catch {
      promClient = null;
    }
  }
  return promClient;
}

function isRegistry(value: unknown): value is PrometheusRegistry {
  if (value === null || typeof value !== 'object') return false;
  const r = value as Record<string, unknown>;
  return ['registerMetric', 'getSingleMetric', 'metrics', 'getMetricsAsJSON'].every((f) => typeof r[f] === 'function');
}

/** The recorded figures of every metric, and their prom-client mirror. @internal */
export class MetricsRecorder {
  private readonly series = new Map<MetricName, Map<string, Series>>();
  private readonly prom = new Map<MetricName, PromMetric>();

  /** @param registry - a validated registry to mirror into, with its prom-client. */
  constructor(
    readonly registry: PrometheusRegistry | null = null,
    client: PromClient | null = null,
  ) {
    if (!registry || !client) return;
    for (const [name, def] of Object.entries(DEFINITIONS) as Array<[MetricName, (typeof DEFINITIONS)[MetricName]]>) {
      const config = { name, help: def.help, labelNames: Object.keys(def.labels), registers: [registry] };
      const metric =
        def.type === 'counter'
          ? new client.Counter(config)
          : def.type === 'gauge'
            ? new client.Gauge(config)
            : new client.Histogram({ ...config, buckets: [...(def as { buckets: readonly number[] }).buckets] });
      this.prom.set(name, metric);
    }
  }

  /** Adds `value` to a counter or gauge (a gauge may go down). */
  add(name: MetricName, labels: Record<string, string>, value = 1): void {
    if (value === 0) return;
    const bounded = boundLabels(name, labels);
    this.entry(name, bounded).value += value;
    this.prom.get(name)?.inc?.(bounded, value);
  }

  /** Observes one value of a histogram. */
  observe(name: MetricName, labels: Record<string, string>, value: number): void {
    const bounded = boundLabels(name, labels);
    const s = this.entry(name, bounded);
    const bounds = (DEFINITIONS[name] as { buckets?: readonly number[] }).buckets ?? [];
    s.value++;
    s.sum += value;
    bounds.forEach((b, i) => {
      if (value <= b) s.buckets[i]!++;
    });
    this.prom.get(name)?.observe?.(bounded, value);
  }

  /** The figures of every metric, copied. */
  snapshot(): MetricsSnapshot {
    const out: Record<string, CounterSnapshot | HistogramSnapshot> = {};
    for (const [name, def] of Object.entries(DEFINITIONS) as Array<[MetricName, (typeof DEFINITIONS)[MetricName]]>) {
      const series = [...(this.series.get(name)?.values() ?? [])];
      if (def.type === 'histogram') {
        out[name] = {
          type: 'histogram',
          help: def.help,
          buckets: [...(def as { buckets: readonly number[] }).buckets],
          samples: series.map((s) => ({ labels: { ...s.labels }, count: s.value, sum: s.sum, bucketCounts: [...s.buckets] })),
        };
      } else {
        out[name] = { type: def.type, help: def.help, samples: series.map((s) => ({ labels: { ...s.labels }, value: s.value })) };
      }
    }
    return out as MetricsSnapshot;
  }

  private entry(name: MetricName, labels: Record<string, string>): Series {
    let byKey = this.series.get(name);
    if (!byKey) this.series.set(name, (byKey = new Map()));
    const key = JSON.stringify(labels);
    let s = byKey.get(key);
    if (!s) {
      const size = (DEFINITIONS[name] as { buckets?: readonly number[] }).buckets?.length ?? 0;
      s = { labels, value: 0, sum: 0, buckets: new Array<number>(size).fill(0) };
      byKey.set(key, s);
    }
    return s;
  }
}

/** Every label of the metric, in definition order, with values outside its closed set as `other`. */
function boundLabels(name: MetricName, labels: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [label, allowed] of Object.entries(DEFINITIONS[name].labels) as Array<[string, readonly string[] | ((v: string) => boolean)]>) {
    const value = labels[label] ?? '';
    out[label] = (typeof allowed === 'function' ? allowed(value) : allowed.includes(value)) ? value : 'other';
  }
  return out;
}

/** Sums snapshots series by series (for an object whose parts record in different recorders). @internal */
export function mergeSnapshots(a: MetricsSnapshot, b: MetricsSnapshot): MetricsSnapshot {
  const out = structuredClone(a) as Record<string, CounterSnapshot | HistogramSnapshot>;
  for (const [name, metric] of Object.entries(b) as Array<[string, CounterSnapshot | HistogramSnapshot]>) {
    const target = out[name]!;
    for (const sample of metric.samples) {
      const key = JSON.stringify(sample.labels);
      const same = (target.samples as Array<{ labels: Record<string, string> }>).find((s) => JSON.stringify(s.labels) === key);
      if (target.type === 'histogram') {
        const h = sample as HistogramSample;
        const t = same as HistogramSample | undefined;
        if (!t) target.samples.push(structuredClone(h));
        else {
          t.count += h.count;
          t.sum += h.sum;
          t.bucketCounts = t.bucketCounts.map((c, i) => c + h.bucketCounts[i]!);
        }
      } else {
        const t = same as MetricSample | undefined;
        if (!t) target.samples.push({ labels: { ...sample.labels }, value: (sample as MetricSample).value });
        else t.value += (sample as MetricSample).value;
      }
    }
  }
  return out as MetricsSnapshot;
}

const byRegistry = new WeakMap<PrometheusRegistry, MetricsRecorder>();
/** Option objects made by {@link internalMetrics}: they carry a recorder to share. */
const handedDown = new WeakMap<object, MetricsRecorder>();

/**
 * The recorder for a `metrics` option: the registry's (created on first use), the one an owner
 * handed down ({@link internalMetrics}), or a new private one.
 *
 * @param field - the option's name in errors, e.g. `options.metrics`.
 * @throws {@link MatrixCryptoError} `InvalidArgument` naming `${field}` or `${field}.registry`.
 * @internal
 */
export function recorderFor(options: MetricsOptions | undefined, field: string): MetricsRecorder {
  if (options === undefined) return new MetricsRecorder();
  if (options === null || typeof options !== 'object') {
    throw new MatrixCryptoError('InvalidArgument', `${field}: must be an object { registry }`, field);
  }
  const given = handedDown.get(options);
  if (given) return given;
  const registry = options.registry;
  if (registry === undefined) return new MetricsRecorder();
  if (!isRegistry(registry)) {
    throw new MatrixCryptoError(
      'InvalidArgument',
      `${field}.registry: must be a prom-client Registry (an object with registerMetric, getSingleMetric, metrics and getMetricsAsJSON), got ${describe(registry)}`,
      `${field}.registry`,
    );
  }
  let recorder = byRegistry.get(registry);
  if (!recorder) {
    const client = loadPromClient();
    if (!client) {
      throw new MatrixCryptoError('InvalidArgument', `${field}.registry: prom-client is not installed; npm install prom-client`, `${field}.registry`);
    }
    recorder = new MetricsRecorder(registry, client);
    byRegistry.set(registry, recorder);
  }
  return recorder;
}

/** A `metrics` option that makes the object it is given to record into `recorder`. @internal */
export function internalMetrics(recorder: MetricsRecorder): MetricsOptions {
  const options: MetricsOptions = {};
  handedDown.set(options, recorder);
  return options;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return `an object without ${['registerMetric', 'getSingleMetric', 'metrics', 'getMetricsAsJSON'].filter((f) => typeof (value as Record<string, unknown>)[f] !== 'function').join(', ')}`;
  return `a ${typeof value}`;
}
