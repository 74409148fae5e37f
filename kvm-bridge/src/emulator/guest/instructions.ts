// SPDX-License-Identifier: Apache-2.0
/**
 * Semantics of the guest instructions a vCPU can be driven with. Each factory returns an
 * {@link Instruction} that the vCPU thread (`vcpu.ts`) executes, possibly several times: a RETRY reply
 * re-enters the guest and runs `exec` again with a higher `attempt`.
 *
 * RIP rule: an instruction starts at RIP (or at `at`, when given, on the first attempt) and moves RIP
 * past itself when it completes. On a re-execution after RETRY, an instruction whose RIP was moved by
 * the tool is *skipped*, because the guest would now be executing something else; `executeAt` is the
 * exception, since "fetch whatever is at RIP" is its whole point.
 */
import { INT3_OPCODE, MAX_INSN_LEN, instructionLength } from "./decode.js";
import type { Awaitable, OperationOutcome, VcpuExitHandler } from "./exits.js";
import { KVMI_PAGE_ACCESS_R, KVMI_PAGE_ACCESS_W, KVMI_PAGE_ACCESS_X, PAGE_SIZE, type GuestMemory } from "./memory.js";
import { walkPageTables } from "./paging.js";
import { loadCr, readCr } from "./control-registers.js";
import type { CpuidEntry } from "./cpuid.js";
import type { KvmRegs, VcpuState } from "./vcpu-state.js";
import type { Vcpu } from "./vcpu.js";
import {
  EFER_LMA, EFER_NX, KVM_ENOSYS_U64, KVM_HC_XEN_HVM_OP, KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT, U64_MASK,
  X86_CR0_PG, X86_CR0_WP, X86_CR4_OSXSAVE, X86_PF_INSTR, X86_PF_PROT, X86_PF_WRITE, X86_TRAP_BP, X86_TRAP_GP,
  X86_TRAP_PF, X86_TRAP_UD, exceptionHasErrorCode, isCanonical,
} from "./x86.js";

/** Re-enter the guest and run the instruction again. */
export const RETRY: unique symbol = Symbol("retry");
/** The VM crashed or was reset while the instruction was in flight; its promise is already settled. */
export const ABORTED: unique symbol = Symbol("aborted");
/** HLT started: the vCPU stays halted until `haltDeadlineMs`, then runs `exec` again to complete it. */
export const HALTING: unique symbol = Symbol("halting");

export type Step<T> = OperationOutcome<T> | typeof RETRY | typeof ABORTED | typeof HALTING;

/** Names of the exit-handler methods, for diagnostics. */
export type ExitKind = keyof VcpuExitHandler;

/** What an instruction may use of its vCPU. */
export interface ExecContext {
  readonly vcpu: Vcpu;
  readonly state: VcpuState;
  readonly memory: GuestMemory;
  /** Awaits an exit-handler call; ABORTED if the VM crashed or was reset meanwhile, or the handler threw. */
  exit<T>(kind: ExitKind, call: (handler: VcpuExitHandler) => Awaitable<T>): Promise<T | typeof ABORTED>;
  /** Kills the VM (a CRASH reply). */
  crash(reason: string): void;
}

/** One queued guest instruction. */
export interface Instruction<T> {
  readonly kind: string;
  /** Completion counts as an executed instruction (TSC advance, single-step exit). */
  readonly countsAsInstruction: boolean;
  /** Set by HLT: wall-clock time (ms) at which the halt ends. */
  haltDeadlineMs?: number;
  exec(ctx: ExecContext, attempt: number): Promise<Step<T>>;
}

/** Result of `executeAt`. */
export interface ExecuteResult {
  /** RIP of the executed instruction. */
  readonly gva: bigint;
  readonly gpa: bigint;
  readonly insnLen: number;
  readonly bytes: Uint8Array;
}

/** Result of a descriptor-table instruction: the stored table or selector (empty for loads). */
export interface DescriptorResult {
  readonly table?: { readonly base: bigint; readonly limit: number };
  readonly selector?: number;
}

/** Where a memory access goes: through the guest page tables (`gva`) or straight to physical memory. */
export type GuestAddress = { readonly gva: bigint } | { readonly gpa: bigint };

/** SxDT/LxDT and friends. */
export type DescriptorInstruction = "sgdt" | "sidt" | "sldt" | "str" | "lgdt" | "lidt" | "lldt" | "ltr";

type Exception = Extract<OperationOutcome<never>, { status: "exception" }>;

