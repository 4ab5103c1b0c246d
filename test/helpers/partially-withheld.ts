/**
 * The fixture of the export and backup tests: a session Alice holds only from index 1, because
 * Bob withheld its first message from her (m.unverified) and shared it once he verified her.
 */
import { TestDevice, TestHomeserver } from '../../src/testing';

export const ALICE = '@alice:example.org';
export const BOB = '@bob:example.org';
export const ROOM = '!room:example.org';
/** The namespaced field that carries the withheld record in exports and backups. */
export const FIELD = 'io.github.matrix_crypto_node.withheld';

/** Alice (device A1) holds Bob's session from index 1: `early` was withheld, `late` was not. */
export async function partiallyWithheld() {
  const hs = new TestHomeserver();
  const alice = await TestDevice.create(hs, ALICE, 'A1');
  const bob = await TestDevice.create(hs, BOB, 'BOB');
  await bob.machine.updateTrackedUsers([ALICE]);
  await bob.flush();
  const trusted = { sharingStrategy: 'only_trusted_devices' as const };
  const early = await bob.sendMessage(ROOM, [ALICE, BOB], { body: 'early' }, trusted);
  await bob.machine.setLocalTrust(ALICE, 'A1', 'verified');
  const late = await bob.sendMessage(ROOM, [ALICE, BOB], { body: 'late' }, trusted);
  await alice.sync();
  return { hs, alice, early, late, sessionId: String(late.content.session_id) };
}
