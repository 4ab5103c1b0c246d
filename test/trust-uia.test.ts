// User-interactive auth of the cross-signing upload, against a scripted homeserver.
import { describe, expect, it } from 'vitest';
import { HomeserverTransport, uploadSigningKeys, type UiaChallenge } from '../src/index';

const CHALLENGE = { session: 'sess1', flows: [{ stages: ['m.login.password'] }, { stages: ['m.login.sso'] }], params: {} };

/** A transport whose homeserver answers the first upload with the challenge and records the bodies. */
function scripted(secondStatus = 200): { transport: HomeserverTransport; bodies: Array<Record<string, unknown>> } {
  const bodies: Array<Record<string, unknown>> = [];
  const fetch = (async (_url: string, init: { body: string }) => {
    bodies.push(JSON.parse(init.body) as Record<string, unknown>);
    const status = bodies.length === 1 ? 401 : secondStatus;
    const body = status === 200 ? '{}' : JSON.stringify(status === 401 ? CHALLENGE : { errcode: 'M_FORBIDDEN', error: 'Invalid password' });
    return new Response(body, { status, headers: { 'content-type': 'application/json' } });
  }) as unknown as typeof globalThis.fetch;
  return { transport: new HomeserverTransport({ baseUrl: 'https://hs.example', accessToken: 't', fetch, maxRetries: 0 }), bodies };
}

const KEYS = JSON.stringify({ master_key: { user_id: '@bot:hs.example' } });

describe('uploadSigningKeys: user-interactive auth', () => {
  it('answers the password flow with our user and the session', async () => {
    const { transport, bodies } = scripted();
    await uploadSigningKeys(transport, '@bot:hs.example', KEYS, { type: 'password', password: 'hunter2' });
    expect(bodies).toEqual([
      { master_key: { user_id: '@bot:hs.example' } },
      {
        master_key: { user_id: '@bot:hs.example' },
        auth: { type: 'm.login.password', identifier: { type: 'm.id.user', user: '@bot:hs.example' }, password: 'hunter2', session: 'sess1' },
      },
    ]);
  });

  it('hands the challenge to a function and sends what it returns', async () => {
    const { transport, bodies } = scripted();
    const seen: UiaChallenge[] = [];
    await uploadSigningKeys(transport, '@bot:hs.example', KEYS, (challenge) => {
      seen.push(challenge);
      return { type: 'm.login.sso' };
    });
    expect(seen).toEqual([CHALLENGE]);
    expect(bodies[1]?.auth).toEqual({ type: 'm.login.sso', session: 'sess1' });
  });

  it('without auth, names the field and the flows; a refused password is the homeserver error', async () => {
    await expect(uploadSigningKeys(scripted().transport, '@bot:hs.example', KEYS, undefined)).rejects.toMatchObject({
      code: 'InvalidArgument',
      field: 'auth',
      message: expect.stringContaining('m.login.password, m.login.sso'),
    });
    await expect(uploadSigningKeys(scripted(401).transport, '@bot:hs.example', KEYS, { type: 'password', password: 'x' })).rejects.toMatchObject({
      name: 'HomeserverError',
      status: 401,
    });
  });
});
