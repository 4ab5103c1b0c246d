// The appservice as a child process, for the downtime e2e (appservice-downtime.e2e.test.ts): an
// AppserviceCrypto on a store root behind serveAppservice, so the test can SIGKILL it. Every
// transaction it hands over is printed as one JSON line (`{"txn": ...}`); a transaction carrying
// a room event from $HANG_SENDER is never answered (its onEvents waits forever) and prints
// `{"hanging": txnId}`, so the test kills the process in the middle of that transaction.
//
//   node --import tsx test/e2e/appservice-child.ts   (env: HS_URL, REGISTRATION, STORE_ROOT, PORT, HANG_SENDER)
import { AppserviceCrypto, serveAppservice, type AppserviceRegistration } from '../../src/index';

async function main(): Promise<void> {
  const env = (name: string): string => {
    const v = process.env[name];
    if (!v) throw new Error(`${name} is not set`);
    return v;
  };
  const hangSender = process.env.HANG_SENDER;
  const crypto = await AppserviceCrypto.open({
    homeserverUrl: env('HS_URL'),
    registration: JSON.parse(env('REGISTRATION')) as AppserviceRegistration,
    storeRoot: env('STORE_ROOT'),
  });
  await serveAppservice(crypto, {
    port: Number(env('PORT')),
    onEvents: async (result) => {
      const line = { txn: result.txnId, events: result.events.map((e) => ({ eventId: e.event.event_id, kind: e.kind })) };
      console.log(JSON.stringify(line));
      if (hangSender && result.events.some((e) => e.event.sender === hangSender)) {
        console.log(JSON.stringify({ hanging: result.txnId }));
        await new Promise(() => undefined);
      }
    },
  });
  console.log(JSON.stringify({ listening: true }));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
