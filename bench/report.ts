/**
 * The results as a Markdown report (tables and the targets of issue #5, computed from the
 * figures) and an SVG plot of µs per device against N.
 */
import type { PhaseName, Results, Run } from './results';
import { summarise } from './measure';

const PHASES: PhaseName[] = ['keys_query', 'olm_sessions', 'share_new', 'share_existing', 'encrypt_decrypt', 'share_withheld'];

/** A line of the plot and a column of the table. */
interface Series {
  label: string;
  color: string;
  dash?: string;
  pick: (r: Run, cpus: number) => boolean;
}

/** Marks mautrix-go's columns: the footnote under each table says why (see `oneRequestNote`). */
const ONE_REQUEST = '¹';

/**
 * The footnote for mautrix-go's figures: it sends the room key to all N devices in one
 * to-device request, where the others send batches; the size of that request in this run.
 */
function oneRequestNote(results: Results, dpu: number): string | undefined {
  const shares = results.runs.filter((r) => r.impl === 'mautrix-go' && r.devicesPerUser === dpu && r.phase === 'share_new');
  if (shares.length === 0) return undefined;
  const n = Math.max(...shares.map((r) => r.n));
  const bytes = Math.max(...shares.filter((r) => r.n === n).map((r) => r.toDeviceBytes));
  return `${ONE_REQUEST} mautrix-go sends a share's to-device messages to all N devices in one request (here ${fmt(bytes / 1e6)} MB at N = ${n.toLocaleString('en-US')}); the other implementations return them in batches. Its olm_sessions is the part of its one ShareGroupSession call from the keys/claim answer to the last Olm session stored, and its share_new the rest of that call.`;
}

function seriesFor(results: Results): Series[] {
  const all: Series[] = [
    { label: 'matrix-crypto-node SQLite', color: '#1f5fbf', pick: (r, c) => r.impl === 'matrix-crypto-node' && r.store === 'sqlite' && r.cores === c },
    { label: 'matrix-crypto-node memory', color: '#1f5fbf', dash: '6 4', pick: (r, c) => r.impl === 'matrix-crypto-node' && r.store === 'memory' && r.cores === c },
    { label: 'matrix-crypto-node SQLite, 1 CPU', color: '#7aa5e6', dash: '2 3', pick: (r, c) => r.impl === 'matrix-crypto-node' && r.store === 'sqlite' && r.cores === 1 && c > 1 },
    { label: 'rust-crate SQLite', color: '#2e8b3a', pick: (r) => r.impl === 'rust-crate' && r.store === 'sqlite' },
    { label: 'rust-crate memory', color: '#2e8b3a', dash: '6 4', pick: (r) => r.impl === 'rust-crate' && r.store === 'memory' },
    { label: 'official-node SQLite', color: '#e08a00', pick: (r) => r.impl === 'official-node' && r.store === 'sqlite' },
    { label: 'official-node memory', color: '#e08a00', dash: '6 4', pick: (r) => r.impl === 'official-node' && r.store === 'memory' },
    { label: 'matrix-crypto-node PostgreSQL', color: '#1f5fbf', dash: '1 3', pick: (r, c) => r.impl === 'matrix-crypto-node' && r.store === 'postgres' && r.cores === c },
    { label: `mautrix-go SQLite${ONE_REQUEST}`, color: '#7b1fa2', pick: (r) => r.impl === 'mautrix-go' && r.store === 'sqlite' },
    { label: `mautrix-go memory${ONE_REQUEST}`, color: '#7b1fa2', dash: '6 4', pick: (r) => r.impl === 'mautrix-go' && r.store === 'memory' },
    { label: `mautrix-go PostgreSQL${ONE_REQUEST}`, color: '#7b1fa2', dash: '1 3', pick: (r) => r.impl === 'mautrix-go' && r.store === 'postgres' },
    { label: 'wasm (memory)', color: '#c62828', pick: (r) => r.impl === 'wasm' },
    { label: 'floor, 1 core', color: '#555555', pick: (r) => r.impl === 'floor' && r.cores === 1 },
    { label: 'floor, all cores', color: '#555555', dash: '6 4', pick: (r, c) => r.impl === 'floor' && r.cores === c && c > 1 },
  ];
  const cpus = results.machine.cpus;
  return all.filter((s) => results.runs.some((r) => s.pick(r, cpus)));
}

