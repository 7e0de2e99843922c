/**
 * `fs.*`: list, inspect, read, write and delete files through the Host.
 * invoke() has already checked the manifest's path globs and passes absolute, normalised paths.
 * Expected failures (missing path, symlink, permission) are answered with a clear failResult; guarded()
 * catches anything else a Host throws, as in the other families.
 */
import { z } from 'zod';
import {
  defineCapability,
  encodeBytes,
  failResult,
  okResult,
  type AnyCapability,
  type CapabilityContext,
  type CapabilityResult,
} from '../capability.js';
import { toMpError, type MpError } from '../errors.js';
import type { FileStat, FileType } from '../transports/types.js';
import { capText, formatBytes, guarded } from './shared.js';

// ---- helpers -----------------------------------------------------------------------------------

function elapsed(started: number): number {
  return Math.round(performance.now() - started);
}

function errno(err: unknown): string | undefined {
  if (err && typeof err === 'object' && 'code' in err) {
    const code = (err as { code: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

/** Turns a Host/fs failure into a message that names the path instead of a raw errno string. */
function fsError(err: unknown, path: string): MpError {
  const e = toMpError(err, 'exec_failed');
  const sys = errno(err);
  if (sys === 'ENOENT' || e.code === 'not_found') return { code: 'not_found', message: `${path} does not exist` };
  if (sys === 'ENOTDIR') return { code: 'not_found', message: `${path} does not exist (a parent is not a directory)` };
  if (sys === 'EACCES' || sys === 'EPERM') return { code: 'permission', message: `permission denied: ${path}` };
  if (sys === 'ELOOP') return { code: 'invalid_args', message: `${path} is a symlink; refusing to follow it` };
  if (sys === 'EISDIR') return { code: 'invalid_args', message: `${path} is a directory` };
  return e;
}

/** lstat that reports "does not exist" as a value, so callers can answer with a clear failResult. */
async function lstatOrFail(ctx: CapabilityContext, path: string): Promise<FileStat | MpError> {
  try {
    return await ctx.host.lstat(path);
  } catch (err) {
    return fsError(err, path);
  }
}

function isError(v: FileStat | MpError): v is MpError {
  return 'code' in v && 'message' in v && !('type' in v);
}

/**
 * Symlinks are not followed by read and list (the Host opens with O_NOFOLLOW): we name the target
 * instead, so that a follow-up call on the target goes through its own policy check.
 */
async function symlinkRefusal(ctx: CapabilityContext, path: string, verb: string): Promise<MpError> {
  try {
    const target = await ctx.host.realpath(path);
    return { code: 'invalid_args', message: `${path} is a symlink to ${target}; ${verb} ${target} instead` };
  } catch {
    return { code: 'invalid_args', message: `${path} is a dangling symlink` };
  }
}

export function modeOctal(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0');
}

const pathArg = z.string().min(1).max(4096).describe('Absolute path on the device (~ is expanded).');

// ---- fs.list ------------------------------------------------------------------------------------

const TYPE_CHAR: Record<FileType, string> = { file: '-', dir: 'd', symlink: 'l', other: '?' };

const fsList = defineCapability({
  name: 'fs.list',
  description:
    'List the entries of a directory, sorted by name, with type (file/dir/symlink/other), size in bytes and modification time. ' +
    'Returns one line per entry in stdout and the entries in data; truncated is true when there are more than `limit`.',
  input: z
    .object({
      path: pathArg,
      limit: z.number().int().min(1).max(10_000).default(1000).describe('Maximum number of entries to return.'),
      hidden: z.boolean().default(true).describe('Include entries whose name starts with a dot.'),
    })
    .strict(),
  risk: 'read',
  scope: { kind: 'paths', args: ['path'] },
  run: (args, ctx) => guarded(async () => {
    const started = performance.now();
    const st = await lstatOrFail(ctx, args.path);
    if (isError(st)) return failResult(st, elapsed(started));
    if (st.type === 'symlink') return failResult(await symlinkRefusal(ctx, args.path, 'list'), elapsed(started));
    if (st.type !== 'dir') {
      return failResult({ code: 'invalid_args', message: `${args.path} is not a directory (use fs.stat or fs.read)` }, elapsed(started));
    }
    let all;
    try {
      all = await ctx.host.readdir(args.path);
    } catch (err) {
      return failResult(fsError(err, args.path), elapsed(started));
    }
    const visible = args.hidden ? all : all.filter((e) => !e.name.startsWith('.'));
    // Code-point order: stable across locales and hosts, unlike localeCompare.
    visible.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const entries = visible.slice(0, args.limit);
    const truncated = visible.length > entries.length;

    const lines = entries.map((e) => {
      const size = e.type === 'dir' ? '-' : formatBytes(e.size);
      const date = new Date(e.mtimeMs).toISOString().slice(0, 16).replace('T', ' ');
      return `${TYPE_CHAR[e.type]} ${size.padStart(5)} ${date} ${e.name}${e.type === 'dir' ? '/' : ''}`;
    });
    if (lines.length === 0) lines.push('(empty)');
    if (truncated) lines.push(`… ${visible.length - entries.length} more`);
    const out = capText(lines.join('\n'), ctx.limits.maxOutputBytes);
    return okResult({
      stdout: out.text,
      truncated: truncated || out.truncated,
      durationMs: elapsed(started),
      data: { path: args.path, total: visible.length, entries },
    });
  }),
});

// ---- fs.stat ------------------------------------------------------------------------------------

const fsStat = defineCapability({
  name: 'fs.stat',
  description:
    'Show metadata of one path without following symlinks: type, size, permission mode (octal), owner uid/gid and modification time. ' +
    'For a symlink, data.target is where it points.',
  input: z.object({ path: pathArg }).strict(),
  risk: 'read',
  scope: { kind: 'paths', args: ['path'] },
  run: (args, ctx) => guarded(async () => {
    const started = performance.now();
    const st = await lstatOrFail(ctx, args.path);
    if (isError(st)) return failResult(st, elapsed(started));
    const data: FileStat & { modeOctal: string; target?: string } = { ...st, modeOctal: modeOctal(st.mode) };
    if (st.type === 'symlink') {
      try {
        data.target = await ctx.host.realpath(args.path);
      } catch {
        // Dangling link: report the link itself, without a target.
      }
    }
    const when = new Date(st.mtimeMs).toISOString().replace('T', ' ').slice(0, 19);
    const arrow = data.target ? ` -> ${data.target}` : '';
    const stdout = `${st.path}${arrow}\n${st.type} · ${formatBytes(st.size)} (${st.size} B) · mode ${data.modeOctal} · uid ${st.uid} gid ${st.gid} · modified ${when} UTC`;
    const out = capText(stdout, ctx.limits.maxOutputBytes);
    return okResult({ stdout: out.text, truncated: out.truncated, durationMs: elapsed(started), data });
  }),
});

// ---- fs.read ------------------------------------------------------------------------------------

/** Longest UTF-8 sequence is 4 bytes: at most 3 trailing bytes can be an incomplete character. */
function trimPartialUtf8(buf: Buffer): Buffer | undefined {
  for (let cut = 1; cut <= 3 && cut < buf.length; cut++) {
    const head = buf.subarray(0, buf.length - cut);
    if (encodeBytes(head).encoding === 'utf8') return head;
  }
  return undefined;
}

const fsRead = defineCapability({
  name: 'fs.read',
  description:
    'Read the contents of a regular file, optionally a byte range (offset, length). Returns the text in stdout, or base64 with ' +
    "encoding 'base64' when the bytes are not valid UTF-8; truncated is true when the file continues after what was returned.",
  input: z
    .object({
      path: pathArg,
      offset: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0).describe('Byte offset to start reading at.'),
      length: z
        .number()
        .int()
        .min(1)
        .max(1024 * 1024 * 1024)
        .optional()
        .describe('Maximum number of bytes to read; defaults to (and is capped at) the output limit.'),
    })
    .strict(),
  risk: 'read',
  scope: { kind: 'paths', args: ['path'] },
  run: (args, ctx) => guarded(async () => {
    const started = performance.now();
    const st = await lstatOrFail(ctx, args.path);
    if (isError(st)) return failResult(st, elapsed(started));
    if (st.type === 'dir') {
      return failResult({ code: 'invalid_args', message: `${args.path} is a directory; use fs.list to see its entries` }, elapsed(started));
    }
    if (st.type === 'symlink') return failResult(await symlinkRefusal(ctx, args.path, 'read'), elapsed(started));
    if (st.type !== 'file') {
      // Devices and FIFOs can block or never end.
      return failResult({ code: 'invalid_args', message: `${args.path} is not a regular file` }, elapsed(started));
    }
    const max = Math.max(1, ctx.limits.maxOutputBytes);
    const length = Math.min(args.length ?? max, max);
    let buf: Buffer;
    try {
      buf = await ctx.host.readFile(args.path, args.offset, length);
    } catch (err) {
      return failResult(fsError(err, args.path), elapsed(started));
    }
    let enc = encodeBytes(buf);
    const cutShort = args.offset + buf.length < st.size;
    if (enc.encoding === 'base64') {
      const trimmed = cutShort ? trimPartialUtf8(buf) : undefined;
      if (trimmed) {
        // Text whose window split a multi-byte character: return whole characters rather than base64.
        buf = trimmed;
        enc = encodeBytes(buf);
      } else {
        // base64 grows 4/3: keep stdout within the output limit.
        const fit = Math.floor(max / 4) * 3;
        if (buf.length > fit) {
          buf = buf.subarray(0, Math.max(3, fit));
          enc = encodeBytes(buf);
        }
      }
    }
    const bytesRead = buf.length;
    return okResult({
      stdout: enc.text,
      encoding: enc.encoding,
      truncated: args.offset + bytesRead < st.size,
      durationMs: elapsed(started),
      data: { path: args.path, size: st.size, offset: args.offset, bytesRead, encoding: enc.encoding },
    });
  }),
});

// ---- fs.write -----------------------------------------------------------------------------------

const MAX_WRITE_CHARS = 10 * 1024 * 1024;
const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/;

const fsWrite = defineCapability({
  name: 'fs.write',
  description:
    'Create or replace a file with the given content, atomically (written beside it, then renamed over it); a new file\'s missing directories are made. ' +
    'Keeps the existing permission mode unless `mode` is given; refuses to write through a symlink. Returns the bytes written.',
  input: z
    .object({
      path: pathArg,
      content: z.string().max(MAX_WRITE_CHARS).describe("The full new file content (text, or base64 when encoding is 'base64')."),
      encoding: z.enum(['utf8', 'base64']).default('utf8').describe("How `content` is encoded: 'utf8' text or 'base64' bytes."),
      mode: z
        .string()
        .regex(/^0?[0-7]{3}$/, 'an octal mode like 0644')
        .optional()
        .describe('Permission mode as an octal string, e.g. "0644" or "0755". Default: keep the existing mode, or 0644 for a new file.'),
    })
    .strict(),
  risk: 'write',
  scope: { kind: 'paths', args: ['path'] },
  run: (args, ctx) => guarded(async (): Promise<CapabilityResult> => {
    const started = performance.now();
    let data: Buffer;
    if (args.encoding === 'base64') {
      const compact = args.content.replace(/\s+/g, '');
      // Buffer.from silently skips bad characters; corrupting a file quietly is worse than refusing.
      if (compact.length % 4 === 1 || !BASE64_RE.test(compact)) {
        return failResult({ code: 'invalid_args', message: 'content is not valid base64' }, elapsed(started));
      }
      data = Buffer.from(compact, 'base64');
    } else {
      data = Buffer.from(args.content, 'utf8');
    }
    const mode = args.mode === undefined ? undefined : parseInt(args.mode, 8);
    try {
      await ctx.host.writeFileAtomic(args.path, data, mode);
    } catch (err) {
      const e = fsError(err, args.path);
      const message = e.code === 'not_found' ? `the directory for ${args.path} does not exist` : e.message;
      return failResult({ code: e.code, message }, elapsed(started));
    }
    return okResult({
      stdout: `wrote ${data.length} bytes to ${args.path}${args.mode ? ` (mode ${args.mode})` : ''}`,
      durationMs: elapsed(started),
      data: { path: args.path, bytesWritten: data.length },
    });
  }),
});

// ---- fs.delete ----------------------------------------------------------------------------------

const fsDelete = defineCapability({
  name: 'fs.delete',
  description:
    'Delete one regular file or symlink (a symlink is removed, never its target). Directories are refused. ' +
    'Returns the deleted path and what it was.',
  input: z.object({ path: pathArg }).strict(),
  risk: 'write',
  scope: { kind: 'paths', args: ['path'] },
  run: (args, ctx) => guarded(async () => {
    const started = performance.now();
    const st = await lstatOrFail(ctx, args.path);
    if (isError(st)) return failResult(st, elapsed(started));
    if (st.type === 'dir') {
      return failResult({ code: 'invalid_args', message: `${args.path} is a directory; fs.delete removes only files and symlinks` }, elapsed(started));
    }
    if (st.type === 'other') {
      return failResult({ code: 'invalid_args', message: `${args.path} is not a regular file or symlink; refusing to delete it` }, elapsed(started));
    }
    try {
      await ctx.host.unlink(args.path);
    } catch (err) {
      return failResult(fsError(err, args.path), elapsed(started));
    }
    return okResult({
      stdout: `deleted ${st.type} ${args.path}`,
      durationMs: elapsed(started),
      data: { path: args.path, type: st.type, size: st.size },
    });
  }),
});

export const fsCapabilities: AnyCapability[] = [fsList, fsStat, fsRead, fsWrite, fsDelete];
