// SPDX-License-Identifier: Apache-2.0
/**
 * Guest memory as gdb sees it through the gateway: addresses translated page by page with a vCPU
 * (or taken as physical after `monitor phys on`), and the gateway's software breakpoints, INT3
 * bytes in guest physical memory that reads never show and writes never overwrite
 * (decision record 0060).
 *
 * @see ../../../docs/decisions/0060-gdb-breakpoints-through-kvmi.md
 */
import { MemoryHoleError } from "../errors.js";
import { splitPages } from "../memory.js";
import type { Session } from "../session.js";

const INT3 = 0xcc;

interface Breakpoint {
  original: number;
  refs: number;
}

/** Memory and breakpoints of one gateway session. */
export class BreakpointMemory {
  /** Translate and insert breakpoints by guest physical address instead of virtual (`monitor phys on`). */
  physical = false;
  private readonly byGpa = new Map<bigint, Breakpoint>();
  private readonly byAddress = new Map<bigint, bigint>();
  private readonly formerBreakpoints = new Set<bigint>();
  private breakpointEventsOn = false;

  constructor(
    private readonly session: Session,
    private readonly vcpuCount: number,
    private readonly log: (line: string) => void,
  ) {}

  /** True if an INT3 of the gateway is at `gpa`. */
  isBreakpoint(gpa: bigint): boolean {
    return this.byGpa.has(gpa);
  }

  /** True if an INT3 of the gateway is or was at `gpa` (an event for it must be answered RETRY). */
  isOrWasBreakpoint(gpa: bigint): boolean {
    return this.byGpa.has(gpa) || this.formerBreakpoints.has(gpa);
  }

  /** Puts the original byte back under the breakpoint at `gpa` for a step over it. */
  async lift(gpa: bigint): Promise<void> {
    const bp = this.byGpa.get(gpa);
    if (bp !== undefined) await this.session.writePhysical(gpa, Uint8Array.of(bp.original));
  }

  /** Writes the INT3 at `gpa` again after a step, if the breakpoint still exists. */
  async rearm(gpa: bigint): Promise<void> {
    if (this.byGpa.has(gpa)) await this.session.writePhysical(gpa, Uint8Array.of(INT3));
  }

  /** The GPA of `address` for vCPU `v` (virtual mode) or `address` itself (physical mode). */
  private async toGpa(v: number, address: bigint): Promise<bigint | undefined> {
    return this.physical ? address : this.session.translateGva(v, address).catch(() => undefined);
  }

  /**
   * Reads up to `length` bytes at `address`, page by page; stops at the first unmapped or unbacked
   * page. Bytes under the gateway's INT3s read as the original bytes.
   */
  async readMemory(v: number, address: bigint, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    let got = 0;
    for (const piece of splitPages(address, length)) {
      const gpa = await this.toGpa(v, piece.address);
      if (gpa === undefined) break;
      let data: Uint8Array;
      try {
        data = await this.session.readPhysical(gpa, piece.length);
      } catch (err) {
        if (err instanceof MemoryHoleError) break;
        throw err;
      }
      for (const [bpGpa, bp] of this.byGpa) if (bpGpa >= gpa && bpGpa < gpa + BigInt(piece.length)) data[Number(bpGpa - gpa)] = bp.original;
      out.set(data, piece.offset);
      got += piece.length;
    }
    return out.subarray(0, got);
  }

  /**
   * Writes `data` at `address` if every page is mapped (nothing is written otherwise). A byte under
   * a breakpoint becomes the breakpoint's original byte; the INT3 stays.
   * @returns false when a page is unmapped.
   */
  async writeMemory(v: number, address: bigint, data: Uint8Array): Promise<boolean> {
    const pieces = splitPages(address, data.length);
    const gpas = await Promise.all(pieces.map((p) => this.toGpa(v, p.address)));
    if (gpas.some((g) => g === undefined)) return false;
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i]!;
      const gpa = gpas[i]!;
      const bytes = data.slice(p.offset, p.offset + p.length);
      for (const [bpGpa, bp] of this.byGpa) {
        if (bpGpa >= gpa && bpGpa < gpa + BigInt(p.length)) {
          bp.original = bytes[Number(bpGpa - gpa)]!;
          bytes[Number(bpGpa - gpa)] = INT3;
        }
      }
      await this.session.writePhysical(gpa, bytes);
    }
    return true;
  }

  /**
   * Inserts a software breakpoint (Z0). Inserting an address twice is one breakpoint, as in
   * gdbserver (one z0 removes it); two addresses that map to the same GPA share the INT3.
   * @returns false when the address is not mapped
   */
  async insertBreakpoint(v: number, address: bigint): Promise<boolean> {
    if (this.byAddress.has(address)) return true;
    const gpa = await this.toGpa(v, address);
    if (gpa === undefined) return false;
    const existing = this.byGpa.get(gpa);
    if (existing !== undefined) {
      existing.refs++;
      this.byAddress.set(address, gpa);
      return true;
    }
    const original = (await this.session.readPhysical(gpa, 1))[0]!;
    if (!this.breakpointEventsOn) {
      for (let i = 0; i < this.vcpuCount; i++) {
        await this.session.controlVcpuEvents(i, "breakpoint", true).catch((err: Error) => this.log(`BREAKPOINT events of vCPU ${i}: ${err.message}`));
      }
      this.breakpointEventsOn = true;
    }
    await this.session.writePhysical(gpa, Uint8Array.of(INT3));
    this.byGpa.set(gpa, { original, refs: 1 });
    this.byAddress.set(address, gpa);
    this.formerBreakpoints.delete(gpa);
    return true;
  }

  /** Removes a software breakpoint (z0); unknown addresses are fine (gdb may remove twice). */
  async removeBreakpoint(address: bigint): Promise<void> {
    const gpa = this.byAddress.get(address);
    if (gpa === undefined) return;
    this.byAddress.delete(address);
    const bp = this.byGpa.get(gpa)!;
    if (--bp.refs > 0) return;
    this.byGpa.delete(gpa);
    this.formerBreakpoints.add(gpa);
    await this.session.writePhysical(gpa, Uint8Array.of(bp.original));
  }

  /**
   * Removes every breakpoint and disables BREAKPOINT events (detach). `attempt` runs each step and
   * records a failure without stopping the others.
   */
  async removeAll(attempt: (what: string, run: () => Promise<unknown>) => Promise<void>): Promise<void> {
    for (const [gpa, bp] of this.byGpa) {
      this.formerBreakpoints.add(gpa);
      await attempt(`restore the byte at ${gpa.toString(16)}`, () => this.session.writePhysical(gpa, Uint8Array.of(bp.original)));
    }
    this.byGpa.clear();
    this.byAddress.clear();
    if (this.breakpointEventsOn) {
      for (let v = 0; v < this.vcpuCount; v++) await attempt(`disable BREAKPOINT events of vCPU ${v}`, () => this.session.controlVcpuEvents(v, "breakpoint", false));
    }
  }
}
