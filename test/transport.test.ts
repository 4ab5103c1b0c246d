// Unit tests of HomeserverTransport against a scripted HTTP server on 127.0.0.1 (no homeserver needed).
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { HomeserverError, HomeserverTransport, toSyncChanges, type RetryInfo } from '../src/transport';
import type { OutgoingRequest } from '../src/requests';

interface Seen {
  method: string;
  url: string;
  auth: string | undefined;
  contentType: string | undefined;
  body: string;
}

type Reply = { status: number; body?: string; headers?: Record<string, string> };

let server: Server;
let baseUrl: string;
const seen: Seen[] = [];
/** Scripted replies, used in order; when empty the server answers 200 `{}`. */
let script: Reply[] = [];

function json(status: number, value: unknown, headers?: Record<string, string>): Reply {
  return { status, body: JSON.stringify(value), ...(headers ? { headers } : {}) };
}

beforeAll(async () => {
  server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      seen.push({
        method: req.method ?? '',
        url: req.url ?? '',
        auth: req.headers.authorization,
        contentType: req.headers['content-type'],
        body: Buffer.concat(chunks).toString('utf8'),
      });
      const reply = script.shift() ?? json(200, {});
      res.writeHead(reply.status, { 'Content-Type': 'application/json', ...reply.headers });
      res.end(reply.body ?? '');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise<void>((r) => server.close(() => r()));
});

beforeEach(() => {
  seen.length = 0;
  script = [];
});

function transport(extra: Partial<ConstructorParameters<typeof HomeserverTransport>[0]> = {}): HomeserverTransport {
  return new HomeserverTransport({ baseUrl, accessToken: 'tok', baseDelayMs: 5, maxDelayMs: 50, ...extra });
}

describe('HomeserverTransport.send request mapping', () => {
  const cases: Array<[OutgoingRequest, string, string]> = [
    [{ type: 'keys_upload', id: '1', body: '{"device_keys":{}}' }, 'POST', '/_matrix/client/v3/keys/upload'],
    [{ type: 'keys_query', id: '2', body: '{"device_keys":{"@a:b":[]}}' }, 'POST', '/_matrix/client/v3/keys/query'],
    [{ type: 'keys_claim', id: '3', body: '{"one_time_keys":{}}' }, 'POST', '/_matrix/client/v3/keys/claim'],
    [
      { type: 'to_device', id: '4', eventType: 'm.room.encrypted', txnId: 'tx/1 ?', body: '{"messages":{}}' },
      'PUT',
      '/_matrix/client/v3/sendToDevice/m.room.encrypted/tx%2F1%20%3F',
    ],
    [{ type: 'signature_upload', id: '5', body: '{}' }, 'POST', '/_matrix/client/v3/keys/signatures/upload'],
    [
      { type: 'room_message', id: '6', roomId: '!room:ex.org', eventType: 'm.key.verification.start', txnId: 't#6', body: '{"a":1}' },
      'PUT',
      '/_matrix/client/v3/rooms/!room%3Aex.org/send/m.key.verification.start/t%236',
    ],
    [{ type: 'keys_backup', id: '7', version: '1 2&x', body: '{"rooms":{}}' }, 'PUT', '/_matrix/client/v3/room_keys/keys?version=1+2%26x'],
  ];

  it.each(cases)('%o', async (request, method, url) => {
    script = [{ status: 200, body: '{"ok":true}' }];
    const body = await transport().send(request);
    expect(body).toBe('{"ok":true}');
    expect(seen).toHaveLength(1);
    expect(seen[0]).toEqual({ method, url, auth: 'Bearer tok', contentType: 'application/json', body: request.body });
  });
});

