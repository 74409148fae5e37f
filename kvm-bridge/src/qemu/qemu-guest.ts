// SPDX-License-Identifier: Apache-2.0
/**
 * A running QEMU VM as the guest of the emulated KVMI kernel side (docs/qemu-backend.md): it
 * implements the kernel's GuestPort over QEMU's gdbstub and QMP, and plays the vCPU threads'
 * part in the exit handler (PAUSE_VCPU on a kick, SINGLESTEP after each stepped instruction,
 * BREAKPOINT when a tool's INT3 is hit).
 *
 * The gdbstub is all-stop: an access stops every vCPU (`acquire`), and the VM runs again when the
 * last holder lets go (`release`, deferred by one turn so that a burst of commands shares one stop).
 * Events hold the VM stopped until their reply, as a vCPU waiting in KVMI holds its own thread.
 */
import { KvmiProtocolError } from "../errors.js";
import type { VcpuExitHandler } from "../emulator/guest/exits.js";
import type { Vcpu } from "../emulator/guest/vcpu.js";
import type { CpuidLeaf, GuestPort, KvmRegs, KvmSregs, VcpuPort } from "../emulator/kernel/guest-port.js";
import type { Logger } from "../logger.js";
import { silentLogger } from "../logger.js";
import { GdbPoint, type GdbClient, type StopReply } from "./gdb-client.js";
import type { QmpClient } from "./qmp-client.js";
import { cpuidLeaf, type CpuidTable } from "./qemu-cpuid.js";
import { xsaveOf } from "./qemu-xsave.js";
import { kernelAliases, PageWatches } from "./page-watch.js";
import { kvmRegsOf, kvmSregsOf, modeOf, parseInfoRegisters } from "./qemu-registers.js";

const INT3 = 0xcc;
const MSR_EFER = 0xc0000080;
const MSR_FS_BASE = 0xc0000100;
const MSR_GS_BASE = 0xc0000101;
const MSR_KERNEL_GS_BASE = 0xc0000102;

interface Snapshot {
  regs: KvmRegs;
  sregs: KvmSregs;
  kernelGsBase: bigint;
  /** The legacy XSAVE region and header from the stub's x87/SSE registers (qemu-xsave.ts). */
  xsave: Uint8Array | undefined;
}

/** One tool-written INT3: the byte the guest really has, and where the gdbstub breakpoints sit. */
interface SoftBreakpoint {
  readonly original: number;
  readonly gvas: bigint[];
}

export interface QemuGuestOptions {
  readonly logger?: Logger;
}

export class QemuGuest implements GuestPort {
  readonly vcpus: QemuVcpuPort[];
  /** Set by the backend once the kernel side exists. */
  exitHandler: VcpuExitHandler | undefined;
  /** Each vCPU's CPUID leaves as QEMU reports them (qemu-cpuid.ts), set by the backend; none: ENOENT. */
  cpuidTables: readonly CpuidTable[] = [];
  /** True while the device manager has stopped the VM (KVM_RUN not entered): jobs wait. */
  managerStopped = false;
  private holds = 0;
  private transition: Promise<void> = Promise.resolve();
  private resumeTimer: NodeJS.Immediate | undefined;
  private readonly breakpoints = new Map<bigint, SoftBreakpoint>();
  /** Page-access restrictions as watchpoints (page-watch.ts). */
  private readonly pageWatches: PageWatches;
  private readonly log: Logger;

  constructor(
    readonly gdb: GdbClient,
    readonly qmp: QmpClient,
    private readonly ram: ReadonlyArray<{ start: bigint; end: bigint }>,
    options: QemuGuestOptions = {},
  ) {
    this.log = options.logger ?? silentLogger;
    this.vcpus = gdb.threads.map((_, index) => new QemuVcpuPort(this, index));
    this.pageWatches = new PageWatches(gdb, qmp);
    gdb.onUnsolicitedStop((stop) => void this.onStop(stop));
  }

  // ---------------------------------------------------------------------------------------------
  // Stopping and resuming the all-stop gdbstub

