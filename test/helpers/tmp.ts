import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, onTestFinished } from 'vitest';

/**
 * A fresh temp dir, removed when the current test finishes (or, made outside a test, after the file's
 * tests). afterEach registered from inside a running test never ran for that test: hundreds of dirs
 * were left in /tmp per run.
 */
export function tempDir(prefix = 'mp-test-'): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  const remove = (): void => rmSync(dir, { recursive: true, force: true });
  try {
    onTestFinished(remove);
  } catch {
    afterAll(remove); // not inside a test (a beforeAll, a describe body)
  }
  return dir;
}

export function makeTempDir(prefix = 'mp-test-'): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
