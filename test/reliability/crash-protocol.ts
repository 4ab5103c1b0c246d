/** Messages between crash.ts (the parent: homeserver and peer) and crash-child.ts (alice). */
import type { OutgoingRequest } from '../../src/requests';
import type { MatrixEvent, SyncChanges } from '../../src/types';

export const ALICE = '@alice:example.org';
export const BOB = '@bob:example.org';

export type ToParent =
  /** About to open the store (again, after `locked`). */
  | { type: 'opening' }
  /** The open was refused with `StoreLocked`: on PostgreSQL the killed holder's lease has not run out yet. */
  | { type: 'locked' }
  | { type: 'ready'; curve25519: string }
  | { type: 'verified'; checked: number; failed: string[] }
  | { type: 'request'; id: number; request: OutgoingRequest }
  | { type: 'sync'; id: number }
  | { type: 'ack'; id: number }
  | { type: 'received'; keys: { roomId: string; sessionId: string }[] }
  | { type: 'sent'; event: MatrixEvent; share: string };

export type ToChild =
  | { type: 'verify'; events: MatrixEvent[] }
  | { type: 'response'; id: number; body: string; error?: string }
  | { type: 'batch'; id: number; batch: number; changes: SyncChanges & { toDeviceEvents: MatrixEvent[] }; recentEvents: MatrixEvent[] };
