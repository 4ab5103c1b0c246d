import { describe, it, expect } from 'vitest';
import { TestDevice, TestHomeserver } from '../src/testing/homeserver';
import { WasmDevice } from './helpers/wasm-device';

const ROOM = '!interop:example.org';

describe('interop with @matrix-org/matrix-sdk-crypto-wasm as the other device', () => {
  it('wasm encrypts, we decrypt; we encrypt, wasm decrypts', async () => {
    const hs = new TestHomeserver();
    const ours = await TestDevice.create(hs, '@ours:example.org', 'OURS');
    const theirs = await WasmDevice.create(hs, '@theirs:example.org', 'THEIRS');
    const members = [ours.userId, theirs.userId];

    const fromWasm = await theirs.sendMessage(ROOM, members, { msgtype: 'm.text', body: 'from wasm' });
    const sync = await ours.sync();
    expect(sync.roomKeyUpdates.map((k) => k.sessionId)).toContain(fromWasm.content.session_id);
    const decrypted = await ours.machine.decryptRoomEvent(fromWasm, ROOM);
    expect(decrypted.event.content).toEqual({ msgtype: 'm.text', body: 'from wasm' });
    expect(decrypted.senderDevice).toBe('THEIRS');

    const fromUs = await ours.sendMessage(ROOM, members, { msgtype: 'm.text', body: 'from us' });
    await theirs.sync();
    expect((await theirs.decrypt(fromUs, ROOM)).content).toEqual({ msgtype: 'm.text', body: 'from us' });
  });
});
