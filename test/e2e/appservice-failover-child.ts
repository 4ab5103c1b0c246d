// One bridge process of test/e2e/appservice-failover.e2e.test.ts: AppserviceCrypto on the
// PostgreSQL database both processes share, behind serveAppservice on the registration's port,
// bound only once this process serves (AppserviceCrypto.open resolves once it holds the
// appservice's lease). It reports to its parent over IPC: standby, serving, and every room
// event the bridge is handed (with the redelivery mark); it runs the parent's commands (create
// and join puppets, decrypt as a puppet).
import {
  AppserviceCrypto,
  serveAppservice,
  type AppserviceRegistration,
  type AppserviceTimelineEvent,
  type RoomEvent,
} from '../../src/index';

/** What the child tells its parent. */
export type FromBridge =
  | { type: 'standby' }
  | { type: 'serving' }
  | { type: 'event'; txnId: string; eventId: string; redelivery: boolean; late: boolean; kind: string; body: unknown }
  | { type: 'reply'; id: number; value?: unknown; error?: string };

/** What the parent asks the child. */
export type ToBridge =
  | { type: 'puppets'; id: number; puppets: string[] }
  | { type: 'join'; id: number; puppets: string[]; roomId: string }
  /** Decrypt as `puppet` a room event this process was handed. */
  | { type: 'decrypt'; id: number; puppet: string; roomId: string; eventId: string }
  /** Hold the bridge's handler this long on transactions with a room event from `sender`. */
  | { type: 'slow'; id: number; sender: string; ms: number };

const env = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const send = (m: FromBridge): void => void process.send!(m);
let slow: { sender: string; ms: number } | undefined;
/** The room events this process was handed, by id. */
const handed = new Map<string, RoomEvent>();

async function eachLimited<T>(items: T[], concurrency: number, task: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let item = queue.shift(); item !== undefined; item = queue.shift()) await task(item);
    }),
  );
}

function report(txnId: string, redelivery: boolean, late: boolean, e: AppserviceTimelineEvent): void {
  if (typeof e.event.event_id !== 'string') return;
  handed.set(e.event.event_id, e.event as RoomEvent);
  const body = e.kind === 'decrypted' ? e.decrypted.event.content.body : e.kind === 'plaintext' ? e.event.content?.body : undefined;
  send({ type: 'event', txnId, eventId: e.event.event_id, redelivery, late, kind: e.kind, body });
}

async function main(): Promise<void> {
  const crypto = await AppserviceCrypto.open({
    homeserverUrl: env('BRIDGE_HS'),
    registration: JSON.parse(env('BRIDGE_REGISTRATION')) as AppserviceRegistration,
    storeRoot: env('BRIDGE_ROOT'),
    store: { kind: 'postgres', url: env('BRIDGE_POSTGRES') },
    storePassphrase: 'failover secret',
    onStandby: () => send({ type: 'standby' }),
  });
  process.on('message', (m: ToBridge) => {
    const run = async (): Promise<unknown> => {
      switch (m.type) {
        case 'puppets':
          await eachLimited(m.puppets, 8, async (p) => {
            await crypto.registerUser(p.slice(1, p.indexOf(':')));
            await crypto.deviceFor(p);
          });
          return undefined;
        case 'join':
          await eachLimited(m.puppets, 8, async (p) => {
            await (await crypto.transportFor(p)).joinRoom(m.roomId);
          });
          return undefined;
        case 'decrypt': {
          const event = handed.get(m.eventId);
          if (!event) throw new Error(`${m.eventId} was not handed to this process`);
          const item = await crypto.decryptRoomEvent(m.puppet, m.roomId, event);
          return item.kind === 'decrypted' ? { kind: item.kind, body: item.decrypted.event.content.body } : { kind: item.kind };
        }
        case 'slow':
          slow = { sender: m.sender, ms: m.ms };
          return undefined;
      }
    };
    run().then(
      (value) => send({ type: 'reply', id: m.id, value }),
      (err: unknown) => send({ type: 'reply', id: m.id, error: String((err as Error)?.stack ?? err) }),
    );
  });
  await serveAppservice(crypto, {
    port: Number(env('BRIDGE_PORT')),
    onEvents: async (result) => {
      for (const e of result.events) report(result.txnId, result.redelivery, false, e);
      for (const e of result.lateDecryptions) report(result.txnId, result.redelivery, true, e);
      if (slow && result.events.some((e) => e.event.sender === slow!.sender)) await new Promise((r) => setTimeout(r, slow!.ms));
    },
    onError: (err) => console.error('transaction failed:', err),
  });
  send({ type: 'serving' });
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