  /** Stops the VM (if it runs) and keeps it stopped until the matching release(). */
  async acquire(): Promise<void> {
    this.holds++;
    if (this.resumeTimer) clearImmediate(this.resumeTimer);
    this.resumeTimer = undefined;
    const step = this.transition.then(async () => {
      if (this.gdb.state === "running") await this.gdb.interrupt();
    });
    this.transition = step.catch(() => undefined);
    await step;
  }

  release(): void {
    if (--this.holds > 0) return;
    this.resumeTimer = setImmediate(() => {
      this.resumeTimer = undefined;
      // Checked again inside the chain: a holder that came meanwhile keeps the VM stopped.
      this.transition = this.transition
        .then(() => (this.holds > 0 || this.managerStopped || this.gdb.closed ? undefined : this.gdb.resume()))
        .catch(() => undefined);
    });
  }

  async withStopped<T>(work: () => Promise<T>): Promise<T> {
    await this.acquire();
    try {
      return await work();
    } finally {
      this.release();
    }
  }

  /** Lets the VM run from the start (QEMU paused it when the gdbstub connected). */
  start(): void {
    if (this.holds === 0 && !this.managerStopped) this.transition = this.transition.then(() => this.gdb.resume()).catch(() => undefined);
  }

  // ---------------------------------------------------------------------------------------------
  // GuestPort: memory

  private isRam(gpa: bigint, size: number): boolean {
    return this.ram.some((range) => gpa >= range.start && gpa + BigInt(size) <= range.end);
  }

  readPhysical(gpa: bigint, size: number): Uint8Array | undefined | Promise<Uint8Array | undefined> {
    if (!this.isRam(gpa, size)) return undefined;
    return this.withStopped(async () => {
      const bytes = await this.gdb.readMemory(gpa, size);
      // Reads show what the tool wrote: its INT3s are gdbstub breakpoints, not guest bytes.
      for (const address of this.breakpoints.keys()) if (address >= gpa && address < gpa + BigInt(size)) bytes[Number(address - gpa)] = INT3;
      return bytes;
    });
  }

  writePhysical(gpa: bigint, data: Uint8Array): boolean | Promise<boolean> {
    if (!this.isRam(gpa, data.length)) return false;
    return this.withStopped(async () => {
      const rest: Array<{ at: number; bytes: Uint8Array }> = [];
      let runStart = 0;
      for (let i = 0; i <= data.length; i++) {
        const gpaHere = gpa + BigInt(i);
        const special = i < data.length && (data[i] === INT3 || this.breakpoints.has(gpaHere));
        if (i === data.length || special) {
          if (i > runStart) rest.push({ at: runStart, bytes: data.subarray(runStart, i) });
          runStart = i + 1;
        }
        if (i < data.length && special) await this.writeBreakpointByte(gpaHere, data[i]!);
      }
      for (const piece of rest) await this.gdb.writeMemory(gpa + BigInt(piece.at), piece.bytes);
      return true;
    });
  }

  /**
   * KVMI's breakpoint contract over gdbstub breakpoints: writing 0xCC arms one at every kernel GVA
   * that maps the GPA (invisible to the guest); writing any other byte over a tracked INT3 disarms
   * it and stores the byte.
   */
  private async writeBreakpointByte(gpa: bigint, value: number): Promise<void> {
    const existing = this.breakpoints.get(gpa);
    if (value === INT3) {
      if (existing) return;
      const original = (await this.gdb.readMemory(gpa, 1))[0]!;
      const gvas = await kernelAliases(this.qmp, gpa);
      for (const gva of gvas) await this.gdb.insertPoint(GdbPoint.Software, gva);
      if (gvas.length === 0) {
        // No kernel mapping found: the INT3 goes into guest memory, as KVM would leave it.
        await this.gdb.writeMemory(gpa, Uint8Array.of(INT3));
        return;
      }
      this.breakpoints.set(gpa, { original, gvas });
      return;
    }
    if (existing) {
      for (const gva of existing.gvas) await this.gdb.removePoint(GdbPoint.Software, gva);
      this.breakpoints.delete(gpa);
    }
    await this.gdb.writeMemory(gpa, Uint8Array.of(value));
  }

  maxGfn(): bigint {
    return this.ram.reduce((max, range) => (range.end > max ? range.end : max), 0n) >> 12n;
  }

