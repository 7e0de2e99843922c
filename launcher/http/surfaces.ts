/**
 * The HTTP surfaces the launcher serves, in mount order. Each is loaded only when the server starts.
 * A new surface is a line here.
 */
import type { HttpSurface } from './types.js';

export async function httpSurfaces(): Promise<HttpSurface[]> {
  const surfaces: HttpSurface[] = [];
  surfaces.push((await import('./api/index.js')).apiSurface());
  // Before the dashboard (mounted at /), whose login wall would answer /s/… first.
  surfaces.push((await import('./share.js')).shareSurface());
  surfaces.push((await import('./dashboard/index.js')).dashboardSurface());
  return surfaces;
}