/** Queues a fault (or a software exception with `insnLen` > 0) and reports it as the outcome. */
function raise(ctx: ExecContext, nr: number, errorCode = 0, address = 0n, insnLen = 0): Exception {
  const exception = { nr, has_error_code: exceptionHasErrorCode(nr), error_code: errorCode, address };
  // A second exception while one is pending would become #DF on real hardware; the model keeps the first.
  ctx.state.pendingException ??= { ...exception, insn_len: insnLen };
  return { status: "exception", exception };
}

function done<T>(ctx: ExecContext, startRip: bigint, length: number, value: T): OperationOutcome<T> {
  ctx.state.regs.rip = (startRip + BigInt(length)) & U64_MASK;
  return { status: "done", value };
}

/** Applies `at` on the first attempt; on later attempts reports a RIP moved by the tool as "skipped". */
function enter(ctx: ExecContext, at: bigint | undefined, attempt: number, rip: { start: bigint }): boolean {
  if (attempt === 0) {
    if (at !== undefined) ctx.state.regs.rip = at & U64_MASK;
    rip.start = ctx.state.regs.rip;
    return true;
  }
  return ctx.state.regs.rip === rip.start;
}

const SKIPPED = { status: "skipped" } as const;

/** Resolves a reply action to a step: ABORTED on crash, RETRY on retry, `undefined` to carry on. */
function follow(ctx: ExecContext, action: "continue" | "retry" | "crash" | typeof ABORTED, kind: ExitKind) {
  if (action === ABORTED) return ABORTED;
  if (action === "crash") {
    ctx.crash(`CRASH reply to ${kind}`);
    return ABORTED;
  }
  return action === "retry" ? RETRY : undefined;
}

type Linear = { readonly ok: true; readonly gpa: bigint } | { readonly ok: false; readonly fault: Exception };

/** Linear → physical through the guest page tables, with the guest's own permission checks (#PF/#GP). */
function linearToPhysical(ctx: ExecContext, gva: bigint, access: "r" | "w" | "x"): Linear {
  const s = ctx.state.sregs;
  if ((s.cr0 & X86_CR0_PG) === 0n) return { ok: true, gpa: gva & 0xffffffffn };
  if (!isCanonical(gva)) return { ok: false, fault: raise(ctx, X86_TRAP_GP, 0) };
  const code = (access === "w" ? X86_PF_WRITE : 0) | (access === "x" ? X86_PF_INSTR : 0);
  // Legacy (non-long-mode) paging is not modelled; such a walk fails like a non-present mapping.
  const walk = (s.efer & EFER_LMA) !== 0n ? walkPageTables(ctx.memory, s.cr3, gva) : null;
  if (walk === null) return { ok: false, fault: raise(ctx, X86_TRAP_PF, code, gva) };
  const denied =
    (access === "w" && !walk.writable && (s.cr0 & X86_CR0_WP) !== 0n) ||
    (access === "x" && !walk.executable && (s.efer & EFER_NX) !== 0n);
  if (denied) return { ok: false, fault: raise(ctx, X86_TRAP_PF, code | X86_PF_PROT, gva) };
  return { ok: true, gpa: walk.gpa };
}

/**
 * The EPT side: a restricted GFN (KVMI_VM_SET_PAGE_ACCESS) turns the access into a `pageFault` exit.
 * GFNs without a memslot have no EPT entry to restrict (the access is MMIO).
 */
async function checkPageAccess(
  ctx: ExecContext, gva: bigint | undefined, gpa: bigint, bit: number,
): Promise<typeof RETRY | typeof ABORTED | undefined> {
  const gfn = gpa >> 12n;
  if (!ctx.memory.isMapped(gfn) || (ctx.memory.getPageAccess(gfn) & bit) !== 0) return undefined;
  const action = await ctx.exit("pageFault", (h) => h.pageFault(ctx.vcpu, gva ?? U64_MASK, gpa, bit));
  return follow(ctx, action, "pageFault");
}

/**
 * Fetch and "execute" the instruction at `gva` (then at RIP on re-execution). `regs` are loaded first, on
 * the first attempt only: the register state the guest code arriving there left behind.
 */
