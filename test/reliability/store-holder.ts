/** Child of store-lock.test.ts: open the store, print the outcome, hold it until stdin ends. */
import { OlmMachine, MatrixCryptoError } from '../../src/index';

(async () => {
  const path = process.argv[2];
  try {
    const m = await OlmMachine.open({ userId: '@bot:example.org', deviceId: 'BOT', store: { kind: 'sqlite', path } });
    process.stdout.write(`${JSON.stringify({ opened: m.identityKeys.curve25519 })}\n`);
    process.stdin.resume();
    process.stdin.on('end', () => void m.close().then(() => process.exit(0)));
  } catch (e) {
    const err = e as MatrixCryptoError;
    process.stdout.write(`${JSON.stringify({ error: { code: err.code, field: err.field, message: err.message } })}\n`);
    process.exit(0);
  }
})();
