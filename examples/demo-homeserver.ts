/**
 * The demo against a real homeserver: `npm run demo -- --homeserver URL --shared-secret SECRET`
 * (or MATRIX_HOMESERVER / MATRIX_SHARED_SECRET). It registers two fresh users through Synapse's
 * shared-secret admin API (`registration_shared_secret` in homeserver.yaml), and every request of
 * their machines goes to the homeserver through {@link EncryptedClient}.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EncryptedClient, type RoomEvent, type TimelineEvent } from '../src/index';

/** Options of {@link runHomeserverDemo}. */
export interface HomeserverDemoOptions {
  /** The client-server API base URL, e.g. `http://127.0.0.1:8008`. */
  homeserver: string;
  /** Synapse's `registration_shared_secret`. */
  sharedSecret: string;
}

interface Account {
  userId: string;
  deviceId: string;
  accessToken: string;
  password: string;
}

const step = (n: number, text: string) => console.log(`\n[${n}] ${text}`);

async function postJson(url: string, body: unknown): Promise<Record<string, unknown>> {
  const res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  if (!res.ok) throw new Error(`POST ${new URL(url).pathname}: HTTP ${res.status}: ${text}`);
  return JSON.parse(text) as Record<string, unknown>;
}

/** Registers a user with Synapse's shared-secret admin API (HMAC-SHA1 over nonce, user, password, admin flag). */
async function register(homeserver: string, sharedSecret: string, localpart: string): Promise<Account> {
  const url = `${homeserver}/_synapse/admin/v1/register`;
  const nonceRes = await fetch(url);
  if (!nonceRes.ok) throw new Error(`GET /_synapse/admin/v1/register: HTTP ${nonceRes.status} (is this a Synapse with registration_shared_secret set?)`);
  const { nonce } = (await nonceRes.json()) as { nonce: string };
  const password = randomBytes(12).toString('hex');
  const mac = createHmac('sha1', sharedSecret).update(`${nonce}\0${localpart}\0${password}\0notadmin`).digest('hex');
  const r = await postJson(url, { nonce, username: localpart, password, admin: false, mac });
  return { userId: String(r.user_id), deviceId: String(r.device_id), accessToken: String(r.access_token), password };
}

async function login(homeserver: string, account: Account): Promise<Account> {
  const r = await postJson(`${homeserver}/_matrix/client/v3/login`, {
    type: 'm.login.password',
    identifier: { type: 'm.id.user', user: account.userId },
    password: account.password,
    initial_device_display_name: 'matrix-crypto-node demo, second device',
  });
  return { ...account, deviceId: String(r.device_id), accessToken: String(r.access_token) };
}

/** Syncs until the event arrived and `done` accepts it; an undecryptable event is retried after each sync. */
async function syncFor(client: EncryptedClient, eventId: string, done: (e: TimelineEvent) => boolean): Promise<TimelineEvent> {
  const deadline = Date.now() + 30_000;
  let seen: TimelineEvent | undefined;
  while (Date.now() < deadline) {
    const { timeline } = await client.syncOnce({ timeoutMs: 1000 });
    seen = timeline.find((e) => e.event.event_id === eventId) ?? (seen && (await client.decryptEvent(seen.roomId, seen.event)));
    if (seen && done(seen)) return seen;
  }
  throw new Error(`${client.userId}: event ${eventId} did not arrive in time (last state: ${seen?.kind ?? 'not seen'})`);
}

function describe(e: TimelineEvent): string {
  if (e.kind === 'decrypted') return `"${String(e.decrypted.event.content.body)}" from ${e.decrypted.sender}/${e.decrypted.senderDevice} (${e.decrypted.verificationState})`;
  if (e.kind === 'undecryptable') {
    const w = e.error.withheld;
    return `DecryptionError code=${e.error.code}${w ? ` withheld=${w.code} (${w.scope}): ${w.reason ?? ''}` : ''}`;
  }
  return `plaintext ${e.event.type}`;
}