describe('HomeserverTransport retries', () => {
  it('retries 429 twice, honouring retry_after_ms, then succeeds with the same request', async () => {
    // Fake timers: the test checks that no retry goes out before the delay the server asked for,
    // without sleeping or measuring elapsed time.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    // No jitter: the delays are exactly what the server asked for.
    vi.spyOn(Math, 'random').mockReturnValue(0);
    try {
      const replies = [
        json(429, { errcode: 'M_LIMIT_EXCEEDED', error: 'slow down', retry_after_ms: 120 }),
        json(429, { errcode: 'M_LIMIT_EXCEEDED', error: 'slow down', retry_after_ms: 80 }),
        { status: 200, body: '{"one_time_key_counts":{}}' },
      ];
      const calls: string[] = [];
      const fakeFetch: typeof fetch = async (url, init) => {
        calls.push(`${init?.method} ${String(url)} ${String(init?.body)}`);
        const r = replies.shift()!;
        return new Response(r.body ?? '', { status: r.status });
      };
      const retries: RetryInfo[] = [];
      const p = transport({ fetch: fakeFetch, onRetry: (i) => retries.push(i) }).send({
        type: 'to_device',
        id: 'r1',
        eventType: 'm.dummy',
        txnId: 'txn-1',
        body: '{"messages":{}}',
      });
      await vi.advanceTimersByTimeAsync(0);
      expect(calls).toHaveLength(1);
      // The first retry waits retry_after_ms (120), the second 80.
      await vi.advanceTimersByTimeAsync(119);
      expect(calls).toHaveLength(1);
      await vi.advanceTimersByTimeAsync(1);
      expect(calls).toHaveLength(2);
      await vi.advanceTimersByTimeAsync(79);
      expect(calls).toHaveLength(2);
      await vi.advanceTimersByTimeAsync(1);
      expect(await p).toBe('{"one_time_key_counts":{}}');
      expect(calls).toHaveLength(3);
      expect(new Set(calls).size).toBe(1);
      expect(retries.map((r) => [r.attempt, r.status, r.requestType])).toEqual([
        [1, 429, 'to_device'],
        [2, 429, 'to_device'],
      ]);
      expect(retries.map((r) => r.delayMs)).toEqual([120, 80]);
      expect(retries[0]!.error).toBeInstanceOf(HomeserverError);
      expect((retries[0]!.error as HomeserverError).retryAfterMs).toBe(120);
    } finally {
      vi.useRealTimers();
      vi.restoreAllMocks();
    }
  });

  it('honours the Retry-After header when the body has no retry_after_ms', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    vi.spyOn(Math, 'random').mockReturnValue(0);
    try {
      let calls = 0;
      const fakeFetch: typeof fetch = async () => {
        calls++;
        return calls === 1
          ? new Response('{"errcode":"M_LIMIT_EXCEEDED"}', { status: 429, headers: { 'Retry-After': '1' } })
          : new Response('{}', { status: 200 });
      };
      const retries: RetryInfo[] = [];
      const p = transport({ fetch: fakeFetch, onRetry: (i) => retries.push(i) }).send({ type: 'keys_query', id: 'q', body: '{}' });
      await vi.advanceTimersByTimeAsync(999);
      expect(calls).toBe(1);
      await vi.advanceTimersByTimeAsync(1);
      expect(await p).toBe('{}');
      expect(calls).toBe(2);
      expect(retries[0]!.delayMs).toBe(1000);
    } finally {
      vi.useRealTimers();
      vi.restoreAllMocks();
    }
  });

  it('retries 5xx with back-off', async () => {
    script = [{ status: 502, body: '<html>bad gateway</html>' }, json(500, { errcode: 'M_UNKNOWN' }), json(200, { x: 1 })];
    const retries: RetryInfo[] = [];
    const res = await transport({ onRetry: (i) => retries.push(i) }).send({ type: 'keys_claim', id: 'c', body: '{}' });
    expect(res).toBe('{"x":1}');
    expect(retries.map((r) => r.status)).toEqual([502, 500]);
    for (const r of retries) expect(r.delayMs).toBeLessThanOrEqual(50);
  });

  it('gives up after maxRetries with the last HomeserverError', async () => {
    script = Array.from({ length: 10 }, () => json(503, { errcode: 'M_UNKNOWN', error: 'overloaded' }));
    const err = await transport({ maxRetries: 2 })
      .send({ type: 'keys_upload', id: 'u', body: '{}' })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HomeserverError);
    expect(err).toMatchObject({ status: 503, errcode: 'M_UNKNOWN', error: 'overloaded', requestType: 'keys_upload' });
    expect(seen).toHaveLength(3);
  });

  it('does not retry 403: throws HomeserverError with the Matrix errcode', async () => {
    script = [json(403, { errcode: 'M_FORBIDDEN', error: 'You are not invited to this room.' })];
    const retries: RetryInfo[] = [];
    const err = await transport({ onRetry: (i) => retries.push(i) })
      .send({ type: 'room_message', id: 'm', roomId: '!r:x', eventType: 'm.room.message', txnId: 't', body: '{}' })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HomeserverError);
    expect(err).toBeInstanceOf(Error);
    const e = err as HomeserverError;
    expect(e.status).toBe(403);
    expect(e.errcode).toBe('M_FORBIDDEN');
    expect(e.error).toBe('You are not invited to this room.');
    expect(e.requestType).toBe('room_message');
    expect(e.name).toBe('HomeserverError');
    expect(e.message).toContain('M_FORBIDDEN');
    expect(seen).toHaveLength(1);
    expect(retries).toHaveLength(0);
  });

  it('gives errcode undefined for a non-Matrix error body', async () => {
    script = [{ status: 404, body: '<html>not found</html>' }];
    const err = (await transport()
      .send({ type: 'keys_query', id: 'q', body: '{}' })
      .catch((e: unknown) => e)) as HomeserverError;
    expect(err).toBeInstanceOf(HomeserverError);
    expect(err.status).toBe(404);
    expect(err.errcode).toBeUndefined();
    expect(err.body).toBe('<html>not found</html>');
  });

  it('retries network errors, then throws the network error', async () => {
    // A port that was just free: connections are refused.
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const retries: RetryInfo[] = [];
    const t = new HomeserverTransport({
      baseUrl: `http://127.0.0.1:${port}`,
      accessToken: 'tok',
      maxRetries: 3,
      baseDelayMs: 1,
      onRetry: (i) => retries.push(i),
    });
    const err = await t.send({ type: 'keys_query', id: 'q', body: '{}' }).catch((e: unknown) => e);
    expect(err).not.toBeInstanceOf(HomeserverError);
    expect(err).toBeInstanceOf(TypeError);
    expect(retries).toHaveLength(3);
    expect(retries.every((r) => r.status === undefined)).toBe(true);
  });

  it('uses the fetch option and stops waiting when the signal aborts', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      let calls = 0;
      const fakeFetch: typeof fetch = async () => {
        calls++;
        return new Response(JSON.stringify({ errcode: 'M_LIMIT_EXCEEDED', retry_after_ms: 60_000 }), { status: 429 });
      };
      const controller = new AbortController();
      const t = new HomeserverTransport({ baseUrl: 'http://127.0.0.1:9', accessToken: 'tok', fetch: fakeFetch });
      const p = t.send({ type: 'keys_query', id: 'q', body: '{}' }, { signal: controller.signal });
      const outcome = p.then(
        () => 'resolved',
        (e: unknown) => e,
      );
      await vi.advanceTimersByTimeAsync(50);
      expect(calls).toBe(1);
      // Aborting ends the 60-second wait at once: no timer needs to fire.
      controller.abort(new Error('shutting down'));
      const err = await outcome;
      expect(err).toBeInstanceOf(Error);
      expect((err as Error).message).toBe('shutting down');
      expect(calls).toBe(1);
    } finally {
      vi.useRealTimers();
    }
  });

  it('treats a per-attempt timeout as retryable', async () => {
    let calls = 0;
    const slowThenFast: typeof fetch = (_input, init) => {
      calls++;
      if (calls === 1) {
        return new Promise((_resolve, reject) => {
          init?.signal?.addEventListener('abort', () => reject(init.signal?.reason));
        });
      }
      return Promise.resolve(new Response('{"ok":1}', { status: 200 }));
    };
    const t = new HomeserverTransport({
      baseUrl: 'http://127.0.0.1:9',
      accessToken: 'tok',
      fetch: slowThenFast,
      requestTimeoutMs: 50,
      baseDelayMs: 1,
    });
    expect(await t.send({ type: 'keys_query', id: 'q', body: '{}' })).toBe('{"ok":1}');
    expect(calls).toBe(2);
  });
});

