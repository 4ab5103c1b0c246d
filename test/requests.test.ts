// The request types are spelled once in Rust (native/src/requests.rs); the TypeScript union must
// name exactly those, and what the machine hands out must be one of them.
import { describe, expect, it } from 'vitest';
import { OlmMachine } from '../src/index';
import { requestTypeList } from '../src/requests';

const binding = require('../native/index.js') as { RequestType: Record<string, string> };

describe('request types', () => {
  it('the TypeScript RequestType union (with signing_keys_upload) is the Rust RequestType enum', () => {
    expect(new Set(requestTypeList)).toEqual(new Set(Object.values(binding.RequestType)));
  });

  it('a new machine hands out a keys_upload request, and a wrong type for it is refused with InvalidArgument', async () => {
    const m = await OlmMachine.open({ userId: '@a:example.org', deviceId: 'D', store: { kind: 'memory' } });
    const requests = await m.outgoingRequests();
    expect(requests.map((r) => r.type)).toContain('keys_upload');
    for (const r of requests) expect(requestTypeList).toContain(r.type);
    const upload = requests.find((r) => r.type === 'keys_upload')!;
    const err = await m.markRequestAsSent(upload.id, 'keys_uplod' as never, '{}').catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'InvalidArgument' });
    await m.close();
  });
});
