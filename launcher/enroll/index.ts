/**
 * Enrollment's front door: the step list of each transport (wg.ts, ssh.ts) handed to the engine.
 * The CLI's `add-pc`, `revoke` and the operator room come in here; nothing in this folder imports it.
 */
import type { StepsFor } from './context.js';
import { runEnrollment } from './engine.js';
import { sshSteps } from './ssh.js';
import type { AddPcOptions, EnrollResult, OnEvent } from './types.js';
import { wgSteps } from './wg.js';

/** The step list for a transport. */
export const stepsFor: StepsFor = (via) => (via === 'wg' ? wgSteps() : sshSteps());

/**
 * Enrolls (or resumes, or verifies) a device; progress goes to onEvent. The CLI's `add-pc` and the
 * operator room bot both call this. Never throws: the result carries the exit code (ENROLL_EXIT).
 */
export async function runAddPc(opts: AddPcOptions, onEvent: OnEvent = () => undefined): Promise<EnrollResult> {
  return runEnrollment(opts, stepsFor, onEvent);
}