  isGfnVisible(gfn: bigint): boolean {
    return this.isRam(gfn << 12n, 4096);
  }

  /** A restriction becomes watchpoints over the page's kernel mappings (page-watch.ts says what holds). */
  setPageAccess(gfn: bigint, access: number): Promise<number> {
    return this.withStopped(() => this.pageWatches.set(gfn, access));
  }

  clearPageAccess(): void {
    if (this.pageWatches.size > 0) void this.withStopped(() => this.pageWatches.clear()).catch(() => undefined);
  }

  pageAccess(gfn: bigint): number {
    return this.pageWatches.access(gfn);
  }

  crash(reason: string): void {
    this.log.warn({ reason }, "KVMI asked to crash the VM: quitting QEMU");
    void this.qmp.quit();
  }

  /** Removes every tool breakpoint and watchpoint (unhook, shutdown). */
  async clearBreakpoints(): Promise<void> {
    if (this.breakpoints.size === 0 && this.pageWatches.size === 0) return;
    await this.withStopped(async () => {
      await this.pageWatches.clear();
      for (const [gpa, bp] of this.breakpoints) {
        for (const gva of bp.gvas) await this.gdb.removePoint(GdbPoint.Software, gva).catch(() => undefined);
        this.breakpoints.delete(gpa);
      }
    });
  }

  // ---------------------------------------------------------------------------------------------
  // vCPU exits

  /** A stop the VM reached while running: one of our breakpoints or watchpoints (else it just resumes). */
  private async onStop(stop: StopReply): Promise<void> {
    const index = this.gdb.vcpuOf(stop);
    await this.acquire();
    try {
      const vcpu = this.vcpus[index]!;
      await vcpu.refresh();
      const rip = vcpu.snapshot!.regs.rip;
      const gpa = [...this.breakpoints].find(([, bp]) => bp.gvas.includes(rip))?.[0];
      const pageHit = this.pageWatches.hitOf(stop);
      if (pageHit && this.exitHandler) {
        // After the access (QEMU stops past the instruction): CONTINUE and RETRY both carry on.
        const action = await this.exitHandler.pageFault(vcpu.asVcpu(), pageHit.gva, pageHit.gpa, pageHit.access);
        if (action === "crash") this.crash("the tool answered a PF event with CRASH");
        await this.runVcpu(vcpu);
      } else if (gpa !== undefined && this.exitHandler) {
        // RETRY re-executes at the same RIP (the tool restored the byte); CONTINUE would re-inject
        // #BP into the guest, which for an INT3 the guest never had means the same as RETRY here.
        await this.exitHandler.breakpoint(vcpu.asVcpu(), gpa, 1);
        await this.runVcpu(vcpu);
      }
    } catch (error) {
      this.log.warn({ err: (error as Error).message }, "handling a gdbstub stop failed");
    } finally {
      this.release();
    }
  }

  /**
   * What a vCPU thread does between exits while the VM is held: entry work (queued PAUSE_VCPU
   * events), then single steps with a SINGLESTEP event each, for as long as the tool keeps stepping.
   */
  async runVcpu(vcpu: QemuVcpuPort): Promise<void> {
    const handler = this.exitHandler;
    if (!handler) return;
    await handler.onEntry(vcpu.asVcpu());
    while (vcpu.stepping && !this.gdb.closed) {
      const stop = await this.gdb.step(vcpu.index);
      vcpu.invalidate();
      await handler.singleStep(vcpu.asVcpu(), stop.kind !== "signal");
      await handler.onEntry(vcpu.asVcpu());
    }
  }

  /** A vCPU was kicked (KVMI_VCPU_PAUSE, or a job waiting): run its entry work with the VM held. */
  async kickVcpu(vcpu: QemuVcpuPort): Promise<void> {
    await this.withStopped(() => this.runVcpu(vcpu));
  }
}

/** One vCPU of the QEMU guest: registers from a snapshot refreshed before jobs and events. */
export class QemuVcpuPort implements VcpuPort {
  readonly initialized = true;
  snapshot: Snapshot | undefined;
  stepping = false;
  private readonly resumeListeners = new Set<() => void>();
  private kickPending = false;
  private readonly vcpuView: Vcpu;