export function executeInstruction(gva: bigint, regs?: Partial<KvmRegs>): Instruction<ExecuteResult> {
  return {
    kind: "execute",
    countsAsInstruction: true,
    async exec(ctx, attempt) {
      if (attempt === 0) {
        if (regs !== undefined) Object.assign(ctx.state.regs, regs);
        ctx.state.regs.rip = gva & U64_MASK;
      }
      const rip = ctx.state.regs.rip;
      const t = linearToPhysical(ctx, rip, "x");
      if (!t.ok) return t.fault;
      const blocked = await checkPageAccess(ctx, rip, t.gpa, KVMI_PAGE_ACCESS_X);
      if (blocked !== undefined) return blocked;
      const inPage = PAGE_SIZE - Number(t.gpa & BigInt(PAGE_SIZE - 1));
      const r = ctx.memory.read(t.gpa, Math.min(MAX_INSN_LEN, inPage));
      // Executing from MMIO cannot be emulated; the model reports it as an invalid opcode.
      if (!r.ok) return raise(ctx, X86_TRAP_UD);
      if (r.bytes[0] === INT3_OPCODE) {
        const action = await ctx.exit("breakpoint", (h) => h.breakpoint(ctx.vcpu, t.gpa, 1));
        const step = follow(ctx, action, "breakpoint");
        if (step !== undefined) return step;
        // CONTINUE re-injects #BP; INT3 is a trap, so the guest's handler returns past it.
        return raise(ctx, X86_TRAP_BP, 0, 0n, 1);
      }
      const insnLen = instructionLength(r.bytes);
      return done(ctx, rip, insnLen, { gva: rip, gpa: t.gpa, insnLen, bytes: r.bytes.slice(0, insnLen) });
    },
  };
}

/** MOV to CRn. CR0/CR3/CR4 changes go through the `crWrite` exit first. */
export function writeCrInstruction(cr: number, value: bigint, at?: bigint): Instruction<bigint> {
  const rip = { start: 0n };
  return {
    kind: "writeCr",
    countsAsInstruction: true,
    async exec(ctx, attempt) {
      if (!enter(ctx, at, attempt, rip)) return SKIPPED;
      if (![0, 2, 3, 4, 8].includes(cr)) return raise(ctx, X86_TRAP_UD);
      const old = readCr(ctx.state.sregs, cr);
      let next = value & U64_MASK;
      if ((cr === 0 || cr === 3 || cr === 4) && next !== old) {
        const reply = await ctx.exit("crWrite", (h) => h.crWrite(ctx.vcpu, cr, old, next));
        if (reply === ABORTED || follow(ctx, reply.action, "crWrite") !== undefined) return ABORTED;
        next = reply.value & U64_MASK;
      }
      if (!loadCr(ctx.state, cr, next)) return raise(ctx, X86_TRAP_GP, 0);
      return done(ctx, rip.start, cr === 8 ? 4 : 3, readCr(ctx.state.sregs, cr));
    },
  };
}

/** WRMSR. A value change goes through the `msrWrite` exit first; unknown MSRs and bad values raise #GP. */
export function writeMsrInstruction(msr: number, value: bigint, at?: bigint): Instruction<bigint> {
  const rip = { start: 0n };
  return {
    kind: "writeMsr",
    countsAsInstruction: true,
    async exec(ctx, attempt) {
      if (!enter(ctx, at, attempt, rip)) return SKIPPED;
      const msrs = ctx.state.msrs;
      const old = msrs.read(msr);
      if (old === undefined) return raise(ctx, X86_TRAP_GP, 0);
      let next = value & U64_MASK;
      if (next !== old) {
        const reply = await ctx.exit("msrWrite", (h) => h.msrWrite(ctx.vcpu, msr, old, next));
        if (reply === ABORTED || follow(ctx, reply.action, "msrWrite") !== undefined) return ABORTED;
        next = reply.value & U64_MASK;
      }
      if (!msrs.write(msr, next)) return raise(ctx, X86_TRAP_GP, 0);
      return done(ctx, rip.start, 2, msrs.read(msr) ?? next);
    },
  };
}

/** XSETBV: #UD without CR4.OSXSAVE, #GP for a bad XCR index or value; `xsetbv` exit after a change. */
export function xsetbvInstruction(xcr: number, value: bigint, at?: bigint): Instruction<bigint> {
  const rip = { start: 0n };
  return {
    kind: "xsetbv",
    countsAsInstruction: true,
    async exec(ctx, attempt) {
      if (!enter(ctx, at, attempt, rip)) return SKIPPED;
      if ((ctx.state.sregs.cr4 & X86_CR4_OSXSAVE) === 0n) return raise(ctx, X86_TRAP_UD);
      const old = ctx.state.xsave.xcr0;
      if (xcr !== 0 || !ctx.state.xsave.setXcr0(value)) return raise(ctx, X86_TRAP_GP, 0);
      if (value !== old) {
        const action = await ctx.exit("xsetbv", (h) => h.xsetbv(ctx.vcpu, xcr, old, value));
        if (follow(ctx, action, "xsetbv") !== undefined) return ABORTED;
      }
      return done(ctx, rip.start, 3, value);
    },
  };
}