/** Runs the homeserver demo; resolves when done, rejects on the first failure. */
export async function runHomeserverDemo(options: HomeserverDemoOptions): Promise<void> {
  const homeserver = options.homeserver.replace(/\/+$/, '');
  const dir = mkdtempSync(join(tmpdir(), 'matrix-crypto-node-demo-hs-'));
  const store = (name: string) => ({ kind: 'sqlite' as const, path: join(dir, name) });
  const open = (a: Account, name: string, syncToken?: string) =>
    EncryptedClient.open({
      baseUrl: homeserver,
      accessToken: a.accessToken,
      userId: a.userId,
      deviceId: a.deviceId,
      store: store(name),
      ...(syncToken !== undefined ? { syncToken } : {}),
    });
  const clients: EncryptedClient[] = [];
  try {
    const suffix = randomBytes(3).toString('hex');
    step(1, `Registering two users on ${homeserver} with the shared secret`);
    const botAccount = await register(homeserver, options.sharedSecret, `demo-bot-${suffix}`);
    const aliceAccount = await register(homeserver, options.sharedSecret, `demo-alice-${suffix}`);
    let bot = await open(botAccount, 'bot');
    const alice = await open(aliceAccount, 'alice');
    clients.push(bot, alice);
    for (const c of [bot, alice]) {
      const sent = await c.processOutgoingRequests();
      console.log(`    ${c.userId} ${c.deviceId}: curve25519 ${c.machine.identityKeys.curve25519} (keys uploaded; ${sent} requests)`);
    }

    step(2, 'The bot creates an encrypted room and invites Alice, who joins');
    const { room_id: roomId } = await bot.transport.createRoom({
      preset: 'private_chat',
      name: 'matrix-crypto-node demo',
      invite: [alice.userId],
      initial_state: [{ type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } }],
    });
    await alice.transport.joinRoom(roomId);
    console.log(`    room ${roomId}`);

    step(3, 'The bot sends an encrypted message (members, keys/query, keys/claim, room key, event)');
    const hello = await bot.sendEncrypted(roomId, 'm.room.message', { msgtype: 'm.text', body: 'Hello from the bot!' });
    console.log(`    the room key went to ${hello.share.sharedWith.map((d) => `${d.userId}/${d.deviceId}`).join(', ')}; event ${hello.eventId}`);

    step(4, 'Alice syncs and decrypts');
    console.log(`    alice reads: ${describe(await syncFor(alice, hello.eventId, (e) => e.kind === 'decrypted'))}`);

    step(5, 'Alice replies; the bot syncs and decrypts');
    const reply = await alice.sendEncrypted(roomId, 'm.room.message', { msgtype: 'm.text', body: 'Hi bot, loud and clear.' });
    console.log(`    bot reads: ${describe(await syncFor(bot, reply.eventId, (e) => e.kind === 'decrypted'))}`);

    step(6, 'The bot restarts on its SQLite store and sync token, and re-reads the room');
    const token = bot.syncToken;
    const identity = bot.machine.identityKeys.curve25519;
    await bot.close();
    bot = await open(botAccount, 'bot', token);
    clients[0] = bot;
    console.log(`    same identity key: ${bot.machine.identityKeys.curve25519 === identity ? 'yes' : 'NO'} (${bot.machine.identityKeys.curve25519})`);
    const page = await bot.transport.roomMessages(roomId, undefined, 'b', 20);
    for (const e of page.chunk.filter((x: RoomEvent) => x.type === 'm.room.encrypted').reverse()) {
      console.log(`    ${e.event_id}: ${describe(await bot.decryptEvent(roomId, e))}`);
    }

    step(7, "A second device of Alice's logs in late: earlier messages give a typed error");
    const laptopAccount = await login(homeserver, aliceAccount);
    const laptop = await open(laptopAccount, 'alice-laptop');
    clients.push(laptop);
    await laptop.processOutgoingRequests();
    console.log(`    ${laptop.userId} ${laptop.deviceId}: ${describe(await syncFor(laptop, hello.eventId, () => true))}`);

    step(8, 'The bot syncs (learning of the new device) and shares only with devices it verified');
    await bot.syncOnce({ timeoutMs: 0 });
    const secret = await bot.sendEncrypted(roomId, 'm.room.message', { msgtype: 'm.text', body: 'For verified devices only.' }, {
      shareSettings: { sharingStrategy: 'only_trusted_devices' },
    });
    for (const w of secret.share.withheld) console.log(`    ${w.userId}/${w.deviceId}: ${w.code} (notice ${w.sent ? 'sent' : 'suppressed'})`);
    console.log(`    alice reads: ${describe(await syncFor(alice, secret.eventId, (e) => e.kind === 'undecryptable' && e.error.withheld !== null))}`);

    console.log('\nDone.');
  } finally {
    for (const c of clients) if (!c.machine.isClosed) await c.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
