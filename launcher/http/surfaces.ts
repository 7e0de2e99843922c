/**
 * The HTTP surfaces the launcher serves, in mount order. Each is loaded only when the server starts.
 * A new surface is a line here.
 */
import type { HttpSurface } from './types.js';

export async function httpSurfaces(): Promise<HttpSurface[]> {
  const surfaces: HttpSurface[] = [];
  surfaces.push((await import('./api/index.js')).apiSurface());
  // The dashboard (launcher/http/dashboard/) mounts at '/': its line goes here.
  return surfaces;
}
