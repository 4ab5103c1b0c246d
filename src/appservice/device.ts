/**
 * One bridged user's device: its open {@link OlmMachine} and a transport that masquerades as it,
 * with the request loop of a single device (the same steps as `EncryptedClient`, without `/sync`).
 *
 * @module
 */
import { SerialQueues } from '../queues';
import type { OlmMachine, ShareResult } from '../machine';
import type { OutgoingRequest } from '../requests';
import type { HomeserverTransport } from '../transport';
import type { ShareSettings, SyncChanges, SyncResult } from '../types';

/** Waits for every promise, then rejects with the first failure if any (no send is left running). */
async function settleAll(promises: Promise<void>[]): Promise<void> {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/** @internal */
export class BridgedDevice {
  private readonly queues = new SerialQueues();

  constructor(
    readonly machine: OlmMachine,
    readonly transport: HomeserverTransport,
  ) {}

  get userId(): string {
    return this.machine.userId;
  }

  get deviceId(): string {
    return this.machine.deviceId;
  }

  /**
   * Sends every queued request of the machine and marks each sent; repeats while answers queue
   * more. One drain at a time: the machine hands out a fresh key upload or query on every call.
   */
  drain(): Promise<number> {
    return this.queues.run('outgoing', async () => {
      let sent = 0;
      for (let round = 0; round < 10; round++) {
        const requests = await this.machine.outgoingRequests();
        if (requests.length === 0) break;
        await settleAll(requests.map((r) => this.send(r)));
        sent += requests.length;
      }
      return sent;
    });
  }

  /**
   * Runs `task` in the request queue, so that no drain sends the machine's requests meanwhile
   * (a task that sends requests of its own, such as cross-signing the device).
   */
  exclusive<T>(task: () => Promise<T>): Promise<T> {
    return this.queues.run('outgoing', task);
  }

  /** Claims one-time keys for devices of `users` without an Olm session (and those the machine asks for). */
  claimMissing(users: string[]): Promise<boolean> {
    return this.queues.run('claim', async () => {
      const claim = await this.machine.getMissingSessions(users);
      if (claim) await this.send(claim);
      return claim !== null;
    });
  }

  /** Feeds a transaction's share for this device, then sends what the machine wants sent. */
  async receive(changes: SyncChanges): Promise<SyncResult> {
    const result = await this.machine.receiveSyncChanges(changes);
    await this.drain();
    if (await this.claimMissing([])) await this.drain();
    return result;
  }

  /**
   * Members, key query, claim, share and encrypt, back to back under the room's queue, so a
   * concurrent share in the room cannot rotate the session in between.
   */
  encrypt(
    roomId: string,
    type: string,
    content: Record<string, unknown>,
    settings: ShareSettings,
  ): Promise<{ content: Record<string, unknown>; share: ShareResult }> {
    return this.queues.run(`room ${roomId}`, async () => {
      const members = Object.keys((await this.transport.getJoinedMembers(roomId)).joined);
      await this.machine.updateTrackedUsers(members);
      await this.drain();
      await this.claimMissing(members);
      const share = await this.machine.shareRoomKey(roomId, members, settings);
      await settleAll(share.requests.map((r) => this.send(r)));
      return { share, content: await this.machine.encryptRoomEvent(roomId, type, content) };
    });
  }

  /**
   * Discards the room's outbound session under the room's queue (after any encryption running
   * in the room), so the next message rotates. Resolves whether there was one.
   */
  discardRoomKey(roomId: string): Promise<boolean> {
    return this.queues.run(`room ${roomId}`, () => this.machine.discardRoomKey(roomId));
  }

  /** Waits until every queued operation has settled. */
  async idle(): Promise<void> {
    await this.queues.idle();
  }

  private async send(request: OutgoingRequest): Promise<void> {
    await this.machine.markRequestAsSent(request, await this.transport.send(request));
  }

}
