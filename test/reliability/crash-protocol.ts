/** Messages between crash.ts (the parent: homeserver and peer) and crash-child.ts (alice). */
import type { OutgoingRequest } from '../../src/requests';
import type { MatrixEvent, SyncChanges } from '../../src/types';

export const ALICE = '@alice:example.org';
export const BOB = '@bob:example.org';

export type ToParent =
  | { type: 'ready'; curve25519: string }
  | { type: 'verified'; checked: number; failed: string[] }
  | { type: 'request'; id: number; request: OutgoingRequest }
  | { type: 'sync'; id: number }
  | { type: 'ack'; id: number }
  | { type: 'received'; keys: { roomId: string; sessionId: string }[] }
  | { type: 'sent'; event: MatrixEvent };

export type ToChild =
  | { type: 'verify'; events: MatrixEvent[] }
  | { type: 'response'; id: number; body: string; error?: string }
  | { type: 'batch'; id: number; batch: number; changes: SyncChanges & { toDeviceEvents: MatrixEvent[] }; recentEvents: MatrixEvent[] };
