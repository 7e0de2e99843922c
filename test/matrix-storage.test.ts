/** bots/matrix/sync-store.ts: the session's sync token store (real SQLite files). */
import { describe, expect, it } from 'vitest';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { openSyncStateStore } from '../bots/matrix/sync-store.js';
import { tempDir } from './helpers/tmp.js';

describe('sync state store', () => {
  it('keeps token, filter and values across a reopen', () => {
    const dir = tempDir();
    const a = openSyncStateStore(dir);
    expect(a.getSyncToken()).toBeNull();
    expect(a.getFilter()).toBeNull();
    a.setSyncToken('s1');
    a.setSyncToken('s2');
    a.setFilter({ id: 'f1', filter: { room: { timeline: { limit: 5 } } } });
    a.storeValue('k', 'v');
    a.close();
    const b = openSyncStateStore(dir);
    expect(b.getSyncToken()).toBe('s2');
    expect(b.getFilter()).toEqual({ id: 'f1', filter: { room: { timeline: { limit: 5 } } } });
    expect(b.readValue('k')).toBe('v');
    expect(b.readValue('missing')).toBeNull();
    b.setSyncToken(null);
    expect(b.getSyncToken()).toBeNull();
    b.close();
  });

  it('imports the token of an earlier bot-sdk.json once, then removes the file; an unreadable one is dropped', () => {
    const dir = tempDir();
    const legacy = path.join(dir, 'bot-sdk.json');
    writeFileSync(legacy, JSON.stringify({ syncToken: 'old_token', filter: null, appserviceUsers: {}, appserviceTransactions: {}, kvStore: { a: 'b' } }));
    const s = openSyncStateStore(dir);
    expect(s.getSyncToken()).toBe('old_token');
    expect(s.readValue('a')).toBe('b');
    expect(existsSync(legacy)).toBe(false);
    s.setSyncToken('newer');
    s.close();

    // a stale legacy file never overrides a newer token
    writeFileSync(legacy, JSON.stringify({ syncToken: 'stale' }));
    const again = openSyncStateStore(dir);
    expect(again.getSyncToken()).toBe('newer');
    again.close();

    const dir2 = tempDir();
    writeFileSync(path.join(dir2, 'bot-sdk.json'), ''); // emptied by a crash mid-write
    const fresh = openSyncStateStore(dir2);
    expect(fresh.getSyncToken()).toBeNull();
    expect(existsSync(path.join(dir2, 'bot-sdk.json'))).toBe(false);
    fresh.close();
  });
});
