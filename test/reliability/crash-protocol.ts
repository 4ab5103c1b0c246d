/** Messages between crash.ts (the parent: homeserver and peer) and crash-child.ts (alice). */
import type { MatrixEvent } from '../../src/types';
import type { ChildMessage } from '../helpers/child-bot';

export type { ToChild } from '../helpers/child-bot';

export const ALICE = '@alice:example.org';
export const BOB = '@bob:example.org';

export type ToParent =
  | ChildMessage
  /** About to open the store (again, after `locked`). */
  | { type: 'opening' }
  /** The open was refused with `StoreLocked`: on PostgreSQL the killed holder's lease has not run out yet. */
  | { type: 'locked' }
  | { type: 'received'; keys: { roomId: string; sessionId: string }[] }
  | { type: 'sent'; event: MatrixEvent; share: string };