  constructor(private readonly guest: QemuGuest, readonly index: number) {
    this.vcpuView = { index } as unknown as Vcpu;
  }

  /** The exit handler only reads `index` of the vCPU it is given. */
  asVcpu(): Vcpu {
    return this.vcpuView;
  }

  get running(): boolean {
    return !this.guest.managerStopped && !this.guest.gdb.closed;
  }

  invalidate(): void {
    this.snapshot = undefined;
  }

  async refresh(): Promise<void> {
    await this.guest.withStopped(async () => {
      const [gdbRegs, info] = await Promise.all([this.guest.gdb.readRegisters(this.index), this.guest.qmp.hmp("info registers", this.index)]);
      const sregs = kvmSregsOf(gdbRegs, parseInfoRegisters(info));
      this.snapshot = { regs: kvmRegsOf(gdbRegs), sregs, kernelGsBase: gdbRegs.get("k_gs_base") ?? 0n, xsave: xsaveOf(gdbRegs) };
    });
  }

  private state(): Snapshot {
    if (!this.snapshot) throw new KvmiProtocolError(`vCPU ${this.index}: registers read before refresh()`);
    return this.snapshot;
  }

  getRegs(): KvmRegs {
    return { ...this.state().regs };
  }

  setRegs(regs: KvmRegs): void {
    const before = this.state().regs;
    this.snapshot!.regs = regs;
    const names: Array<[keyof KvmRegs, string]> = [
      ["rax", "rax"], ["rbx", "rbx"], ["rcx", "rcx"], ["rdx", "rdx"], ["rsi", "rsi"], ["rdi", "rdi"], ["rsp", "rsp"], ["rbp", "rbp"],
      ["r8", "r8"], ["r9", "r9"], ["r10", "r10"], ["r11", "r11"], ["r12", "r12"], ["r13", "r13"], ["r14", "r14"], ["r15", "r15"],
      ["rip", "rip"], ["rflags", "eflags"],
    ];
    // Called while the vCPU waits for an event reply, so the VM is held: the writes land before it runs.
    for (const [field, name] of names) {
      if (regs[field] !== before[field]) void this.guest.gdb.writeRegister(this.index, name, regs[field] as bigint).catch(() => undefined);
    }
  }

  getSregs(): KvmSregs {
    return this.state().sregs;
  }

  mode(): number {
    return modeOf(this.state().sregs);
  }

  readMsr(index: number): bigint | undefined {
    const s = this.state();
    switch (index) {
      case MSR_EFER: return s.sregs.efer;
      case MSR_FS_BASE: return s.sregs.fs.base;
      case MSR_GS_BASE: return s.sregs.gs.base;
      case MSR_KERNEL_GS_BASE: return s.kernelGsBase;
      default: return undefined;
    }
  }

  cpuid(fn: number): CpuidLeaf | undefined {
    const table = this.guest.cpuidTables[this.index];
    return table && cpuidLeaf(table, fn, this.snapshot?.sregs.cr4 ?? 0n);
  }

  xcr0(): bigint {
    return 0n;
  }

  getXsave(): Uint8Array {
    return this.state().xsave ?? new Uint8Array(4096);
  }

  setXsave(): boolean {
    return false;
  }

  mtrrType(): number {
    return 6; // write-back: QEMU's TCG and KVM guests see RAM as WB
  }

  tscHz(): bigint {
    return 0n;
  }

  translate(gva: bigint): Promise<bigint | undefined> {
    return this.guest.qmp.gva2gpa(this.index, gva);
  }

  queueException(): void {}

  pendingException(): undefined {
    return undefined;
  }

  setSinglestep(enabled: boolean): void {
    this.stepping = enabled;
  }

  kick(): void {
    if (this.kickPending) return;
    this.kickPending = true;
    setImmediate(() => {
      this.kickPending = false;
      void this.guest.kickVcpu(this).catch(() => undefined);
    });
  }

  onResume(listener: () => void): () => void {
    this.resumeListeners.add(listener);
    return () => this.resumeListeners.delete(listener);
  }

  notifyResume(): void {
    for (const listener of this.resumeListeners) listener();
  }
}
