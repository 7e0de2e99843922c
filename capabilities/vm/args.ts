/**
 * The vm.* capabilities' arguments, as zod schemas in a file that imports nothing but zod and the
 * name rules: the capabilities (capabilities/catalog/vm.ts) and the `vm` commands (capabilities/vm/
 * commands.ts, loaded at CLI start) both derive from them.
 */
import { z } from 'zod';
import { DEVICE_NAME } from '../names.js';

/** A VM name: the same rules as a device name (capabilities/names.ts). */
export const VmNameSchema = z.string().regex(DEVICE_NAME, 'a VM name is 1-32 characters of a-z, 0-9 and -, not starting with -')
  .describe('The VM\'s name (unique on the device): a-z, 0-9 and -, e.g. dev.');

/** An image reference: registry/path:tag or @sha256 digest; no leading - (never read as a flag). */
export const IMAGE_REF = /^[a-z0-9][a-z0-9._\-/:@]{0,254}$/i;
export const ImageSchema = z.string().max(255).regex(IMAGE_REF, 'image must be a reference like debian:12 or localhost/base:latest')
  .describe('Image reference, e.g. localhost/busybox:latest or docker.io/library/debian:12 (must match the manifest\'s images globs).');

const noNul = (s: string): boolean => !s.includes('\0');

export const VmNewInput = z.object({
  name: VmNameSchema,
  image: ImageSchema,
  cpus: z.number().min(0.1).max(64).default(1).describe('CPU limit (may be fractional, e.g. 0.5).'),
  memory_mb: z.number().int().min(16).max(262_144).default(512).describe('Memory limit in MiB.'),
  disk_mb: z.number().int().min(64).max(1_048_576).default(2048).describe('Disk in MiB: what the VM may write (counted by quotas; the reaper stops a VM whose writable layer grows past it).'),
  ttl_h: z.number().min(0.01).max(8760).default(24).describe('Hours until the reaper stops and removes it.'),
  ports: z.array(z.number().int().min(1).max(65535)).max(16).default([])
    .describe('Guest ports published on the device (loopback, or its mesh address on a mesh device; a free host port each), e.g. [80, 8080].'),
  command: z.array(z.string().max(4096).refine(noNul, 'must not contain NUL bytes')).min(1).max(64).optional()
    .describe('Program and arguments to run instead of the image\'s default command (argv, no shell).'),
}).strict();

export const VmNameInput = z.object({ name: VmNameSchema }).strict();

export const VmLsInput = z.object({
  all: z.boolean().default(true).describe('Include stopped VMs (default true).'),
  owner: z.string().min(1).max(256).optional().describe('Only the VMs of this owner (a Matrix ID). Below operator level meshpilot sets it to you.'),
  size: z.boolean().default(false).describe('Also read each VM\'s disk use (what it wrote; slower). The reaper uses it to enforce disk_mb.'),
}).strict();

export const VmRmInput = z.object({
  name: VmNameSchema,
  expired_before: z.string().datetime().optional()
    .describe('Only remove it when its expiry is before this time (the reaper uses it, so a VM whose TTL changed is kept).'),
}).strict();

export const VmLogsInput = z.object({
  name: VmNameSchema,
  tail: z.number().int().min(1).max(5000).default(200).describe('How many lines from the end (default 200).'),
}).strict();

export const VmExecInput = z.object({
  name: VmNameSchema,
  argv: z.array(z.string().max(8192).refine(noNul, 'must not contain NUL bytes')).min(1).max(256)
    .refine((a) => (a[0] ?? '') !== '', 'argv[0] (the program) must not be empty')
    .describe('Program and arguments run inside the VM, e.g. ["ls","-la","/"]. No shell: quotes, pipes and $() are literal.'),
  timeout_s: z.number().int().min(1).max(3600).optional().describe('Kill it after this many seconds (capped by the device limit).'),
}).strict();

export const VmImageImportInput = z.object({
  path: z.string().min(1).max(4096).refine(noNul, 'must not contain NUL bytes').describe('A rootfs tarball on the device (.tar, .tar.gz), e.g. /srv/images/alpine-rootfs.tar.gz.'),
  image: ImageSchema.describe('The image to create, e.g. localhost/alpine:3 (must match the manifest\'s images globs for vm.new to use it).'),
}).strict();

/** A Matrix user ID, as the dashboard's sessions name people (capabilities/dashboard-login.ts ACTOR). */
export const MatrixIdSchema = z.string().max(255).regex(/^@[^\s:]{1,200}:[^\s]{1,200}$/, 'a Matrix user ID like @friend:example.org');

export const VmShareInput = z.object({
  name: VmNameSchema,
  port: z.number().int().min(1).max(65535).describe('The guest port to share (published with vm.new ports), e.g. 8080.'),
  public: z.boolean().default(false).describe('Anyone with the link may open it (default false: only the people in `to`, logged in to the dashboard).'),
  to: z.union([MatrixIdSchema, z.array(MatrixIdSchema).min(1).max(16)]).optional()
    .describe('Who may open a private share, e.g. @friend:example.org (or a list): the device bot DMs each a one-time login link to it.'),
}).strict();

export const VmUnshareInput = z.object({
  name: VmNameSchema,
  port: z.number().int().min(1).max(65535).optional().describe('The shared guest port; without it, every share of the VM.'),
}).strict();
