/**
 * matrix-bot-sdk's MatrixClient, patched where the SDK falls short for meshpilot: the sync loop is
 * ours (sync.ts drives syncOnce / processRaw), a failed crypto start is cleaned up, key tracking sends
 * its keys query first, and room keys go to invited members (and only to allowed recipients).
 */
import { createRequire } from 'node:module';
import { MatrixClient } from 'matrix-bot-sdk';
import { cryptoEngine } from './crypto.js';

/** Exposes the SDK's single-sync primitives and replaces its sync loop with ours. */
export class SessionClient extends MatrixClient {
  loopStarter: (() => void) | undefined;
  /** Who besides this account gets room keys (MatrixSessionOptions.encryption.keyRecipients). */
  keyRecipients: ((userId: string) => boolean) | undefined;
  /** The session's member list of a room (cached until a sync shows a membership change there). */
  membersOf: ((roomId: string) => Promise<Array<{ userId: string; membership: string }>>) | undefined;
  /**
   * The SDK's CryptoClient.prepare opens the crypto store, then uploads keys; when that upload fails
   * (homeserver busy or restarting) the store stays open while the client is not ready, and every
   * retry fails with "store already open". Close the half-prepared machine so the next start opens it
   * afresh (nothing is lost: the store saves on close).
   */
  override async start(filter?: unknown): Promise<unknown> {
    try {
      return await super.start(filter);
    } catch (err) {
      const crypto = (this as unknown as { crypto?: { isReady: boolean; engine?: { machine?: { close?(): unknown } } } }).crypto;
      if (crypto && !crypto.isReady && crypto.engine) {
        const machine = crypto.engine.machine;
        crypto.engine = undefined;
        await Promise.resolve(machine?.close?.()).catch(() => undefined);
      }
      throw err;
    }
  }
  protected override startSyncInternal(): Promise<void> {
    this.fixCryptoEngine(); // the SDK calls this after preparing crypto, before the first sync
    this.loopStarter?.();
    return Promise.resolve();
  }
  /**
   * The SDK's RustEngine.addTrackedUsers (run for every join and invite it sees) marks the users for a
   * keys query, then asks for missing Olm sessions without sending that query: the crypto machine waits
   * 5 s for it, holding the engine's sync lock, so every crypto call (and the bot's first message in a
   * new DM) stalls. This one sends the query first, as the SDK's own prepareEncrypt does.
   */
  private fixCryptoEngine(): void {
    const engine = cryptoEngine(this);
    if (!engine || engine.meshpilotFixed) return;
    const { UserId } = createRequire(import.meta.url)('@matrix-org/matrix-sdk-crypto-nodejs') as { UserId: new (id: string) => unknown };
    engine.meshpilotFixed = true;
    engine.addTrackedUsers = (userIds) =>
      engine.lock.acquire('sync', async () => {
        const machine = engine.machine;
        if (engine.meshpilotClosed || !machine) return;
        const users = userIds.map((u) => new UserId(u));
        await machine.updateTrackedUsers(users);
        await engine.runOnly(1); // RequestType.KeysQuery
        const claim = await machine.getMissingSessions(users);
        if (claim) await engine.processKeysClaimRequest(claim);
      });
  }
  /**
   * The user id this access token belongs to, when the caller has just asked /whoami: the SDK's
   * getUserId() then answers from it instead of asking again.
   */
  knownUserId(userId: string): void {
    // The SDK keeps it in a private field that getWhoAmI() fills (impersonateUserId() would also mark it an appservice masquerade).
    (this as unknown as { userId?: string }).userId = userId;
  }
  syncOnce(token: string | null): Promise<unknown> {
    return this.doSync(token ?? '');
  }
  processRaw(raw: unknown): Promise<unknown> {
    return this.processSync(raw);
  }
  /**
   * Only the SDK's crypto engine calls this, to pick who gets a room's keys. It shares with joined
   * members only, so an operator who has not accepted the DM invite yet could never read the bot's
   * first message; invited members get the keys too (as Element does). One /members answer, filtered
   * here: asking for joined and invited members in two requests missed an operator whose phone
   * accepted the invite between them (in neither list), and the bot's first message stayed unreadable.
   * With `keyRecipients` (the bots pass "is an operator"), only those members (and this account) get
   * keys: a stranger invited into a DM sees ciphertext.
   */
  override async getJoinedRoomMembers(roomId: string): Promise<string[]> {
    // The session's cached list when there is one: asking /members before every encrypted message cost a
    // homeserver round trip per reply. The cache is dropped before the crypto engine sees a sync that
    // changes the room's membership, so a new member is never missed for longer than the old code did.
    const members = this.membersOf
      ? await this.membersOf(roomId)
      : (await this.getAllRoomMembers(roomId)).map((m) => ({ userId: m.membershipFor, membership: m.membership }));
    const self = await this.getUserId();
    const may = this.keyRecipients;
    return members
      .filter((m) => m.membership === 'join' || m.membership === 'invite')
      .map((m) => m.userId)
      .filter((u) => !may || u === self || may(u));
  }
}
