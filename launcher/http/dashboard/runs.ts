/**
 * A capability call started from a dashboard form: answered with its result when it needs no
 * approval, else at once with "waiting", the call going on in the background and kept (bounded) for
 * the result page the form's answer polls. Shared by the device page and the VMs page.
 */
import type { ApprovalHook, InvokeResult } from '../../../capabilities/invoke.js';

/** Runs kept for their result pages, oldest dropped first. */
export const RUNS_KEPT = 200;

export interface DashboardRun {
  actor: string;
  device: string;
  promise: Promise<InvokeResult>;
  done?: InvokeResult;
}

export class DashboardRuns {
  private readonly runs = new Map<string, DashboardRun>();

  get(id: string): DashboardRun | undefined {
    return this.runs.get(id);
  }

  /**
   * Starts `invoke` with `hook` as its approval hook: resolves with the result, or with 'waiting' as
   * soon as the call asks for approval (the run is then kept under `id`).
   */
  async start(id: string, who: { actor: string; device: string }, hook: ApprovalHook, invoke: (hook: ApprovalHook) => Promise<InvokeResult>): Promise<InvokeResult | 'waiting'> {
    let asked!: () => void;
    const asking = new Promise<'waiting'>((resolve) => { asked = () => resolve('waiting'); });
    const promise = invoke(async (req) => {
      asked();
      return hook(req);
    });
    const run: DashboardRun = { ...who, promise };
    void promise.then((r) => { run.done = r; }, () => undefined);
    const first = await Promise.race([promise, asking]);
    if (first === 'waiting') {
      this.runs.set(id, run);
      if (this.runs.size > RUNS_KEPT) this.runs.delete(this.runs.keys().next().value!);
    }
    return first;
  }
}