const DESCRIPTOR_KIND = { sidt: 1, lidt: 1, sgdt: 2, lgdt: 2, sldt: 3, lldt: 3, str: 4, ltr: 4 } as const;

/** SxDT/LxDT/SLDT/LLDT/STR/LTR, preceded by the `descriptor` exit. */
export function descriptorInstruction(
  op: DescriptorInstruction, operand: { base: bigint; limit: number } | number | undefined, at?: bigint,
): Instruction<DescriptorResult> {
  const rip = { start: 0n };
  const write = op.startsWith("l");
  return {
    kind: op,
    countsAsInstruction: true,
    async exec(ctx, attempt) {
      if (!enter(ctx, at, attempt, rip)) return SKIPPED;
      const action = await ctx.exit("descriptor", (h) => h.descriptor(ctx.vcpu, DESCRIPTOR_KIND[op], write));
      const step = follow(ctx, action, "descriptor");
      if (step !== undefined) return step;
      const s = ctx.state.sregs;
      const length = op.endsWith("dt") && op !== "sldt" && op !== "lldt" ? 7 : 3; // 0f 01 /n [rip+disp32] vs 0f 00 /n reg
      let result: DescriptorResult = {};
      if (op === "sgdt" || op === "sidt") {
        const t = op === "sgdt" ? s.gdt : s.idt;
        result = { table: { base: t.base, limit: t.limit } };
      } else if (op === "sldt" || op === "str") {
        result = { selector: op === "sldt" ? s.ldt.selector : s.tr.selector };
      } else if (op === "lgdt" || op === "lidt") {
        const t = operand as { base: bigint; limit: number };
        if (!isCanonical(t.base) || !Number.isInteger(t.limit) || t.limit < 0 || t.limit > 0xffff) {
          return raise(ctx, X86_TRAP_GP, 0);
        }
        Object.assign(op === "lgdt" ? s.gdt : s.idt, { base: t.base, limit: t.limit });
      } else {
        const selector = operand as number;
        if (!Number.isInteger(selector) || selector < 0 || selector > 0xffff || (op === "ltr" && selector < 4)) {
          return raise(ctx, X86_TRAP_GP, 0);
        }
        if (op === "lldt") Object.assign(s.ldt, { selector, present: selector < 4 ? 0 : 1, unusable: selector < 4 ? 1 : 0 });
        else s.tr.selector = selector;
      }
      return done(ctx, rip.start, length, result);
    },
  };
}

/** A data access of `length` bytes (like REP MOVSB), checked page by page against guest paging and EPT. */
export function memoryInstruction(
  address: GuestAddress, length: number, data: Uint8Array | undefined, at?: bigint,
): Instruction<Uint8Array | undefined> {
  const rip = { start: 0n };
  const writing = data !== undefined;
  return {
    kind: writing ? "writeMemory" : "readMemory",
    countsAsInstruction: true,
    async exec(ctx, attempt) {
      if (!enter(ctx, at, attempt, rip)) return SKIPPED;
      const linear = "gva" in address;
      const base = (linear ? address.gva : address.gpa) & U64_MASK;
      const pieces: Array<{ gpa: bigint; offset: number; count: number }> = [];
      for (let offset = 0; offset < length; ) {
        const addr = (base + BigInt(offset)) & U64_MASK;
        const count = Math.min(length - offset, PAGE_SIZE - Number(addr & BigInt(PAGE_SIZE - 1)));
        let gpa = addr;
        if (linear) {
          const t = linearToPhysical(ctx, addr, writing ? "w" : "r");
          if (!t.ok) return t.fault;
          gpa = t.gpa;
        }
        const blocked = await checkPageAccess(ctx, linear ? addr : undefined, gpa, writing ? KVMI_PAGE_ACCESS_W : KVMI_PAGE_ACCESS_R);
        if (blocked !== undefined) return blocked;
        pieces.push({ gpa, offset, count });
        offset += count;
      }
      // Unbacked GPAs behave as MMIO with no device behind it: reads float high, writes vanish.
      const out = writing ? undefined : new Uint8Array(length).fill(0xff);
      for (const p of pieces) {
        if (data !== undefined) {
          ctx.memory.write(p.gpa, data.subarray(p.offset, p.offset + p.count));
        } else {
          const r = ctx.memory.read(p.gpa, p.count);
          if (r.ok) out!.set(r.bytes, p.offset);
        }
      }
      return done(ctx, rip.start, 2, out);
    },
  };
}

