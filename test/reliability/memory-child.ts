/** Runs one memory scenario under `node --expose-gc` and prints its figures as JSON. */
import { runEncryptDecryptSoak, runFinalizers, runOpenCloseCycles, runShareSoak } from './memory';

const [scenario, a, b] = process.argv.slice(2);
const n = Number(a);
const m = Number(b);
const scenarios: Record<string, () => Promise<unknown>> = {
  finalizers: () => runFinalizers(n),
  cycles: () => runOpenCloseCycles(n, m),
  soak: () => runEncryptDecryptSoak(n, b === 'memory' ? 'memory' : 'sqlite'),
  shares: () => runShareSoak(n, m),
};
scenarios[scenario]().then(
  (figures) => {
    process.stdout.write(`${JSON.stringify(figures)}\n`);
    process.exit(0);
  },
  (err) => {
    process.stderr.write(`${(err as Error).stack}\n`);
    process.exit(1);
  },
);