const fmt = (v: number | undefined) => {
  if (v === undefined || !Number.isFinite(v)) return '–';
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  if (v >= 1) return v.toFixed(2);
  return v.toPrecision(2);
};
const ratio = (a: number | undefined, b: number | undefined) => (a !== undefined && b !== undefined && b > 0 ? a / b : undefined);

/**
 * `a ÷ b` for two runs of the same phase: the median of the ratios of their repetitions taken in
 * pairs (repetition i of each ran next to the other, so a slow spell of the machine cancels),
 * or the ratio of their medians when the runs do not carry matching repetitions.
 */
export function pairedRatio(a: Run | undefined, b: Run | undefined): number | undefined {
  if (!a || !b) return undefined;
  const x = a.repMs;
  const y = b.repMs;
  if (!x || !y || x.length !== y.length || x.length < 2 || y.some((v) => v <= 0)) return ratio(a.wallMs, b.wallMs);
  return summarise(x.map((v, i) => v / y[i]!)).median;
}
const fmtRatio = (v: number | undefined) => (v === undefined ? '–' : `${v >= 10 ? v.toFixed(0) : v.toFixed(2)}x`);

function find(results: Results, pick: (r: Run) => boolean): Run | undefined {
  return results.runs.find(pick);
}

const ours = (results: Results, store: string, n: number, dpu: number, phase: PhaseName, cores = results.machine.cpus) =>
  find(results, (r) => r.impl === 'matrix-crypto-node' && r.store === store && r.n === n && r.devicesPerUser === dpu && r.phase === phase && r.cores === cores);
const other = (results: Results, impl: Run['impl'], store: string | undefined, n: number, dpu: number, phase: PhaseName, cores?: number) =>
  find(
    results,
    (r) => r.impl === impl && (store === undefined || r.store === store) && r.n === n && r.devicesPerUser === dpu && r.phase === phase && (cores === undefined || r.cores === cores),
  );

function usTable(results: Results, dpu: number): string {
  const cpus = results.machine.cpus;
  const series = seriesFor(results);
  const ns = [...new Set(results.runs.filter((r) => r.devicesPerUser === dpu).map((r) => r.n))].sort((a, b) => a - b);
  if (ns.length === 0) return '';
  const mautrix = results.runs.some((r) => r.impl === 'mautrix-go' && r.devicesPerUser === dpu);
  const head = [
    'phase',
    'N',
    ...series.map((s) => s.label),
    'wasm ÷ ours (SQLite)',
    ...(mautrix ? ['mautrix-go ÷ ours (memory, paired)', 'mautrix-go ÷ ours (SQLite, paired)'] : []),
    'ours ÷ rust-crate (SQLite, paired)',
    `ours (SQLite) ÷ floor/${cpus}`,
  ];
  const rows = [`| ${head.join(' | ')} |`, `| ${head.map((_, i) => (i < 2 ? '---' : '---:')).join(' | ')} |`];
  for (const phase of PHASES) {
    for (const n of ns) {
      const cells = series.map((s) => fmt(results.runs.find((r) => r.n === n && r.devicesPerUser === dpu && r.phase === phase && s.pick(r, cpus))?.usPerDevice));
      const o = ours(results, 'sqlite', n, dpu, phase)?.usPerDevice;
      const w = other(results, 'wasm', undefined, n, dpu, phase)?.usPerDevice;
      const overhead = pairedRatio(ours(results, 'sqlite', n, dpu, phase), other(results, 'rust-crate', 'sqlite', n, dpu, phase));
      const fl = other(results, 'floor', undefined, n, dpu, phase, 1)?.usPerDevice;
      const versus = mautrix
        ? ['memory', 'sqlite'].map((store) => fmtRatio(pairedRatio(other(results, 'mautrix-go', store, n, dpu, phase), ours(results, store, n, dpu, phase))))
        : [];
      rows.push(
        `| ${[phase, n.toLocaleString('en-US'), ...cells, fmtRatio(ratio(w, o)), ...versus, fmtRatio(overhead), fmtRatio(ratio(o, fl === undefined ? undefined : fl / cpus))].join(' | ')} |`,
      );
    }
  }
  const note = oneRequestNote(results, dpu);
  return [...rows, ...(note ? ['', note] : [])].join('\n');
}