describe('HomeserverTransport helpers', () => {
  it('sync sends since, timeout and an inline filter as query parameters', async () => {
    script = [json(200, { next_batch: 's2', to_device: { events: [] } })];
    const res = await transport().sync({ since: 's1', timeoutMs: 0, filter: { room: { timeline: { limit: 1 } } } });
    expect(res.next_batch).toBe('s2');
    const url = new URL(seen[0]!.url, baseUrl);
    expect(seen[0]!.method).toBe('GET');
    expect(url.pathname).toBe('/_matrix/client/v3/sync');
    expect(url.searchParams.get('since')).toBe('s1');
    expect(url.searchParams.get('timeout')).toBe('0');
    expect(JSON.parse(url.searchParams.get('filter')!)).toEqual({ room: { timeline: { limit: 1 } } });
    expect(seen[0]!.contentType).toBeUndefined();
  });

  it('maps the room helpers to their endpoints', async () => {
    const t = transport();
    script = [
      json(200, { room_id: '!new:x' }),
      json(200, { room_id: '!a:x' }),
      json(200, { event_id: '$e' }),
      json(200, { joined: {} }),
      json(200, { chunk: [], start: 't0' }),
      json(200, { user_id: '@me:x', device_id: 'D' }),
    ];
    expect(await t.createRoom({ name: 'r' })).toEqual({ room_id: '!new:x' });
    expect(await t.joinRoom('#a:x')).toEqual({ room_id: '!a:x' });
    expect(await t.sendRoomEvent('!a:x', 'm.room.message', { body: 'hi' }, 'txn1')).toEqual({ event_id: '$e' });
    expect(await t.getJoinedMembers('!a:x')).toEqual({ joined: {} });
    expect(await t.roomMessages('!a:x', 'tok1', 'f', 10)).toEqual({ chunk: [], start: 't0' });
    expect(await t.whoami()).toEqual({ user_id: '@me:x', device_id: 'D' });
    expect(seen.map((s) => `${s.method} ${s.url}`)).toEqual([
      'POST /_matrix/client/v3/createRoom',
      'POST /_matrix/client/v3/join/%23a%3Ax',
      'PUT /_matrix/client/v3/rooms/!a%3Ax/send/m.room.message/txn1',
      'GET /_matrix/client/v3/rooms/!a%3Ax/joined_members',
      'GET /_matrix/client/v3/rooms/!a%3Ax/messages?from=tok1&dir=f&limit=10',
      'GET /_matrix/client/v3/account/whoami',
    ]);
    expect(seen[0]!.body).toBe('{"name":"r"}');
    expect(seen[2]!.body).toBe('{"body":"hi"}');
  });

  it('sendRoomEvent generates a transaction id and reuses it on retry', async () => {
    script = [json(500, {}), json(200, { event_id: '$e' })];
    await transport().sendRoomEvent('!a:x', 'm.room.message', { body: 'hi' });
    expect(seen).toHaveLength(2);
    expect(seen[0]!.url).toBe(seen[1]!.url);
    expect(seen[0]!.url).toMatch(/\/send\/m\.room\.message\/[^/]+$/);
  });

  it('validates its options', () => {
    expect(() => new HomeserverTransport({ baseUrl: '', accessToken: 't' })).toThrow(TypeError);
    expect(() => new HomeserverTransport({ baseUrl: 'http://x', accessToken: 't', maxRetries: -1 })).toThrow(RangeError);
    expect(new HomeserverTransport({ baseUrl: 'http://x///', accessToken: 't' }).baseUrl).toBe('http://x');
  });

  it('toSyncChanges picks the encryption-relevant parts of a sync', () => {
    const ev = { type: 'm.room.encrypted', sender: '@a:x', content: { algorithm: 'm.olm.v1.curve25519-aes-sha2' } };
    expect(
      toSyncChanges({
        next_batch: 'n',
        to_device: { events: [ev] },
        device_lists: { changed: ['@a:x'], left: [] },
        device_one_time_keys_count: { signed_curve25519: 3 },
        device_unused_fallback_key_types: ['signed_curve25519'],
        rooms: { join: {} },
      }),
    ).toEqual({
      toDeviceEvents: [ev],
      changedDevices: { changed: ['@a:x'], left: [] },
      oneTimeKeyCounts: { signed_curve25519: 3 },
      unusedFallbackKeys: ['signed_curve25519'],
    });
    // Absent fields stay absent: an absent fallback-key list is not "no unused fallback keys".
    expect(toSyncChanges({ next_batch: 'n' })).toEqual({});
  });
});
