import { describe, it, expect } from 'vitest';
import { runHostileInput } from './hostile';

describe('hostile network input (fast-check)', () => {
  it('mutated real traffic and arbitrary JSON: typed rejections only, and rejected input changes nothing', async () => {
    const figures = await runHostileInput(300);
    expect(figures.tried).toBe(300);
    expect(figures.untyped).toBe(0);
    expect(figures.storeChanges).toBe(0);
    // Every kind of input was tried, and some were refused: the property was exercised.
    expect(Object.keys(figures.byKind).sort()).toEqual(['keyExport', 'response', 'roomEvent', 'syncChanges', 'toDevice']);
    expect(figures.rejected).toBeGreaterThan(0);
  });
});
