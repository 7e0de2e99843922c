/**
 * Attachment downloads of a session: the authenticated media endpoint when the homeserver has it (spec
 * v1.11 or MSC3916), else the legacy one; bounded; encrypted attachments decrypted with the key
 * material their (decrypted) event carried.
 */
import { MeshpilotError } from '../../capabilities/errors.js';
import type { HttpResponse } from '../http.js';
import { decryptAttachment } from './crypto.js';
import { errInfo, toMeshpilot } from './errors.js';
import { mxcRe, type EncryptedFile } from './events.js';
import type { HomeserverApi } from './http.js';
import type { DownloadedMedia } from './types.js';

const VERSIONS_TTL_MS = 10 * 60_000;
/** Encrypted attachments remembered (their keys), newest kept. */
const MAX_REMEMBERED = 256;

async function readBounded(res: HttpResponse, maxBytes: number): Promise<Buffer> {
  try {
    return await res.bytes(maxBytes);
  } catch (err) {
    if ((err as { code?: unknown }).code === 'E2BIG') throw new MeshpilotError('output_limit', `Matrix media is over the ${maxBytes}-byte limit`);
    throw new MeshpilotError('unreachable', `Matrix download failed: ${errInfo(err).message}`);
  }
}

export interface MediaDownloader {
  /** Keeps the key material of an encrypted attachment seen in a message, so its download can be decrypted. */
  remember(file: EncryptedFile): void;
  download(mxc: string, maxBytes: number): Promise<DownloadedMedia>;
}

export function createMediaDownloader(o: {
  api: HomeserverApi;
  /** The homeserver's /versions (through the session's client). */
  versions: () => Promise<{ versions?: string[]; unstable_features?: Record<string, unknown> }>;
  /** Whether this session can decrypt now. */
  canDecrypt: () => boolean;
}): MediaDownloader {
  // mxc → key material of encrypted attachments seen in messages (bounded).
  const encryptedFiles = new Map<string, EncryptedFile>();
  let versionsCache: { at: number; authenticated: boolean } | undefined;

  async function authenticatedMediaSupported(): Promise<boolean> {
    if (versionsCache && Date.now() - versionsCache.at < VERSIONS_TTL_MS) return versionsCache.authenticated;
    const v = await o.versions();
    const authenticated = (v.versions ?? []).includes('v1.11') || v.unstable_features?.['org.matrix.msc3916.stable'] === true;
    versionsCache = { at: Date.now(), authenticated };
    return authenticated;
  }

  return {
    remember(f) {
      encryptedFiles.delete(f.url);
      encryptedFiles.set(f.url, f);
      if (encryptedFiles.size > MAX_REMEMBERED) encryptedFiles.delete(encryptedFiles.keys().next().value as string);
    },
    async download(mxc, maxBytes) {
      const m = mxcRe.exec(mxc);
      if (!m) throw new MeshpilotError('usage', `Not an mxc:// media URI: ${mxc.slice(0, 120)}`);
      let authenticated: boolean;
      try {
        authenticated = await authenticatedMediaSupported();
      } catch (err) {
        throw toMeshpilot(err, 'versions');
      }
      const endpoint = authenticated ? 'authenticated' : 'legacy';
      const res = await o.api.mediaDownload(m[1]!, m[2]!, authenticated);
      const declared = Number(res.headers.get('content-length') ?? 'NaN');
      if (Number.isFinite(declared) && declared > maxBytes) {
        res.cancel();
        throw new MeshpilotError('output_limit', `Matrix media is ${declared} bytes, over the ${maxBytes}-byte limit`);
      }
      const bytes = await readBounded(res, maxBytes);
      const file = encryptedFiles.get(mxc);
      if (file) {
        if (!o.canDecrypt()) throw new MeshpilotError('unreachable', 'this attachment is end-to-end encrypted and encryption is off in this session');
        return { bytes: decryptAttachment(bytes, file), contentType: 'application/octet-stream', endpoint };
      }
      return { bytes, contentType: res.headers.get('content-type') ?? 'application/octet-stream', endpoint };
    },
  };
}
