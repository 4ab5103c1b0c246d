// EncryptedClient without a server: a scripted fetch answers the calls, so the request
// bookkeeping (concurrent sends, failures, sync tokens) can be checked exactly.
import { describe, expect, it } from 'vitest';
import { DecryptionError, EncryptedClient, HomeserverError, HomeserverTransport, OlmMachine } from '../src/index';

type Handler = (method: string, path: string, url: URL, body: string | undefined) => { status: number; body: unknown } | undefined;

/** A fetch that answers from `handler` after a short delay (so concurrent calls overlap) and logs every call. */
function scriptedFetch(handler: Handler) {
  const calls: Array<{ method: string; path: string; url: URL; body: string | undefined }> = [];
  const fetchImpl: typeof fetch = async (input, init) => {
    const url = new URL(String(input));
    const method = init?.method ?? 'GET';
    const body = typeof init?.body === 'string' ? init.body : undefined;
    calls.push({ method, path: url.pathname, url, body });
    await new Promise((r) => setTimeout(r, 20));
    const answer = handler(method, url.pathname, url, body) ?? { status: 404, body: { errcode: 'M_UNRECOGNIZED', error: 'not scripted' } };
    return new Response(JSON.stringify(answer.body), { status: answer.status, headers: { 'Content-Type': 'application/json' } });
  };
  return { calls, fetchImpl };
}

/** Answers key uploads and queries the way a homeserver would for a lone device: a query returns the uploaded device keys. */
function keysServer(): Handler {
  let deviceKeys: Record<string, unknown> | undefined;
  return (_m, path, _url, body) => {
    if (path.endsWith('/keys/upload')) {
      deviceKeys = (JSON.parse(body ?? '{}') as { device_keys?: Record<string, unknown> }).device_keys ?? deviceKeys;
      return { status: 200, body: { one_time_key_counts: { signed_curve25519: 50 } } };
    }
    if (path.endsWith('/keys/query')) {
      return { status: 200, body: { device_keys: deviceKeys ? { '@bot:example.org': { BOT: deviceKeys } } : {}, failures: {} } };
    }
    return undefined;
  };
}

async function client(handler: Handler) {
  const { calls, fetchImpl } = scriptedFetch(handler);
  const machine = await OlmMachine.open({ userId: '@bot:example.org', deviceId: 'BOT', store: { kind: 'memory' } });
  const transport = new HomeserverTransport({ baseUrl: 'https://hs.example.org', accessToken: 't', fetch: fetchImpl, maxRetries: 0 });
  return { c: new EncryptedClient({ machine, transport }), calls };
}

describe('EncryptedClient', () => {
  it('sends each outgoing request once, even when called concurrently, and marks it sent', async () => {
    const { c, calls } = await client(keysServer());
    const [a, b] = await Promise.all([c.processOutgoingRequests(), c.processOutgoingRequests()]);
    expect(calls.filter((x) => x.path.endsWith('/keys/upload'))).toHaveLength(1);
    expect(calls.filter((x) => x.path.endsWith('/keys/query'))).toHaveLength(1);
    expect(a + b).toBe(calls.length);
    expect(await c.machine.outgoingRequests()).toEqual([]);
    expect(await c.processOutgoingRequests()).toBe(0);
    await c.close();
  });

  it('leaves a refused request queued, and sends it again on the next call', async () => {
    let refuse = true;
    const keysOk = keysServer();
    const { c, calls } = await client((m, path, url, body) => {
      if (path.endsWith('/keys/upload') && refuse) {
        refuse = false;
        return { status: 400, body: { errcode: 'M_BAD_JSON', error: 'scripted refusal' } };
      }
      return keysOk(m, path, url, body);
    });
    await expect(c.processOutgoingRequests()).rejects.toMatchObject({ name: 'HomeserverError', status: 400, errcode: 'M_BAD_JSON' });
    expect((await c.machine.outgoingRequests()).map((r) => r.type)).toContain('keys_upload');
    await c.processOutgoingRequests();
    const uploads = calls.filter((x) => x.path.endsWith('/keys/upload'));
    expect(uploads).toHaveLength(2);
    expect(uploads[1]!.body).toBe(uploads[0]!.body);
    expect(await c.machine.outgoingRequests()).toEqual([]);
    await c.close();
  });

  it('continues syncing from the token of the last processed sync', async () => {
    let n = 0;
    const keysOk = keysServer();
    const { c, calls } = await client((m, path, url, body) => {
      if (path.endsWith('/sync')) return { status: 200, body: { next_batch: `s${++n}` } };
      return keysOk(m, path, url, body);
    });
    expect(c.syncToken).toBeUndefined();
    await c.syncOnce({ timeoutMs: 0 });
    expect(c.syncToken).toBe('s1');
    await c.syncOnce({ timeoutMs: 0 });
    const syncs = calls.filter((x) => x.path.endsWith('/sync'));
    expect(syncs.map((x) => x.url.searchParams.get('since'))).toEqual([null, 's1']);
    expect(c.syncToken).toBe('s2');

    // A failed sync does not move the token.
    const failing = await client(() => ({ status: 403, body: { errcode: 'M_FORBIDDEN' } }));
    const restarted = new EncryptedClient({ machine: failing.c.machine, transport: failing.c.transport, syncToken: 's2' });
    await expect(restarted.syncOnce({ timeoutMs: 0 })).rejects.toBeInstanceOf(HomeserverError);
    expect(restarted.syncToken).toBe('s2');
    expect(failing.calls[0]!.url.searchParams.get('since')).toBe('s2');
    await c.close();
    await restarted.close();
  });

  it('returns timeline events as plaintext, decrypted or undecryptable with the typed error', async () => {
    const { c } = await client(keysServer());
    const plain = { type: 'm.room.message', event_id: '$p', sender: '@a:example.org', content: { body: 'hi' } };
    expect(await c.decryptEvent('!r:example.org', plain)).toEqual({ kind: 'plaintext', roomId: '!r:example.org', event: plain });

    const bob = await OlmMachine.open({ userId: '@bob:example.org', deviceId: 'BOB', store: { kind: 'memory' } });
    await bob.shareRoomKey('!r:example.org', ['@bob:example.org']);
    const content = await bob.encryptRoomEvent('!r:example.org', 'm.room.message', { body: 'secret' });
    const encrypted = { type: 'm.room.encrypted', event_id: '$e', sender: '@bob:example.org', origin_server_ts: Date.now(), content };
    const item = await c.decryptEvent('!r:example.org', encrypted);
    expect(item.kind).toBe('undecryptable');
    if (item.kind === 'undecryptable') {
      expect(item.error).toBeInstanceOf(DecryptionError);
      expect(item.error.code).toBe('MissingRoomKey');
    }

    // With the key (exported by the sender), the same event decrypts.
    await c.machine.importRoomKeys(await bob.exportRoomKeys({ roomId: '!r:example.org' }));
    const again = await c.decryptEvent('!r:example.org', encrypted);
    expect(again.kind === 'decrypted' && again.decrypted.event.content.body).toBe('secret');

    // Failures that are not about the event are thrown.
    await c.close();
    await expect(c.decryptEvent('!r:example.org', encrypted)).rejects.toMatchObject({ code: 'MachineClosed' });
    await bob.close();
  });
});
