/** The OpenAPI entries of the workspace routes (workspaces.ts), from the schemas the handlers validate with. */
import type { z } from 'zod';
import * as W from './workspaces.js';

type Answer = { description: string; schema?: z.ZodType };
/** openapi.ts's Route (not imported: openapi.ts imports this file) */
interface Route {
  method: 'get' | 'post' | 'delete';
  path: string;
  summary: string;
  body?: z.ZodType;
  query?: z.ZodObject;
  params?: string[];
  responses: Record<number, Answer>;
}

export function WORKSPACE_ROUTES(E: (d: string) => Answer, common: Record<number, Answer>): Route[] {
  return [
    { method: 'get', path: '/v1/workspaces', summary: 'the org tree: each workspace in the token\'s device scope with its state, device, home, owner and bot', responses: { 200: { description: 'the tree', schema: W.WorkspaceListSchema }, ...common } },
    {
      method: 'get', path: '/v1/workspaces/{name}', summary: 'one workspace, and what removing it removes (children first)', params: ['name'],
      responses: { 200: { description: 'the workspace', schema: W.WorkspaceDetailSchema }, 404: E('no such workspace in the token\'s scope'), ...common },
    },
    {
      method: 'post', path: '/v1/workspaces/import', summary: `plan an org template (one YAML file) and, unless dry_run, apply it (needs ${W.WORKSPACE_IMPORT}; every workspace it touches and each host device in the token's device scope)`, body: W.WorkspaceImportRequestSchema,
      responses: {
        200: { description: 'the plan and the result: done, nothing to do, or a dry run', schema: W.WorkspaceImportResultSchema },
        400: { description: 'a bad body, or a template with problems (each `file:line path: message`; !include is refused)', schema: W.WorkspaceTemplateErrorSchema },
        403: E(`not in the token's scopes (needs ${W.WORKSPACE_IMPORT} and the names)`),
        409: { description: 'nothing was changed: the plan is blocked (a conflict, the empty-plan guard), another import runs, or Matrix is not configured', schema: W.WorkspaceImportResultSchema },
        500: { description: 'partly done or failed part-way: the failed workspaces (rolled back) and why', schema: W.WorkspaceImportResultSchema },
        413: E('body too large (http.max_body_bytes)'), ...common,
      },
    },
    {
      method: 'delete', path: '/v1/workspaces/{name}', summary: `remove a workspace and its descendants, children first; ?confirm=<name> must repeat its name (needs ${W.WORKSPACE_RM})`, params: ['name'], query: W.WorkspaceRemoveQuerySchema,
      responses: {
        200: { description: 'removed (or already gone)', schema: W.WorkspaceRemoveResultSchema },
        400: E('confirm missing or different (the message names the descendants), or not a workspace name'),
        403: E(`not in the token's scopes (needs ${W.WORKSPACE_RM} and every name removed)`),
        500: E('the removal is incomplete (the message says what is left)'), ...common,
      },
    },
  ];
}
