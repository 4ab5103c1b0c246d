/**
 * Steps of an interactive verification between a js-sdk user and the bot, shared by the
 * to-device and the in-room verification suites.
 */
import { VerificationPhase, type ShowSasCallbacks, type VerificationRequest } from 'matrix-js-sdk/lib/crypto-api/index.js';
import { CryptoEvent } from 'matrix-js-sdk/lib/crypto-api/CryptoEvent.js';
import type { VerificationInfo } from '../../src/trust';
import { JsSdkUser, waitFor } from './js-sdk-user';

/** The next verification request the js-sdk user receives. */
export function onRequest(alice: JsSdkUser): Promise<VerificationRequest> {
  return new Promise((resolve) => alice.client.once(CryptoEvent.VerificationRequestReceived, resolve));
}

/** Wait until the js-sdk request is in phase `p`. */
export async function phase(request: VerificationRequest, p: VerificationPhase): Promise<void> {
  await waitFor(`js-sdk request phase ${VerificationPhase[p]}`, () => (request.phase === p ? true : undefined));
}

/** The js-sdk side's SAS, once its verifier shows one. */
export function sasShown(request: VerificationRequest): Promise<ShowSasCallbacks> {
  return waitFor('js-sdk to show the SAS', () => request.verifier?.getShowSasCallbacks() ?? undefined);
}

/** A js-sdk promise that must settle within the usual wait. */
export function within<T>(what: string, p: Promise<T>): Promise<T> {
  return Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), 20_000).unref())]);
}

/** The bot's report of flow `flowId` in phase `p`, once it has made one. */
export function flow(seen: VerificationInfo[], flowId: string, p: VerificationInfo['phase']): Promise<VerificationInfo> {
  return waitFor(`bot flow ${flowId} in phase ${p}`, () => seen.find((v) => v.flowId === flowId && v.phase === p));
}

/**
 * A flow the bot requested and the js-sdk user received: the user accepts, the bot starts SAS,
 * the user confirms (the bot confirms by its policy) and the bot reports the flow done. Returns
 * the SAS the user was shown.
 */
export async function acceptBotSas(
  request: VerificationRequest,
  bot: { startSas(userId: string, flowId: string): Promise<unknown> },
  seen: VerificationInfo[],
  userId: string,
  flowId: string,
): Promise<ShowSasCallbacks> {
  await request.accept();
  await flow(seen, flowId, 'ready');
  await bot.startSas(userId, flowId);
  await waitFor('js-sdk verifier', () => request.verifier ?? undefined);
  const done = request.verifier!.verify();
  const sas = await sasShown(request);
  await within('js-sdk to send its MAC', sas.confirm());
  await within('js-sdk to finish', done);
  await flow(seen, flowId, 'done');
  return sas;
}