function detailTable(results: Results): string {
  const rows = [
    '| impl | store | N | devices/user | phase | wall ms (min–max) | peak RSS MB | to-device MB | max event-loop delay ms |',
    '| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |',
  ];
  const cpus = results.machine.cpus;
  for (const r of results.runs.filter((x) => (x.impl === 'matrix-crypto-node' && x.cores === cpus) || x.impl === 'wasm' || x.impl === 'official-node' || x.impl === 'mautrix-go')) {
    rows.push(
      `| ${r.impl}${r.impl === 'mautrix-go' ? ONE_REQUEST : ''} | ${r.store} | ${r.n.toLocaleString('en-US')} | ${r.devicesPerUser} | ${r.phase} | ${fmt(r.wallMs)} (${fmt(r.minMs)}–${fmt(r.maxMs)}) | ${fmt(r.peakRssMb)} | ${fmt(r.toDeviceBytes / 1e6)} | ${fmt(r.maxEventLoopDelayMs ?? undefined)} |`,
    );
  }
  return rows.join('\n');
}

/** The targets of issue #5, evaluated on this run: [target, measured, met]. */
export function targets(results: Results): [string, string, boolean | undefined][] {
  const cpus = results.machine.cpus;
  const n = Math.max(...results.runs.map((r) => r.n));
  const smaller = [...new Set(results.runs.map((r) => r.n))].filter((x) => x < n).sort((a, b) => b - a)[0];
  const out: [string, string, boolean | undefined][] = [];
  const check = (label: string, values: [string, number | undefined][], ok: (v: number) => boolean) => {
    const measured = values.filter(([, v]) => v !== undefined) as [string, number][];
    if (measured.length === 0) return out.push([label, 'not measured', undefined]);
    out.push([label, measured.map(([k, v]) => `${k} ${fmtRatio(v)}`).join(', '), measured.every(([, v]) => ok(v))]);
  };
  const at = (phase: PhaseName) => ours(results, 'sqlite', n, 1, phase);
  check(
    `every phase >= 5x faster than wasm (wasm time ÷ ours, N=${n}, ours SQLite vs wasm memory)`,
    PHASES.map((p) => [p, ratio(other(results, 'wasm', undefined, n, 1, p)?.wallMs, at(p)?.wallMs)]),
    (v) => v >= 5,
  );
  check(
    `no slower than official Node (its time ÷ ours, N=${n}, SQLite)`,
    PHASES.map((p) => [p, ratio(other(results, 'official-node', 'sqlite', n, 1, p)?.wallMs, at(p)?.wallMs)]),
    (v) => v >= 1,
  );
  check(
    `binding overhead within 1.15x of the pure-Rust run (ours ÷ rust-crate, median of the paired repetitions' ratios, N=${n}, SQLite)`,
    PHASES.map((p) => [p, pairedRatio(at(p), other(results, 'rust-crate', 'sqlite', n, 1, p))]),
    (v) => v <= 1.15,
  );
  if (smaller !== undefined) {
    check(
      `keys/query linear: time(${n}) <= ${n / smaller * 1.2} x time(${smaller}) (time ratio)`,
      [[`${n}/${smaller}`, ratio(at('keys_query')?.wallMs, ours(results, 'sqlite', smaller, 1, 'keys_query')?.wallMs)]],
      (v) => v <= (n / smaller) * 1.2,
    );
  }
  check(
    `Olm sessions use every core: wall with ${cpus} cores <= 0.6 x wall on 1 CPU`,
    [['ours ÷ ours on 1 CPU', ratio(at('olm_sessions')?.wallMs, ours(results, 'sqlite', n, 1, 'olm_sessions', 1)?.wallMs)]],
    (v) => v <= 0.6,
  );
  const floorPerCore = (phase: PhaseName) => {
    const f = other(results, 'floor', undefined, n, 1, phase, 1)?.usPerDevice;
    return f === undefined ? undefined : f / cpus;
  };
  check(`Olm sessions µs/device within 2x of floor/${cpus} cores`, [['ours ÷ floor', ratio(at('olm_sessions')?.usPerDevice, floorPerCore('olm_sessions'))]], (v) => v <= 2);
  check(
    `shareRoomKey over existing sessions within 3x of the floor (floor/${cpus} cores; 1-core floor in brackets)`,
    [
      ['ours ÷ floor', ratio(at('share_existing')?.usPerDevice, floorPerCore('share_existing'))],
      ['[1 core]', ratio(at('share_existing')?.usPerDevice, other(results, 'floor', undefined, n, 1, 'share_existing', 1)?.usPerDevice)],
    ],
    (v) => v <= 3,
  );
  const shares: PhaseName[] = ['share_new', 'share_existing', 'share_withheld'];
  const eld = shares.map((p) => [p, at(p)?.maxEventLoopDelayMs ?? undefined] as [string, number | undefined]);
  const measuredEld = eld.filter(([, v]) => v !== undefined) as [string, number][];
  out.push([
    `max event-loop delay during the ${n}-device share <= 20 ms`,
    measuredEld.length ? measuredEld.map(([k, v]) => `${k} ${fmt(v)} ms`).join(', ') : 'not measured',
    measuredEld.length ? measuredEld.every(([, v]) => v <= 20) : undefined,
  ]);
  const runsAt = PHASES.map((p) => at(p)).filter((r) => r !== undefined);
  if (runsAt.length) {
    const peak = Math.max(...runsAt.map((r) => r.peakRssMb));
    const kb = ((peak - runsAt[0]!.rssBaseMb) * 1024) / runsAt[0]!.devices;
    out.push([`peak RSS growth <= 16 KB per recipient device (N=${n}, SQLite)`, `${fmt(kb)} KB/device (peak ${fmt(peak)} MB, base ${fmt(runsAt[0]!.rssBaseMb)} MB)`, kb <= 16]);
  }
  return out;
}

