// Reading metrics in tests: a value out of a snapshot, and a small parser of the Prometheus text
// exposition format (what a scraper reads), so the exposition is checked, not only the JSON.
import type { MetricName, MetricsSnapshot } from '../../src/index';

/** The value of a counter or gauge series (0 when the series was never recorded). */
export function value(snapshot: MetricsSnapshot, name: MetricName, labels: Record<string, string> = {}): number {
  const metric = snapshot[name];
  if (metric.type === 'histogram') throw new Error(`${name} is a histogram`);
  return metric.samples.find((s) => sameLabels(s.labels, labels))?.value ?? 0;
}

/** How many values a histogram series observed (0 when never recorded). */
export function observed(snapshot: MetricsSnapshot, name: MetricName, labels: Record<string, string> = {}): number {
  const metric = snapshot[name];
  if (metric.type !== 'histogram') throw new Error(`${name} is not a histogram`);
  return metric.samples.find((s) => sameLabels(s.labels, labels))?.count ?? 0;
}

function sameLabels(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
}

export interface ParsedSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface ParsedFamily {
  type: string;
  help: string;
  samples: ParsedSample[];
}

/**
 * Parses the text exposition format 0.0.4: `# HELP` and `# TYPE` lines, then sample lines
 * `name{label="value",...} number`. Throws on any line that does not follow the format, on a
 * sample of a family without `# TYPE`, and on a family declared twice.
 */
export function parseExposition(text: string): Map<string, ParsedFamily> {
  const families = new Map<string, ParsedFamily>();
  const family = (name: string): ParsedFamily => {
    const f = families.get(name);
    if (!f) throw new Error(`sample of undeclared family: ${name}`);
    return f;
  };
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let m = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (m) {
      if (families.has(m[1]!)) throw new Error(`family declared twice: ${m[1]}`);
      families.set(m[1]!, { type: '', help: m[2]!, samples: [] });
      continue;
    }
    m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (m) {
      family(m[1]!).type = m[2]!;
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (-?(?:[0-9.e+-]+|Inf|NaN|\+Inf))$/.exec(line);
    if (!m) throw new Error(`not an exposition line: ${line}`);
    const [, name, rawLabels, raw] = m;
    const labels: Record<string, string> = {};
    if (rawLabels) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/y;
      let at = 0;
      while (at < rawLabels.length) {
        re.lastIndex = at;
        const l = re.exec(rawLabels);
        if (!l) throw new Error(`bad labels: ${rawLabels}`);
        labels[l[1]!] = l[2]!;
        at = re.lastIndex;
      }
    }
    const base = families.has(name!) ? name! : name!.replace(/_(bucket|sum|count)$/, '');
    const f = family(base);
    if (!f.type) throw new Error(`sample before # TYPE: ${name}`);
    f.samples.push({ name: name!, labels, value: Number(raw === '+Inf' ? Infinity : raw) });
  }
  return families;
}
