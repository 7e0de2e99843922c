/**
 * A root file system of busybox-static alone, packed as a tarball for `podman import` or
 * vm.image.import: no registry is needed (none is reachable here). The VM tests and benches build their
 * images from it.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';

/** Every applet this busybox has. */
export function busyboxApplets(): string[] {
  return [...new Set(execFileSync('/bin/busybox', ['--list'], { encoding: 'utf8' }).split('\n').filter((a) => /^[a-z0-9_.[-]+$/.test(a) && a !== 'busybox'))];
}

/**
 * Writes <dir>/rootfs (bin/ with busybox and a link per applet, tmp proc sys dev etc, the extra dirs,
 * the files given by path, with a mode where given) and packs it as <dir>/rootfs.tar; returns the tarball's path.
 */
export function busyboxRootfs(dir: string, o: { applets: readonly string[] | 'all'; dirs?: readonly string[]; files?: Record<string, string | Buffer | { content: string | Buffer; mode: number }> }): string {
  const root = path.join(dir, 'rootfs');
  for (const d of ['bin', 'tmp', 'proc', 'sys', 'dev', 'etc', ...(o.dirs ?? [])]) mkdirSync(path.join(root, d), { recursive: true });
  copyFileSync('/bin/busybox', path.join(root, 'bin', 'busybox'));
  for (const a of o.applets === 'all' ? busyboxApplets() : o.applets) symlinkSync('busybox', path.join(root, 'bin', a));
  for (const [rel, content] of Object.entries(o.files ?? {})) {
    mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    if (typeof content === 'string' || Buffer.isBuffer(content)) writeFileSync(path.join(root, rel), content);
    else writeFileSync(path.join(root, rel), content.content, { mode: content.mode });
  }
  const tar = path.join(dir, 'rootfs.tar');
  execFileSync('tar', ['-C', root, '-cf', tar, '.']);
  return tar;
}