export function markdown(results: Results): string {
  const t = targets(results)
    .map(([label, measured, ok]) => `| ${label} | ${measured} | ${ok === undefined ? 'n/a' : ok ? 'met' : 'not met'} |`)
    .join('\n');
  const dpus = [...new Set(results.runs.map((r) => r.devicesPerUser))].sort();
  const skipped = results.skipped.map(
    (s) => `- ${s.impl}${s.store ? ` ${s.store}` : ''}${s.n ? ` N=${s.n} (${s.devicesPerUser}/user)` : ''}${s.phase ? ` ${s.phase}` : ''}: ${s.reason}`,
  );
  const fixtures = results.fixtures.map((f) => `N=${f.n} (${f.devicesPerUser}/user) in ${(f.generationMs / 1000).toFixed(2)} s`).join(', ');
  return [
    `# Mass-recipient sharing benchmark`,
    '',
    `${results.date} on ${results.machine.model}, ${results.machine.cpus} CPUs, Node ${results.machine.node}, ${results.machine.rustc}.`,
    `Command: \`${results.command}\`. Fixtures generated: ${fixtures}.`,
    '',
    `Every figure is the median over the repetitions (spread in the detail table); N fixture devices plus one real recipient that decrypts. "ours ÷ rust-crate" is the median of the repetitions' ratios taken in pairs: the implementations take turns, so repetition i of each ran next to the other.`,
    '',
    ...dpus.flatMap((dpu) => [`## µs per device, ${dpu} device${dpu > 1 ? 's' : ''} per user`, '', usTable(results, dpu), '']),
    '## Targets (issue #5)',
    '',
    '| target | measured | |',
    '| --- | --- | --- |',
    t,
    '',
    '## Wall time, memory, bytes, event loop',
    '',
    detailTable(results),
    '',
    ...dpus.flatMap((dpu) => {
      const note = oneRequestNote(results, dpu);
      return note && results.runs.some((r) => r.impl === 'mautrix-go' && r.devicesPerUser === dpu) ? [note, ''] : [];
    }).slice(0, 2),
    ...(skipped.length ? ['## Not run', '', ...skipped, ''] : []),
  ].join('\n');
}

