/**
 * Failover on PostgreSQL: two processes on one device. The holder (store-failover-child.ts)
 * runs a bot's loops; a standby waits for the store. The holder is killed with SIGKILL in the
 * middle of a share; the standby must take over within the lease, decrypt every room key the
 * holder reported received, and its Olm sessions must still work with the peer: the peer's
 * later room keys reach it, and the peer decrypts what it sends after the takeover.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { TestDevice, TestHomeserver } from '../src/testing';
import type { MatrixEvent } from '../src/types';
import { postgresInstalled, startPostgres, type TestPostgres } from './helpers/postgres';
import { ChildHomeserver, sleep } from './helpers/child-bot';
import { BOT, PEER, type FromChild, type ToChild } from './store-failover-child';

/** The lease of an open PostgreSQL account (native/src/store/open.rs LEASE_MS). */
const LEASE_MS = 15_000;

let pg: TestPostgres | undefined;
beforeAll(() => {
  pg = startPostgres();
});
afterAll(() => {
  pg?.stop();
});

describe.runIf(postgresInstalled())('PostgreSQL failover', () => {
  it('a standby takes over from a holder killed mid-share, without losing keys or wedging Olm sessions', { timeout: 120_000 }, async () => {
    const hs = new TestHomeserver();
    const peer = await TestDevice.create(hs, PEER, 'PEER');
    /** Peer messages by session id, the session ids a holder reported, and what each child did. */
    const bySession = new Map<string, MatrixEvent>();
    const reported = new Set<string>();
    // Like Synapse: a batch is delivered again until the next sync acknowledges it.
    const homeserver = new ChildHomeserver(hs, BOT, 'BOT', () => [...bySession.values()].slice(-4));

    interface Life {
      child: ChildProcess;
      waiting: boolean;
      opened?: { at: number; curve25519: string };
      verified?: { checked: number; failed: string[] };
      sharing: number;
      sent: MatrixEvent[];
      decrypted: Set<string>;
      exited: Promise<void>;
      stderr: string;
    }

    function spawn(): Life {
      const child = fork(join(__dirname, 'store-failover-child.ts'), [pg!.url], {
        execArgv: ['--import', 'tsx'],
        stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      });
      const life: Life = { child, waiting: false, sharing: 0, sent: [], decrypted: new Set(), exited: new Promise((r) => child.on('exit', () => r())), stderr: '' };
      child.stderr?.setEncoding('utf8').on('data', (d: string) => (life.stderr += d));
      const reply = (m: ToChild) => child.connected && child.send(m);
      child.on('message', (m: FromChild) => {
        if (homeserver.answer(m, reply)) return;
        switch (m.type) {
          case 'waiting':
            life.waiting = true;
            break;
          case 'ready':
            life.opened = { at: Date.now(), curve25519: m.curve25519 };
            reply({ type: 'verify', events: [...reported].map((s) => bySession.get(s)!).filter(Boolean) });
            break;
          case 'verified':
            life.verified = { checked: m.checked, failed: m.failed };
            break;
          case 'received':
            for (const s of m.sessionIds) if (bySession.has(s)) reported.add(s);
            break;
          case 'decrypted':
            for (const e of m.eventIds) life.decrypted.add(e);
            break;
          case 'sharing':
            life.sharing++;
            break;
          case 'sent':
            life.sent.push(m.event);
            break;
        }
      });
      return life;
    }
    const until = async (what: string, done: () => boolean, ms: number, life?: Life) => {
      const deadline = Date.now() + ms;
      while (!done()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${life ? `; child stderr: ${life.stderr.slice(-800)}` : ''}`);
        await sleep(20);
      }
    };

    // The peer keeps sending the bot messages, under a new room key every other message.
    let stop = false;
    const peerLoop = (async () => {
      await peer.machine.updateTrackedUsers([BOT, PEER]);
      for (let i = 0; !stop; i++) {
        if (!hs.deviceKeys.get(BOT)?.has('BOT')) {
          await sleep(50);
          continue;
        }
        const room = `!peer${i % 2}:example.org`;
        const event = await peer.sendMessage(room, [BOT, PEER], { msgtype: 'm.text', body: `peer ${i}` });
        bySession.set(String(event.content.session_id), event);
        if (i % 2 === 1) await peer.machine.discardRoomKey(room);
        await peer.sync();
        await sleep(40);
      }
    })();

    const holder = spawn();
    const standby: Life[] = [];
    try {
      await until('the holder to open', () => holder.opened !== undefined, 30_000, holder);
      await until('the holder to receive room keys and share', () => reported.size >= 3 && holder.sent.length >= 2, 60_000, holder);
      standby.push(spawn());
      await until('the standby to find the store taken', () => standby[0]!.waiting, 30_000, standby[0]);
      expect(standby[0]!.opened).toBeUndefined();

      // Kill the holder as it starts a share.
      const shares = holder.sharing;
      await until('the holder to start a share', () => holder.sharing > shares, 10_000, holder);
      holder.child.kill('SIGKILL');
      const killedAt = Date.now();
      await holder.exited;
      const reportedByHolder = new Set(reported);

      const next = standby[0]!;
      await until('the standby to take over', () => next.opened !== undefined, LEASE_MS + 10_000, next);
      expect(next.opened!.at - killedAt).toBeLessThanOrEqual(LEASE_MS + 5_000);
      expect(next.opened!.curve25519).toBe(holder.opened!.curve25519);
      await until('the standby to check the keys', () => next.verified !== undefined, 30_000, next);
      expect(next.verified!.failed).toEqual([]);
      expect(next.verified!.checked).toBeGreaterThanOrEqual(reportedByHolder.size);
      console.log(
        `failover: standby opened ${next.opened!.at - killedAt} ms after the SIGKILL; ${next.verified!.checked} room keys the holder reported received checked, ${next.verified!.failed.length} lost`,
      );

      // Olm both ways after the takeover: room keys the peer sends now arrive over the Olm
      // sessions the holder left, and the peer decrypts what the new holder sends.
      const sessionsBefore = new Set(bySession.keys());
      await until(
        'the standby to decrypt a message under a room key sent after the takeover',
        () => [...bySession.entries()].some(([s, e]) => !sessionsBefore.has(s) && next.decrypted.has(String(e.event_id))),
        60_000,
        next,
      );
      await until('the standby to send', () => next.sent.length >= 2, 60_000, next);
      await peer.sync();
      for (const e of next.sent) {
        const decrypted = await peer.machine.decryptRoomEvent(e, String(e.room_id));
        expect(decrypted.event.content).toMatchObject({ msgtype: 'm.text' });
      }
    } finally {
      stop = true;
      await peerLoop;
      for (const life of [holder, ...standby]) life.child.kill('SIGKILL');
      await Promise.all([holder, ...standby].map((l) => l.exited));
      await peer.machine.close();
    }
  });
});