/** VMCALL. Only the KVMI agent hypercall reaches the handler; every other one returns -KVM_ENOSYS. */
export function hypercallInstruction(rax: bigint, rdi: bigint, rsi: bigint, at?: bigint): Instruction<bigint> {
  const rip = { start: 0n };
  return {
    kind: "hypercall",
    countsAsInstruction: true,
    async exec(ctx, attempt) {
      const regs = ctx.state.regs;
      if (attempt === 0) Object.assign(regs, { rax: rax & U64_MASK, rdi: rdi & U64_MASK, rsi: rsi & U64_MASK });
      if (!enter(ctx, at, attempt, rip)) return SKIPPED;
      // kvmi_arch_is_agent_hypercall(): RDI/RSI in 64-bit mode, EBX/ECX otherwise.
      const long = ctx.state.mode() === 8;
      const nr = long ? regs.rax : regs.rax & 0xffffffffn;
      const sub1 = long ? regs.rdi : regs.rbx & 0xffffffffn;
      const sub2 = long ? regs.rsi : regs.rcx & 0xffffffffn;
      let result = KVM_ENOSYS_U64;
      if (nr === KVM_HC_XEN_HVM_OP && sub1 === KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT && sub2 === 0n) {
        const reply = await ctx.exit("hypercall", (h) => h.hypercall(ctx.vcpu));
        if (reply === ABORTED || follow(ctx, reply.action, "hypercall") !== undefined) return ABORTED;
        if (reply.consumed) result = 0n;
      }
      regs.rax = result;
      return done(ctx, rip.start, 3, result);
    },
  };
}

/** Length of CPUID (`0f a2`). */
export const CPUID_INSN_LEN = 2;

/**
 * CPUID with EAX = `fn`, ECX = `index`: the `cpuid` exit first (kvmi-v7's CPUID event), then the
 * leaf from the vCPU's table into EAX..EDX (zeros for a leaf the table lacks, where a CPU would
 * repeat its highest basic leaf: no test depends on that). After a RETRY that moved RIP the tool
 * answered in the guest's registers and the instruction is skipped.
 */
export function cpuidInstruction(fn: number, index: number, at?: bigint): Instruction<CpuidEntry> {
  const rip = { start: 0n };
  return {
    kind: "cpuid",
    countsAsInstruction: true,
    async exec(ctx, attempt) {
      const regs = ctx.state.regs;
      if (attempt === 0) Object.assign(regs, { rax: BigInt(fn >>> 0), rcx: BigInt(index >>> 0) });
      if (!enter(ctx, at, attempt, rip)) return SKIPPED;
      // The leaf and sub-leaf come from the registers, which the tool may have changed on a RETRY.
      const leaf = Number(regs.rax & 0xffffffffn);
      const subleaf = Number(regs.rcx & 0xffffffffn);
      const reply = await ctx.exit("cpuid", (h) => h.cpuid(ctx.vcpu, leaf, subleaf, CPUID_INSN_LEN));
      const step = follow(ctx, reply, "cpuid");
      if (step !== undefined) return step;
      const entry = ctx.state.cpuid.get(leaf, subleaf) ?? { eax: 0, ebx: 0, ecx: 0, edx: 0 };
      Object.assign(regs, { rax: BigInt(entry.eax >>> 0), rbx: BigInt(entry.ebx >>> 0), rcx: BigInt(entry.ecx >>> 0), rdx: BigInt(entry.edx >>> 0) });
      return done(ctx, rip.start, CPUID_INSN_LEN, entry);
    },
  };
}

/** HLT for `ms` milliseconds (or until an exception is delivered). Kicks are serviced while halted. */
export function haltInstruction(ms: number, at?: bigint): Instruction<void> {
  const rip = { start: 0n };
  const insn: Instruction<void> = {
    kind: "halt",
    countsAsInstruction: false,
    async exec(ctx, attempt) {
      if (attempt === 0) {
        enter(ctx, at, attempt, rip);
        ctx.state.regs.rip = (rip.start + 1n) & U64_MASK; // HLT resumes at the next instruction
        insn.haltDeadlineMs = Date.now() + Math.max(0, ms);
        return HALTING;
      }
      return { status: "done", value: undefined };
    },
  };
  return insn;
}
