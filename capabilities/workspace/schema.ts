/**
 * Org templates: the zod schemas of a template file and of one workspace in its tree, and the types
 * the parser (template.ts) hands to the planner (plan.ts). A workspace's children are validated one
 * node at a time by the parser (they may come from `!include`d files), so here they are `unknown[]`.
 */
import { z } from 'zod';
import { DeviceNameSchema } from '../names.js';
import { VmNameSchema } from '../vm/args.js';

/** Size limits of one template (all its files together). */
export const TEMPLATE_LIMITS = {
  /** bytes of one template file */
  fileBytes: 256 * 1024,
  /** workspaces in one template, skipped ones included */
  workspaces: 500,
  /** nested `!include`s */
  includeDepth: 16,
  /** children of one workspace */
  children: 100,
  /** files read for one template */
  files: 200,
} as const;

/** Workspace names follow the device name rules: a-z, 0-9 and -, so no traversal and no separators. */
export const WorkspaceNameSchema = DeviceNameSchema;

/** A capability name (`fs.read`, `vm.image.import`); whether it exists and is allowed is checked against the device. */
export const CapabilityNameSchema = z.string().regex(/^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$/, 'must be a capability name like fs.read');

/** A workspace home: absolute or ~/…, no `..` segment, no wildcard. */
export const HomeSchema = z.string().min(1).max(1024).refine(
  (p) => (p.startsWith('/') || p.startsWith('~/'))
    && !p.includes('\0') && !p.includes('*') && !p.includes('\\')
    && !p.split('/').some((seg) => seg === '..' || seg === '.'),
  'must be an absolute path or ~/…, without . or .. segments or wildcards',
);

export const ModelSchema = z.string().min(1).max(200);
const CapabilityList = z.array(CapabilityNameSchema).max(64);

export const TemplateDefaultsSchema = z.object({
  device: DeviceNameSchema.optional(),
  model: ModelSchema.optional(),
  capabilities: CapabilityList.optional(),
}).strict();

/** The top of a template file; `workspaces` items are checked one by one (WorkspaceNodeSchema). */
export const TemplateHeadSchema = z.object({
  name: z.string().regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, 'must be 1-64 characters of a-z, 0-9, ., _ and -, not starting with . _ or -'),
  description: z.string().max(500).optional(),
  defaults: TemplateDefaultsSchema.default({}),
  workspaces: z.array(z.unknown()).min(1, 'a template needs at least one workspace').max(TEMPLATE_LIMITS.children),
}).strict();

/** One workspace as written (its children are walked separately). */
export const WorkspaceNodeSchema = z.object({
  name: WorkspaceNameSchema,
  role: z.string().trim().min(1).max(8000).optional(),
  home: HomeSchema.optional(),
  device: DeviceNameSchema.optional(),
  /** a VM of that device (made by `vm new`): the home is inside it, and every call of the workspace runs there */
  vm: VmNameSchema.optional(),
  model: ModelSchema.optional(),
  capabilities: CapabilityList.optional(),
  spawning: z.boolean().optional(),
  children: z.array(z.unknown()).max(TEMPLATE_LIMITS.children).optional(),
}).strict();

export type WorkspaceNode = z.infer<typeof WorkspaceNodeSchema>;
export type TemplateDefaults = z.infer<typeof TemplateDefaultsSchema>;

/** Where something was written: file (absolute), line, and the field path inside that file. */
export interface SourceRef {
  file: string;
  line: number | null;
  path: string;
}

/** One workspace of a parsed template, with defaults applied. */
export interface TemplateWorkspace {
  name: string;
  parent: string | null;
  /** empty only for a skipped workspace without a role */
  role: string;
  home: string;
  /** undefined only for a skipped workspace when neither it nor the defaults name one */
  device: string | undefined;
  /** the VM of `device` it lives in (its home is inside it), or undefined: on the device itself */
  vm: string | undefined;
  model: string | undefined;
  capabilities: string[];
  /** false when it or an ancestor says `spawning: false` */
  spawning: boolean;
  /** where `spawning: false` was written (this node or an ancestor) */
  skippedBy?: string;
  depth: number;
  children: TemplateWorkspace[];
  source: SourceRef;
  /** where the capabilities list came from: this node, or the defaults */
  capabilitiesFrom: 'node' | 'defaults';
  /** lines of the fields, for validation errors against devices */
  lines: { device: number | null; vm: number | null; capabilities: Array<number | null> };
}

export interface OrgTemplate {
  name: string;
  description?: string;
  /** the template's directory (realpath): includes must stay inside it */
  root: string;
  /** the main file (absolute) */
  file: string;
  defaults: TemplateDefaults;
  workspaces: TemplateWorkspace[];
  /** every workspace, depth first (parents before children) */
  all: TemplateWorkspace[];
  /** files read (absolute), main first */
  files: string[];
}

export interface TemplateIssue {
  file: string;
  line: number | null;
  field: string;
  message: string;
}
