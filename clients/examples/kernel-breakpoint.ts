// SPDX-License-Identifier: Apache-2.0
/**
 * An INT3 on a kernel function, the way DRAKVUF places them (used by `trace` and by `cr3-monitor`
 * on a VM without CR events):
 *
 * 1. write INT3 (0xCC) over the function's first byte in guest-physical memory (the kernel image
 *    is shared by every address space), keeping the original byte;
 * 2. on each BREAKPOINT there: let the caller look at the vCPU, then step over: restore the
 *    original byte, single-step the vCPU, reply RETRY;
 * 3. on the SINGLESTEP that follows: put the INT3 back, stop single-stepping, reply CONTINUE;
 * 4. on exit: stop the events and restore the original byte ({@link KernelBreakpoint.disarm}).
 *
 * While one vCPU steps over the entry the INT3 is lifted, so a call that another vCPU makes in that
 * window is missed; production tracers pause the other vCPUs or use EPT views for it.
 */
import { CancelledError, UnavailableError } from "@kvmi/clients";
import type { BreakpointEvent, Session, SessionItem } from "@kvmi/clients";

const INT3 = Uint8Array.of(0xcc);
/** How long the final drain waits for events still on their way. */
const DRAIN_QUIET_MS = 150;

export class KernelBreakpoint {
  private armed = false;
  private readonly stepping = new Set<number>();
  private readonly vcpus: number[];

  private constructor(
    private readonly session: Session,
    readonly gva: bigint,
    readonly gpa: bigint,
    readonly original: Uint8Array,
    private readonly onHit: (event: BreakpointEvent) => Promise<void> | void,
  ) {
    this.vcpus = Array.from({ length: session.vm.vcpuCount }, (_, i) => i);
  }

  /** Finds the function's GPA and its original byte (not armed yet). */
  static async at(session: Session, gva: bigint, onHit: (event: BreakpointEvent) => Promise<void> | void): Promise<KernelBreakpoint> {
    const gpa = await session.translate(0, gva);
    if (gpa === undefined) throw new Error(`0x${gva.toString(16)} is not mapped`);
    return new KernelBreakpoint(session, gva, gpa, await session.readPhysical(gpa, 1), onHit);
  }

  /** Writes the INT3 and enables breakpoint events on every started vCPU. */
  async arm(): Promise<void> {
    await this.session.writePhysical(this.gpa, INT3);
    this.armed = true;
    for (const v of this.vcpus) {
      // KVM_EAGAIN (UnavailableError): the guest has not started this vCPU yet.
      await this.session.controlVcpuEvents(v, "breakpoint", true).catch((err: unknown) => {
        if (!(err instanceof UnavailableError)) throw err;
        process.stderr.write(`vCPU ${v} is not started yet; not traced\n`);
      });
    }
  }

  /** Answers one session item: ours are stepped over, anything else goes on unchanged. */
  async handle(item: SessionItem): Promise<void> {
    if (item.kind !== "event") return;
    const { session } = this;
    if (item.type === "breakpoint" && item.gpa === this.gpa) {
      await this.onHit(item);
      if (!this.armed) return item.retry(); // the original byte is back already: just re-execute it
      if (this.stepping.size === 0) await session.writePhysical(this.gpa, this.original);
      this.stepping.add(item.vcpu);
      await session.controlSingleStep(item.vcpu, true);
      return item.retry();
    }
    if (item.type === "singleStep" && this.stepping.delete(item.vcpu)) {
      await session.controlSingleStep(item.vcpu, false);
      if (this.armed && this.stepping.size === 0) await session.writePhysical(this.gpa, INT3);
      return item.continue();
    }
    // A guest's own INT3, a pause...: CONTINUE re-injects a foreign #BP.
    return item.continue();
  }

  /** Stops the events and puts the original byte back (events already sent still need {@link handle}). */
  async disarm(): Promise<void> {
    const { session } = this;
    if (session.closed) return undefined;
    this.armed = false;
    for (const v of this.vcpus) await session.controlVcpuEvents(v, "breakpoint", false).catch(() => undefined);
    await session.writePhysical(this.gpa, this.original);
    for (const v of this.stepping) await session.controlSingleStep(v, false);
  }
}

/** Answers what is already buffered or still arriving, until the stream is quiet (after a disarm). */
export async function drain(session: Session, handle: (item: SessionItem) => Promise<void>): Promise<void> {
  if (session.closed) return;
  try {
    for (;;) {
      const next = await session.events({ signal: AbortSignal.timeout(DRAIN_QUIET_MS) }).next();
      if (next.done) return;
      await handle(next.value);
    }
  } catch (err) {
    if (!(err instanceof CancelledError)) throw err;
  }
}