export function svg(results: Results): string {
  const cpus = results.machine.cpus;
  const series = seriesFor(results);
  const runs = results.runs.filter((r) => r.devicesPerUser === 1);
  const ns = [...new Set(runs.map((r) => r.n))].sort((a, b) => a - b);
  const cols = 3;
  const pw = 330;
  const ph = 250;
  const margin = { left: 60, right: 15, top: 34, bottom: 40 };
  const legendRows = Math.ceil(series.length / 3);
  const width = cols * pw;
  const height = Math.ceil(PHASES.length / cols) * ph + 40 + legendRows * 20 + 20;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="14">µs per recipient device against N (1 device per user; log scales) — ${results.date.slice(0, 10)}, ${cpus} CPUs</text>`,
  ];
  const lx = (n: number, x0: number, w: number) => {
    const [a, b] = [Math.log10(ns[0]!), Math.log10(ns[ns.length - 1]!)];
    return x0 + (b === a ? w / 2 : ((Math.log10(n) - a) / (b - a)) * w);
  };
  PHASES.forEach((phase, i) => {
    const x0 = (i % cols) * pw + margin.left;
    const y0 = Math.floor(i / cols) * ph + 30 + margin.top;
    const w = pw - margin.left - margin.right;
    const h = ph - margin.top - margin.bottom;
    const values = runs.filter((r) => r.phase === phase && series.some((s) => s.pick(r, cpus))).map((r) => r.usPerDevice).filter((v) => v > 0);
    out.push(`<text x="${x0 + w / 2}" y="${y0 - 10}" text-anchor="middle" font-size="12" font-weight="bold">${phase}</text>`);
    out.push(`<rect x="${x0}" y="${y0}" width="${w}" height="${h}" fill="none" stroke="#999"/>`);
    if (values.length === 0) return;
    const lo = Math.floor(Math.log10(Math.min(...values)));
    const hi = Math.max(lo + 1, Math.ceil(Math.log10(Math.max(...values))));
    const ly = (v: number) => y0 + h - ((Math.log10(v) - lo) / (hi - lo)) * h;
    for (let e = lo; e <= hi; e++) {
      const y = ly(10 ** e);
      out.push(`<line x1="${x0}" x2="${x0 + w}" y1="${y}" y2="${y}" stroke="#eee"/>`);
      out.push(`<text x="${x0 - 4}" y="${y + 4}" text-anchor="end">${10 ** e >= 1 ? (10 ** e).toLocaleString('en-US') : (10 ** e).toPrecision(1)}</text>`);
    }
    for (const n of ns) {
      out.push(`<text x="${lx(n, x0, w)}" y="${y0 + h + 14}" text-anchor="middle">${n.toLocaleString('en-US')}</text>`);
    }
    out.push(`<text x="${x0 + w / 2}" y="${y0 + h + 30}" text-anchor="middle" fill="#555">N devices</text>`);
    if (i % cols === 0) out.push(`<text x="${x0 - 45}" y="${y0 + h / 2}" transform="rotate(-90 ${x0 - 45} ${y0 + h / 2})" text-anchor="middle" fill="#555">µs / device</text>`);
    for (const s of series) {
      const pts = ns
        .map((n) => [n, runs.find((r) => r.phase === phase && r.n === n && s.pick(r, cpus))?.usPerDevice] as const)
        .filter((p): p is readonly [number, number] => p[1] !== undefined && p[1] > 0);
      if (pts.length === 0) continue;
      const d = pts.map(([n, v]) => `${lx(n, x0, w).toFixed(1)},${ly(v).toFixed(1)}`).join(' ');
      out.push(`<polyline points="${d}" fill="none" stroke="${s.color}" stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`);
      for (const [n, v] of pts) out.push(`<circle cx="${lx(n, x0, w).toFixed(1)}" cy="${ly(v).toFixed(1)}" r="2.5" fill="${s.color}"/>`);
    }
  });
  const ly0 = Math.ceil(PHASES.length / cols) * ph + 40;
  series.forEach((s, i) => {
    const x = (i % 3) * (width / 3) + 30;
    const y = ly0 + Math.floor(i / 3) * 20;
    out.push(`<line x1="${x}" x2="${x + 30}" y1="${y}" y2="${y}" stroke="${s.color}" stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`);
    out.push(`<text x="${x + 36}" y="${y + 4}">${s.label}</text>`);
  });
  out.push('</svg>');
  return out.join('\n');
}
