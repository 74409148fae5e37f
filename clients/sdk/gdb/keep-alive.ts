// SPDX-License-Identifier: Apache-2.0
/**
 * Keeps stopped vCPUs stopped past the bridge's event deadline. The bridge answers an event itself
 * once the controller's deadline passes (at most 60 s), which would let a vCPU gdb believes stopped
 * run on. Before that, each held event is swapped for a fresh one at the same place: PAUSE_VCPU is
 * requested first, so the reply re-enters the guest only to stop at once, before any guest
 * instruction (kvmi-abi §3.5: pause requests are served before entry); an INT3 is answered with
 * RETRY, never re-injected. A swap and a gdb request must not interleave (both answer events), so
 * this is also where gdb requests are serialized against swaps. Separate from `GdbTarget` because it
 * runs on its own timer and needs only a few of the target's operations ({@link KeepAliveHost}).
 */
import type { VcpuEvent } from "../events.js";
import type { HeldVcpus } from "./held-vcpus.js";

/** What the keep-alive uses of the target. */
export interface KeepAliveHost {
  readonly holds: HeldVcpus;
  /** False while vCPUs run (nothing is held for long then) or once the target ended. */
  canSwap(): boolean;
  /** PAUSE_VCPU for vCPU `v`, counted as in flight until its event arrives. */
  pauseVcpu(v: number): Promise<void>;
  /** The next event of vCPU `v` that `accept` takes; the target answers the others neutrally. */
  nextEvent(v: number, accept: (event: VcpuEvent) => boolean): Promise<VcpuEvent>;
  /** Stops waiting for an event of vCPU `v` (one {@link nextEvent} asked for). */
  forgetEventWaiter(v: number): void;
  /** Answers `event` so the guest carries on as if nobody watched. */
  answerNeutral(event: VcpuEvent): Promise<void>;
  log(line: string): void;
}

/** How long a keep-alive waits for the fresh PAUSE_VCPU event. */
const REARM_TIMEOUT_MS = 10_000;

/** The keep-alive timer and the lock between swaps and gdb requests. */
export class KeepAlive {
  private readonly timer: NodeJS.Timeout;
  private rearming: Promise<void> | undefined;
  private busy = 0;

  /** Starts the timer; held events are swapped once they are half `deadlineMs` old. */
  constructor(
    private readonly host: KeepAliveHost,
    deadlineMs: number,
  ) {
    this.timer = setInterval(() => this.tick(deadlineMs), Math.max(5, Math.min(1000, deadlineMs / 4)));
    this.timer.unref();
  }

  /** Stops the timer; a swap in progress finishes (see {@link settled}). */
  stop(): void {
    clearInterval(this.timer);
  }

  /** Resolves once no swap is in progress. */
  async settled(): Promise<void> {
    while (this.rearming !== undefined) await this.rearming;
  }

  /** Runs a gdb request once no keep-alive swap is in progress, and keeps the next one from starting meanwhile. */
  async exclusive<T>(work: () => Promise<T>): Promise<T> {
    while (this.rearming !== undefined) await this.rearming;
    this.busy++;
    try {
      return await work();
    } finally {
      this.busy--;
    }
  }

  private tick(deadlineMs: number): void {
    if (!this.host.canSwap() || this.busy > 0 || this.rearming !== undefined) return;
    const due = this.host.holds.heldLongerThan(performance.now(), deadlineMs / 2);
    if (due.length === 0) return;
    this.rearming = (async () => {
      for (const v of due) await this.rearm(v).catch((err: Error) => this.host.log(`keep-alive of vCPU ${v}: ${err.message}`));
    })().finally(() => (this.rearming = undefined));
  }

  private async rearm(v: number): Promise<void> {
    const { holds } = this.host;
    const event = holds.event(v);
    if (event === undefined) return;
    await this.host.pauseVcpu(v);
    const paused = this.host.nextEvent(v, (e) => e.type === "pauseVcpu");
    const atBreakpoint = holds.int3Gpa(v);
    holds.dropEventForSwap(v);
    if (event.type === "breakpoint") await event.retry();
    else await this.host.answerNeutral(event);
    const next = await withTimeout(paused, REARM_TIMEOUT_MS);
    if (next === undefined) {
      // The vCPU did not stop again (the VM is going away): it runs; the next stop pauses it with the others.
      this.host.forgetEventWaiter(v);
      this.host.log(`vCPU ${v} did not stop again within ${REARM_TIMEOUT_MS} ms`);
      return;
    }
    holds.hold(v, next, atBreakpoint);
  }
}

/** `promise`'s value, or `undefined` after `ms`. */
function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)));
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
