/**
 * A bot's device in a child process whose homeserver is the parent's `TestHomeserver`, over
 * Node IPC: the calls both sides share, the child's side (sync, send a request, flush, open a
 * store another process may still hold) and the parent's (answer requests; deliver a sync batch
 * again until the child acknowledges it, as Synapse does). Used by the crash suite
 * (test/reliability/crash.ts, crash-child.ts) and the PostgreSQL failover test
 * (test/store-failover.test.ts, store-failover-child.ts); each adds messages of its own.
 */
import { MatrixCryptoError, OlmMachine } from '../../src/index';
import type { TestHomeserver } from '../../src/testing';
import type { OutgoingRequest } from '../../src/requests';
import type { MatrixEvent, SyncChanges } from '../../src/types';

/** What the child asks of its parent's homeserver. */
export type ChildCall =
  | { type: 'request'; id: number; request: OutgoingRequest }
  | { type: 'sync'; id: number }
  /** The child processed sync batch `batch`: the next sync gets a new one. */
  | { type: 'ack'; batch: number };

/** What every such child sends its parent: its calls, and the check of the keys it reported. */
export type ChildMessage =
  | ChildCall
  /** The store is open (the parent answers with `verify`). */
  | { type: 'ready'; curve25519: string }
  /** Of the `verify` events, how many were checked, and the ones that failed. */
  | { type: 'verified'; checked: number; failed: string[] };

/** What the parent sends the child. */
export type ToChild =
  /** The events whose room keys an earlier holder of the store reported: each must decrypt. */
  | { type: 'verify'; events: MatrixEvent[] }
  | { type: 'response'; id: number; body: string; error?: string }
  | { type: 'batch'; id: number; batch: number; changes: SyncChanges & { toDeviceEvents: MatrixEvent[] }; recentEvents: MatrixEvent[] };

export type SyncBatch = Extract<ToChild, { type: 'batch' }>;

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The child's side: its own messages are of type `M`. Call once, in the child. */
export function connectToParent<M extends { type: string }>() {
  const send = (m: M | ChildMessage) => process.send!(m);
  let nextId = 0;
  const waiting = new Map<number, (m: ToChild) => void>();
  let verify: ((events: MatrixEvent[]) => void) | undefined;
  process.on('message', (m: ToChild) => {
    if (m.type === 'verify') verify?.(m.events);
    else waiting.get(m.id)?.(m);
  });
  const call = (m: { type: 'request'; request: OutgoingRequest } | { type: 'sync' }) =>
    new Promise<ToChild>((resolve) => {
      const id = nextId++;
      waiting.set(id, resolve);
      send({ ...m, id });
    });
  const request = async (machine: OlmMachine, r: OutgoingRequest) => {
    const reply = await call({ type: 'request', request: r });
    if (reply.type !== 'response') throw new Error('unexpected reply');
    if (reply.error !== undefined) throw new Error(reply.error);
    await machine.markRequestAsSent(r, reply.body);
  };
  return {
    send,
    request,
    /** Send the machine's outgoing requests until it has none (at most 10 rounds). */
    async flush(machine: OlmMachine) {
      for (let round = 0; round < 10; round++) {
        const requests = await machine.outgoingRequests();
        if (requests.length === 0) return;
        for (const r of requests) await request(machine, r);
      }
    },
    /** The next sync batch (the same one again until it is acknowledged). */
    async sync(): Promise<SyncBatch> {
      const reply = await call({ type: 'sync' });
      if (reply.type !== 'batch') throw new Error('unexpected reply');
      return reply;
    },
    /**
     * Say `ready`, then decrypt every event of the parent's `verify` answer (the room keys an
     * earlier holder of the store reported) and report it as `verified`.
     */
    async checkReported(machine: OlmMachine): Promise<void> {
      const events = await new Promise<MatrixEvent[]>((resolve) => {
        verify = resolve;
        send({ type: 'ready', curve25519: machine.identityKeys.curve25519 });
      });
      const failed: string[] = [];
      for (const e of events) {
        await machine.decryptRoomEvent(e, String(e.room_id)).catch((err: Error) => failed.push(`${String(e.content.session_id)}: ${err.message}`));
      }
      send({ type: 'verified', checked: events.length, failed });
    },
  };
}

/**
 * Open the account, retrying every 200 ms while another process holds it (`StoreLocked`: on
 * PostgreSQL, until a killed holder's lease runs out). `attempt` is told before each try,
 * `locked` after each refusal.
 */
export async function openWhenUnlocked(open: () => Promise<OlmMachine>, on: { attempt?: () => void; locked: () => void }): Promise<OlmMachine> {
  for (;;) {
    on.attempt?.();
    try {
      return await open();
    } catch (err) {
      if (!(err instanceof MatrixCryptoError) || err.code !== 'StoreLocked') throw err;
      on.locked();
      await sleep(200);
    }
  }
}

/**
 * The parent's side: answers the child's calls for device `deviceId` of `userId` on `hs`; the
 * batch waiting for its acknowledgement is kept across the child's lives. `handle` answers a
 * request (default: the homeserver's answer), `recentEvents` are sent with each batch for the
 * child to decrypt.
 */
export class ChildHomeserver {
  #batch: { id: number; changes: ReturnType<TestHomeserver['syncFor']> } | undefined;
  #nextBatch = 0;

  constructor(
    private readonly hs: TestHomeserver,
    private readonly userId: string,
    private readonly deviceId: string,
    private readonly recentEvents: () => MatrixEvent[],
    private readonly handle: (request: OutgoingRequest) => string = (r) => hs.handle(userId, deviceId, r),
  ) {}

  /** Answer `m` through `reply` if it is a {@link ChildCall}; false for the child's own messages. */
  answer(m: { type: string }, reply: (m: ToChild) => void): boolean {
    const call = m as ChildCall;
    switch (call.type) {
      case 'request':
        try {
          reply({ type: 'response', id: call.id, body: this.handle(call.request) });
        } catch (err) {
          reply({ type: 'response', id: call.id, body: '', error: (err as Error).message });
        }
        return true;
      case 'sync':
        this.#batch ??= { id: this.#nextBatch++, changes: this.hs.syncFor(this.userId, this.deviceId) };
        reply({ type: 'batch', id: call.id, batch: this.#batch.id, changes: this.#batch.changes, recentEvents: this.recentEvents() });
        return true;
      case 'ack':
        if (this.#batch?.id === call.batch) this.#batch = undefined;
        return true;
      default:
        return false;
    }
  }
}
