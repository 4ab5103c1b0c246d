import { beforeAll, describe, it, expect } from 'vitest';
import { MatrixCryptoError } from '../../src/index';
import { native, nativeSync } from '../../src/errors';
import { TestDevice, TestHomeserver } from '../../src/testing';

// The hidden diagnostics exports (native/src/diagnostics.rs): the only way to make the real addon
// panic, since fuzzing found no input that does. Not part of the TypeScript API.
const diagnostics = require('../../native/index.js') as {
  __panicForTest(owned: boolean): Promise<void>;
  __panicForTestSync(): void;
};

describe('a Rust panic surfaces as a typed error and never aborts Node', () => {
  beforeAll(() => {
    if (typeof diagnostics.__panicForTest !== 'function') {
      throw new Error('the panic tests need a debug build of the addon (npm run build): release builds carry no diagnostics exports');
    }
  });

  it('in an async method (tokio worker), with a static or a formatted message', async () => {
    for (const owned of [false, true]) {
      const err = await native(() => diagnostics.__panicForTest(owned)).catch((e) => e);
      expect(err).toBeInstanceOf(MatrixCryptoError);
      expect(err.code).toBe('InternalError');
    }
  });

  it('in a synchronous method (JS thread)', () => {
    let err: unknown;
    try {
      nativeSync(() => diagnostics.__panicForTestSync());
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MatrixCryptoError);
    expect((err as MatrixCryptoError).code).toBe('InternalError');
    expect((err as Error).message).toContain('deliberate panic');
  });

  it('machines keep working after panics on the shared runtime', async () => {
    await Promise.all(Array.from({ length: 8 }, (_, i) => diagnostics.__panicForTest(i % 2 === 0).catch(() => undefined)));
    const hs = new TestHomeserver();
    const alice = await TestDevice.create(hs, '@alice:example.org', 'A');
    const bob = await TestDevice.create(hs, '@bob:example.org', 'B');
    const event = await alice.sendMessage('!r:example.org', [alice.userId, bob.userId], { body: 'after panics' });
    await bob.sync();
    expect((await bob.machine.decryptRoomEvent(event, '!r:example.org')).event.content).toMatchObject({ body: 'after panics' });
  });
});
