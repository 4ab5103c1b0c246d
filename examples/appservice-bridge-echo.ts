// An echo bridge on matrix-appservice-bridge (11.2) with end-to-end encryption from
// matrix-crypto-node/appservice-bridge: a ghost user (`echo` in the registration's user
// namespace) joins the encrypted rooms it is invited to and answers every message with an
// encrypted echo, sent by its own cross-signed device. The bridge's metrics (its own and the
// crypto ones) are served at /metrics on the appservice port.
//
//   npx tsx examples/appservice-bridge-echo.ts registration.json
//
// registration.json is the appservice registration you gave the homeserver (JSON is valid YAML), with two more fields
// for this program: "homeserver_url" and "domain" (the server name). Its user namespace must
// contain `@<sender_localpart>_echo:<domain>`. The registration needs "receive_ephemeral": true,
// "org.matrix.msc3202": true and "io.element.msc4190": true; Synapse also needs, in homeserver.yaml:
//   experimental_features: { msc2409_to_device_messages_enabled: true, msc3202_transaction_extensions: true }
// The bridge listens on the port of the registration's "url". Invite the ghost to an encrypted
// room and write something. Ctrl-C stops it; its keys stay in ./appservice-bridge-echo-store (or
// $ECHO_BRIDGE_STORE).
//
// matrix-appservice-bridge loads @vector-im/matrix-bot-sdk, which loads
// @matrix-org/matrix-sdk-crypto-nodejs; this bridge never uses it (alias it to
// matrix-crypto-node-compat to skip its binary download, see docs/compat.md).
import { readFile } from 'node:fs/promises';
import { AppServiceRegistration, Bridge, type Request, type WeakEvent } from 'matrix-appservice-bridge';
import { Registry } from 'prom-client';
import { AppserviceCrypto, type AppserviceRegistration } from '../src/index';
import { BridgeEncryption } from '../src/appservice-bridge';

/** What the example needs to run: the registration, where the homeserver is, where to keep keys. */
export interface EchoBridgeConfig {
  registration: AppserviceRegistration & { url: string; id: string };
  homeserverUrl: string;
  domain: string;
  storeRoot: string;
  /** Each message the bridge handed to `onEvent`, with what the adapter knew of its encryption. */
  onMessage?: (event: WeakEvent, how: string) => void;
}

/** A running echo bridge. */
export interface EchoBridge {
  bridge: Bridge;
  crypto: AppserviceCrypto;
  encryption: BridgeEncryption;
  /** The ghost that echoes. */
  echoUserId: string;
  stop(): Promise<void>;
}

/** Starts the echo bridge on the registration's port. */
export async function startEchoBridge(config: EchoBridgeConfig): Promise<EchoBridge> {
  const { registration, homeserverUrl, domain } = config;
  const echoUserId = `@${registration.sender_localpart}_echo:${domain}`;
  const registry = new Registry();
  const crypto = await AppserviceCrypto.open({ homeserverUrl, registration, storeRoot: config.storeRoot, metrics: { registry } });

  // `encryption` is assigned before the bridge listens, so before onEvent can run.
  let encryption: BridgeEncryption;
  const bridge: Bridge = new Bridge({
    homeserverUrl,
    domain,
    registration: AppServiceRegistration.fromObject(registration as unknown as Parameters<typeof AppServiceRegistration.fromObject>[0]),
    disableStores: true,
    controller: {
      onUserQuery: () => ({}),
      onEvent: async (request: Request<WeakEvent>) => {
        const event = request.getData();
        if (event.type === 'm.room.member' && event.state_key === echoUserId && event.content.membership === 'invite') {
          await bridge.getIntent(echoUserId).join(event.room_id);
          return;
        }
        if (event.sender === echoUserId) return;
        const how = encryption.decryptionOf(event);
        if (how?.kind === 'undecryptable') {
          console.log(`cannot decrypt ${event.event_id}: ${how.error.code}${how.error.withheld ? ` (withheld: ${how.error.withheld.code})` : ''}`);
          config.onMessage?.(event, `undecryptable:${how.error.code}`);
          return;
        }
        if (event.type !== 'm.room.message' || typeof event.content.body !== 'string') return;
        config.onMessage?.(event, how?.kind ?? 'plaintext');
        await bridge.getIntent(echoUserId).sendMessage(event.room_id, { msgtype: 'm.notice', body: `echo: ${event.content.body}` });
      },
    },
  });
  encryption = BridgeEncryption.attach(bridge, crypto);
  bridge.getPrometheusMetrics(true, registry);
  await bridge.run(Number(new URL(registration.url).port));
  // The ghost exists before anyone invites it (its device is created when it first joins).
  await bridge.getIntent(echoUserId).ensureRegistered();
  return {
    bridge,
    crypto,
    encryption,
    echoUserId,
    stop: async () => {
      await bridge.close();
      await crypto.close();
    },
  };
}

async function main(): Promise<void> {
  const file = process.argv[2];
  if (!file) throw new Error('usage: tsx examples/appservice-bridge-echo.ts registration.json');
  const registration = JSON.parse(await readFile(file, 'utf8')) as EchoBridgeConfig['registration'] & { homeserver_url: string; domain: string };
  const running = await startEchoBridge({
    registration,
    homeserverUrl: registration.homeserver_url,
    domain: registration.domain,
    storeRoot: process.env.ECHO_BRIDGE_STORE ?? './appservice-bridge-echo-store',
    onMessage: (event, how) => console.log(`${event.sender} in ${event.room_id} (${how}): ${String(event.content.body ?? '')}`),
  });
  console.log(`echo bridge listening; invite ${running.echoUserId} to an encrypted room`);
  process.once('SIGINT', () => {
    void running.stop().then(() => process.exit(0));
  });
}

if (typeof require !== 'undefined' && require.main === module) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
