// An echo bridge: an application service whose puppets answer every encrypted message in their
// rooms with an encrypted echo. It shows the whole appservice path of matrix-crypto-node: devices
// created with MSC4190, transactions in (MSC4203 to-device events, MSC3202 key counts and device
// lists), and encrypted sends as each puppet.
//
//   npx tsx examples/echo-bridge.ts registration.json
//
// registration.json is the appservice registration you gave the homeserver (JSON is valid YAML),
// with three more fields for this program: "homeserver_url", "server_name" and "puppets"
// (localparts in the registration's user namespace). The
// registration needs "receive_ephemeral": true, "org.matrix.msc3202": true and
// "io.element.msc4190": true; Synapse also needs, in homeserver.yaml:
//   experimental_features: { msc2409_to_device_messages_enabled: true, msc3202_transaction_extensions: true }
// The bridge listens on the port of the registration's "url". Invite a puppet to an encrypted
// room: it joins, and echoes what you write. Ctrl-C stops it; its keys stay in
// ./echo-bridge-store (or $ECHO_BRIDGE_STORE).
import { readFile } from 'node:fs/promises';
import { AppserviceCrypto, serveAppservice, type AppserviceRegistration } from '../src/index';

interface EchoRegistration extends AppserviceRegistration {
  url: string;
  homeserver_url: string;
  server_name: string;
  puppets: string[];
}

async function main(): Promise<void> {
  const file = process.argv[2];
  if (!file) throw new Error('usage: tsx examples/echo-bridge.ts registration.json');
  const registration = JSON.parse(await readFile(file, 'utf8')) as EchoRegistration;
  const puppets = new Set(registration.puppets.map((p) => `@${p}:${registration.server_name}`));

  const crypto = await AppserviceCrypto.open({
    homeserverUrl: registration.homeserver_url,
    registration,
    storeRoot: process.env.ECHO_BRIDGE_STORE ?? './echo-bridge-store',
  });
  for (const p of puppets) {
    await crypto.registerUser(p.slice(1, p.indexOf(':')));
    const { deviceId } = await crypto.deviceFor(p);
    console.log(`puppet ${p} has device ${deviceId}`);
  }

  const server = await serveAppservice(crypto, {
    port: Number(new URL(registration.url).port),
    onUserQuery: (userId) => puppets.has(userId),
    onError: (err, txnId) => console.error(`transaction ${txnId ?? '?'} failed (the homeserver will retry):`, err),
    onEvents: async ({ events }) => {
      for (const item of events) {
        const { event, roomId } = item;
        // Invites to a puppet: join as the puppet's device.
        if (event.type === 'm.room.member' && puppets.has(event.state_key ?? '') && event.content.membership === 'invite') {
          await (await crypto.transportFor(event.state_key!)).joinRoom(roomId);
          console.log(`${event.state_key} joined ${roomId}`);
          continue;
        }
        if (puppets.has(event.sender ?? '')) continue; // our own echoes
        if (item.kind === 'undecryptable') {
          console.log(`cannot decrypt ${event.event_id}: ${item.error.code}${item.error.withheld ? ` (withheld: ${item.error.withheld.code})` : ''}`);
          continue;
        }
        if (item.kind !== 'decrypted' || !item.decryptedBy) continue;
        const body = item.decrypted.event.content.body;
        if (typeof body !== 'string') continue;
        // The puppet whose device decrypted the message answers. A failed echo is logged, not
        // thrown: throwing would make the homeserver retry the whole transaction.
        const puppet = item.decryptedBy;
        try {
          const echoed = await crypto.sendEncrypted(puppet, roomId, 'm.room.message', { msgtype: 'm.notice', body: `${puppet} heard: ${body}` });
          console.log(`${puppet} -> ${roomId}: room key shared with ${echoed.share.sharedWith.length} devices`);
        } catch (err) {
          console.error(`${puppet} could not answer in ${roomId}:`, err);
        }
      }
    },
  });
  console.log(`echo bridge listening on port ${server.port}`);
  process.once('SIGINT', () => {
    void server.close().then(() => crypto.close()).then(() => process.exit(0));
  });
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
