// SPDX-License-Identifier: Apache-2.0
/**
 * Architectural state of one vCPU. Register structs use the *kernel* field names (`linux/kvm.h`,
 * kvmi-abi §6) verbatim, so the wire layouts (`kvm_regs`, `kvm_sregs`, `kvmi_event_arch`) can be filled
 * from these objects field by field without a renaming table. u64 fields are `bigint`, every narrower
 * field a `number`, matching the layout codec.
 *
 * Power-on state is 64-bit long mode with paging: CR0.PE|PG, CR4.PAE, EFER.LME|LMA, CS.L = 1, because the
 * guest model starts where a booted Linux kernel would be (no real-mode firmware is emulated).
 */
import { createCpuidTable, type CpuidTable } from "./cpuid.js";
import type { GuestMemory } from "./memory.js";
import { createMsrFile, type MsrFile } from "./msr-file.js";
import { mtrrTypeForGpa } from "./mtrr.js";
import {
  APIC_DEFAULT_PHYS_BASE, EFER_LMA, EFER_LME, EFER_NX, EFER_SCE, MSR_IA32_APICBASE_BSP, MSR_IA32_APICBASE_ENABLE,
  X86_CR0_AM, X86_CR0_ET, X86_CR0_MP, X86_CR0_NE, X86_CR0_PE, X86_CR0_PG, X86_CR0_WP, X86_CR4_MCE, X86_CR4_OSFXSR,
  X86_CR4_OSXMMEXCPT, X86_CR4_OSXSAVE, X86_CR4_PAE, X86_CR4_PGE, X86_EFLAGS_FIXED,
} from "./x86.js";
import { createXsaveState, type XsaveState } from "./xsave.js";

/** `struct kvm_regs` (kvmi-abi §6): general-purpose registers, RIP and RFLAGS. */
export interface KvmRegs {
  rax: bigint; rbx: bigint; rcx: bigint; rdx: bigint; rsi: bigint; rdi: bigint; rsp: bigint; rbp: bigint;
  r8: bigint; r9: bigint; r10: bigint; r11: bigint; r12: bigint; r13: bigint; r14: bigint; r15: bigint;
  rip: bigint; rflags: bigint;
}

/** `struct kvm_segment` (kvmi-abi §6): a segment register including its hidden descriptor cache. */
export interface KvmSegment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

/** `struct kvm_dtable` (kvmi-abi §6): GDTR or IDTR. */
export interface KvmDtable {
  base: bigint;
  limit: number;
}

/** `struct kvm_sregs` (kvmi-abi §6). */
export interface KvmSregs {
  cs: KvmSegment; ds: KvmSegment; es: KvmSegment; fs: KvmSegment; gs: KvmSegment; ss: KvmSegment;
  tr: KvmSegment; ldt: KvmSegment;
  gdt: KvmDtable; idt: KvmDtable;
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint; efer: bigint; apic_base: bigint;
  /** 256 bits of pending external interrupts, as 4 u64 words. */
  interrupt_bitmap: bigint[];
}

/** Operand size of the code being executed, as `kvmi_event_arch.mode` reports it: 2, 4 or 8 bytes. */
export type CpuMode = 2 | 4 | 8;

/** An exception queued for, or delivered to, the guest (field names as in `kvmi_event_trap`). */
export interface GuestException {
  /** Vector (`X86_TRAP_*`). */
  readonly nr: number;
  readonly has_error_code: boolean;
  readonly error_code: number;
  /** CR2 for #PF, otherwise 0. */
  readonly address: bigint;
}

/** The exception that will be delivered at the next guest entry (KVM's `vcpu->arch.exception`). */
export interface PendingException extends GuestException {
  /**
   * Length of the instruction for a software exception (INT3 re-injected after a BREAKPOINT event): the
   * return address the guest sees is RIP + insn_len. 0 for faults, whose return address is RIP itself.
   */
  readonly insn_len: number;
}

/** Full state of one vCPU. The kernel side may read and modify everything here between guest entries. */
export interface VcpuState {
  /** KVMI vCPU index (0-based); also the APIC id. */
  readonly index: number;
  /** General-purpose registers. Assigning copies the fields, so references taken earlier stay live. */
  regs: KvmRegs;
  /** Segment, descriptor-table and control registers. Assigning copies the fields. */
  sregs: KvmSregs;
  readonly msrs: MsrFile;
  readonly cpuid: CpuidTable;
  /** XCR0 and the 4096-byte XSAVE area. */
  readonly xsave: XsaveState;
  /** Time-stamp counter; advances as the vCPU executes. */
  tsc: bigint;
  /** TSC frequency in Hz (KVMI_VCPU_GET_INFO `tsc_speed`). */
  readonly tscHz: bigint;
  /** Architectural exception slot; `null` when nothing is queued. See `Vcpu.queueException`. */
  pendingException: PendingException | null;
  /** Single-step (MTF) enabled: the `singleStep` exit runs after every executed instruction. */
  singlestep: boolean;
  /**
   * `false` while the vCPU is in KVM_MP_STATE_UNINITIALIZED (an AP waiting for INIT/SIPI). The kernel
   * answers vCPU commands with `-KVM_EAGAIN` then (kvmi-abi §2.9).
   */
  initialized: boolean;
  /** 2/4/8 from EFER.LMA, CS.L, CS.D and CR0.PE, exactly as KVMI computes `kvmi_event_arch.mode`. */
  mode(): CpuMode;
  /** MTRR memory type of `gpa` (KVMI_VCPU_GET_MTRR_TYPE). */
  mtrrType(gpa: bigint): number;
  /** Restores power-on state (registers, MSRs, XSAVE, flags). @internal */
  reset(): void;
}

