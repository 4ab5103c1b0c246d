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

/** The room of megolm-child.ts's message loop. */
export const MESSAGE_ROOM = '!messages:example.org';

/** What megolm-child.ts (alice's message loop) tells megolm-index.ts. */
export type MessageLoopToParent =
  | ChildMessage
  | { type: 'opening' }
  | { type: 'locked' }
  /** A message alice encrypted, handed out (the recipient will see it). */
  | { type: 'sent'; event: MatrixEvent }
  /** The machine closed cleanly on the parent's `close`; the child exits next. */
  | { type: 'closed' };