/** Options of {@link createVcpuState}. */
export interface VcpuStateOptions {
  readonly index: number;
  readonly vcpuCount: number;
  readonly memory: GuestMemory;
  /** Default 2.4 GHz. */
  readonly tscHz?: bigint;
  /** Start in KVM_MP_STATE_UNINITIALIZED (APs of a guest whose workload boots them). Default false. */
  readonly startUninitialized?: boolean;
}

const flatSegment = (selector: number, type: number, code: boolean): KvmSegment => ({
  base: 0n, limit: 0xffffffff, selector, type, present: 1, dpl: 0,
  db: code ? 0 : 1, s: 1, l: code ? 1 : 0, g: 1, avl: 0, unusable: 0,
});

function initialRegs(): KvmRegs {
  return {
    rax: 0n, rbx: 0n, rcx: 0n, rdx: 0n, rsi: 0n, rdi: 0n, rsp: 0n, rbp: 0n,
    r8: 0n, r9: 0n, r10: 0n, r11: 0n, r12: 0n, r13: 0n, r14: 0n, r15: 0n,
    rip: 0n, rflags: X86_EFLAGS_FIXED,
  };
}

function initialSregs(index: number): KvmSregs {
  return {
    cs: flatSegment(0x10, 0xb, true), // __KERNEL_CS, execute/read accessed, 64-bit
    ds: flatSegment(0x18, 0x3, false),
    es: flatSegment(0x18, 0x3, false),
    fs: flatSegment(0, 0x3, false),
    gs: flatSegment(0, 0x3, false),
    ss: flatSegment(0x18, 0x3, false), // __KERNEL_DS
    tr: { base: 0n, limit: 0x67, selector: 0x40, type: 0xb, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 },
    ldt: { base: 0n, limit: 0xffff, selector: 0, type: 0x2, present: 0, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 1 },
    gdt: { base: 0n, limit: 0x7f },
    idt: { base: 0n, limit: 0xfff },
    cr0: X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_AM | X86_CR0_PG,
    cr2: 0n,
    cr3: 0n,
    cr4: X86_CR4_PAE | X86_CR4_MCE | X86_CR4_PGE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT | X86_CR4_OSXSAVE,
    cr8: 0n,
    efer: EFER_SCE | EFER_LME | EFER_LMA | EFER_NX,
    apic_base: APIC_DEFAULT_PHYS_BASE | MSR_IA32_APICBASE_ENABLE | (index === 0 ? MSR_IA32_APICBASE_BSP : 0n),
    interrupt_bitmap: [0n, 0n, 0n, 0n],
  };
}

/** Copies `from` into `to` field by field (one level of nesting for segments and tables). */
function assignSregs(to: KvmSregs, from: KvmSregs): void {
  for (const key of ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const) Object.assign(to[key], from[key]);
  Object.assign(to.gdt, from.gdt);
  Object.assign(to.idt, from.idt);
  to.cr0 = from.cr0; to.cr2 = from.cr2; to.cr3 = from.cr3; to.cr4 = from.cr4; to.cr8 = from.cr8;
  to.efer = from.efer; to.apic_base = from.apic_base;
  to.interrupt_bitmap = [...from.interrupt_bitmap];
}

class State implements VcpuState {
  readonly index: number;
  readonly msrs: MsrFile;
  readonly cpuid: CpuidTable;
  readonly xsave: XsaveState;
  readonly tscHz: bigint;
  tsc = 0n;
  pendingException: PendingException | null = null;
  singlestep = false;
  initialized: boolean;
  private readonly regsObj = initialRegs();
  private readonly sregsObj: KvmSregs;

  constructor(private readonly options: VcpuStateOptions) {
    this.index = options.index;
    this.tscHz = options.tscHz ?? 2_400_000_000n;
    this.sregsObj = initialSregs(options.index);
    this.initialized = !(options.startUninitialized ?? false);
    this.msrs = createMsrFile(this);
    this.xsave = createXsaveState();
    this.cpuid = createCpuidTable({
      apicId: options.index,
      vcpuCount: options.vcpuCount,
      cr4: () => this.sregsObj.cr4,
      xcr0: () => this.xsave.xcr0,
    });
  }

  get regs(): KvmRegs {
    return this.regsObj;
  }
  set regs(value: KvmRegs) {
    Object.assign(this.regsObj, value);
  }
  get sregs(): KvmSregs {
    return this.sregsObj;
  }
  set sregs(value: KvmSregs) {
    assignSregs(this.sregsObj, value);
  }

  mode(): CpuMode {
    const { efer, cr0, cs } = this.sregsObj;
    if ((efer & EFER_LMA) !== 0n) return cs.l !== 0 ? 8 : cs.db !== 0 ? 4 : 2;
    if ((cr0 & X86_CR0_PE) !== 0n) return cs.db !== 0 ? 4 : 2;
    return 2;
  }

  mtrrType(gpa: bigint): number {
    return mtrrTypeForGpa(this.options.memory, gpa);
  }

  reset(): void {
    Object.assign(this.regsObj, initialRegs());
    assignSregs(this.sregsObj, initialSregs(this.index));
    this.msrs.reset();
    this.xsave.reset();
    this.tsc = 0n;
    this.pendingException = null;
    this.singlestep = false;
    this.initialized = !(this.options.startUninitialized ?? false);
  }
}

/** Creates a vCPU state at power-on values (64-bit long mode, paging on, CR3 = 0 until the guest sets it). */
export function createVcpuState(options: VcpuStateOptions): VcpuState {
  return new State(options);
}
