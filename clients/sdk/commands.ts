// SPDX-License-Identifier: Apache-2.0
/**
 * Typed methods for every KVMI v9 command (kvmi-abi §4; one per RPC of
 * `kvmi.v1.IntrospectionService`), plus memory helpers of any length. The same methods run over two
 * transports: unary RPCs ({@link VmHandle}) and the session stream ({@link Session}); this file
 * builds requests and reads responses, the transport carries them.
 *
 * Values the wire holds as u64 (addresses, registers, MSR values, GFNs, TSC) are `bigint`.
 *
 * @see ../../proto/kvmi/v1/command.proto
 */
import { create, getOption } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { AddressSpace, guest_effect, GuestEffect, IntrospectionService, MemoryRangeSchema, PageAccessEntrySchema, RegsSchema } from "@kvmi/proto";
import type { Command, CpuMode, MemoryRange, MsrEntry, MtrrType, Regs, SessionCommand, Sregs } from "@kvmi/proto";
import { createRequest } from "./channel.js";
import type { CallOptions } from "./channel.js";
import { createError, fromStatus, MemoryHoleError, StatusCode } from "./errors.js";
import type { KvmiBridgeError, MemoryHoleInfo } from "./errors.js";
import { hex, holesOf, PAGE_SIZE, splitPages, walkPageTables } from "./memory.js";
import { eventTypeOf, vcpuName, vmName } from "./names.js";
import type { EventName, VcpuEventName } from "./names.js";
import { withRetry } from "./retry.js";
import type { RetryPolicy } from "./retry.js";
import type { RequestOf, ResponseOf, ServiceMethods, UnaryMethodName } from "./rpc-methods.js";

const REPEATABLE_EFFECTS: ReadonlySet<GuestEffect> = new Set([GuestEffect.NONE, GuestEffect.IDEMPOTENT]);

/** The commands a session can run: the KVMI commands plus BatchReadMemory (`SessionCommand.request` cases). */
export type CommandName = Exclude<SessionCommand["request"]["case"], undefined | SessionOnlyCommand>;
/** SessionCommand cases with no unary RPC; the session exposes them as methods of its own (setEventFilter). */
export type SessionOnlyCommand = "setEventFilter";

/**
 * The methods the SDK retries on UNAVAILABLE (AIP-194): those whose `(kvmi.v1.guest_effect)`
 * (proto/kvmi/v1/guest_effect.proto) says a repetition is harmless, reads and idempotent changes,
 * read from the descriptor the bridge reads too. A pause or an exception injection
 * (GUEST_EFFECT_REPEATED) and anything undeclared is never retried automatically.
 */
export const IDEMPOTENT_METHODS: ReadonlySet<UnaryMethodName> = new Set(
  IntrospectionService.methods
    .filter((m) => m.methodKind === "unary" && REPEATABLE_EFFECTS.has(getOption(m, guest_effect)))
    .map((m) => m.localName as UnaryMethodName),
);

/** Carries one request of a method and returns its response. @internal */
export interface Transport<N extends UnaryMethodName = UnaryMethodName> {
  /** One attempt; rejects with any error (normalized by {@link dispatch}). */
  run<M extends N>(name: M, request: RequestOf<M>, options: CallOptions): Promise<ResponseOf<M>>;
  /** False once the transport is gone for good (a closed session). */
  readonly usable: boolean;
}

/**
 * THE one path of every non-streaming call of the SDK: builds the request and runs it with the
 * retry policy (idempotent methods on UNAVAILABLE only). @internal
 */
export function dispatch<N extends UnaryMethodName, M extends N>(
  transport: Transport<N>,
  policy: RetryPolicy,
  name: M,
  init: MessageInitShape<ServiceMethods[M]["input"]>,
  options: CallOptions = {},
): Promise<ResponseOf<M>> {
  const request = createRequest(name, init);
  return withRetry(() => transport.run(name, request, options), {
    idempotent: IDEMPOTENT_METHODS.has(name),
    policy,
    signal: options.signal,
    canRetry: () => transport.usable,
  });
}

/** The 18 general purpose registers, `struct kvm_regs`; all are required because the kernel writes every one. */
export type X86Regs = Omit<Regs, "$typeName" | "$unknown">;

/** Result of {@link VmCommands.getVersion} (`struct kvmi_get_version_reply`). */
export interface VersionInfo {
  /** KVMI API version; 1 for v9. */
  readonly version: number;
  /** Whether the host can single-step vCPUs (`features.singlestep`). */
  readonly singlestep: boolean;
  /** Largest message body the kernel accepts, in bytes. */
  readonly maxMsgSize: number;
}

/** Result of {@link VmCommands.getRegisters} (`struct kvmi_vcpu_get_registers_reply`). */
export interface RegistersSnapshot {
  /** The code size the vCPU executes (`CPU_MODE_BITS_64`, …). */
  readonly mode: CpuMode;
  readonly regs: Regs;
  readonly sregs: Sregs;
  /** The requested MSRs by index, in request order. */
  readonly msrs: ReadonlyMap<number, bigint>;
}

/** Result of {@link VmCommands.getCpuid}. */
export interface CpuidLeaf {
  readonly eax: number;
  readonly ebx: number;
  readonly ecx: number;
  readonly edx: number;
}

/** Result of {@link VmCommands.getMtrrType}. */
export interface MtrrTypeInfo {
  /** The memory type; `MTRR_TYPE_UNSPECIFIED` if the kernel value is unknown. */
  readonly type: MtrrType;
  /** The kernel value, 0..255. */
  readonly rawType: number;
}

/** Page access bits of {@link VmCommands.setPageAccess} (`KVMI_PAGE_ACCESS_*`). */
export const PAGE_ACCESS = Object.freeze({ R: 1, W: 2, X: 4, RWX: 7 });

/** One entry of {@link VmCommands.setPageAccess}. */
export interface PageAccessInput {
  /** A guest physical address inside the page. */
  readonly gpa: bigint;
  /** Allowed access bits: R = 1, W = 2, X = 4 ({@link PAGE_ACCESS}); 7 removes the restriction. */
  readonly access: number;
  /** Require the page to be visible to the guest (v9 `visible`); default false. */
  readonly visible?: boolean;
}

/** How a virtual address is translated: with a vCPU's current paging (its index), or by walking the tables at a CR3. */
export type TranslationTarget = number | { readonly cr3: bigint };

/** One range of {@link VmCommands.batchReadMemory}. */
export interface MemoryRangeInput {
  /** Guest physical address, or guest virtual address when `via` is set. */
  readonly address: bigint;
  /** Bytes to read, at least 1. */
  readonly length: number | bigint;
  /** Translate `address` as a virtual address with this vCPU or CR3; physical when absent. */
  readonly via?: TranslationTarget;
}

/** One result of {@link VmCommands.batchReadMemory}. */
export type MemoryRangeResultInfo =
  | { readonly ok: true; readonly data: Uint8Array; readonly holes: readonly MemoryHoleInfo[] }
  | { readonly ok: false; readonly error: KvmiBridgeError; readonly holes: readonly MemoryHoleInfo[] };

/** Options of {@link VmCommands.getRegisters}. */
export interface GetRegistersOptions extends CallOptions {
  /** MSR indexes to read as well (at most 481), e.g. `0xc0000080` (EFER). */
  readonly msrs?: readonly number[];
}

/** Options of {@link VmCommands.pauseVcpu}. */
export interface PauseVcpuOptions extends CallOptions {
  /** Wait for the vCPU to acknowledge the kick before replying (`wait`). */
  readonly wait?: boolean;
}

/** An exception for {@link VmCommands.injectException}. */
export interface ExceptionInput {
  /** Vector 0..255, e.g. 14 for #PF. */
  readonly vector: number;
  /** Error code, used when the vector pushes one. */
  readonly errorCode?: number;
  /** CR2 for #PF. */
  readonly address?: bigint;
}

/** Bytes per BatchReadMemory range the helpers use: under the bridge's 3 MiB batch limit and gRPC's 4 MiB message size. */
const READ_CHUNK_BYTES = 2 * 1024 * 1024;
/**
 * BatchReadMemory calls a long read keeps in flight. A unary response leaves the bridge only once
 * all of its pages are read, so with one call at a time the bridge's reading and the network's
 * sending take turns; with two, one call's pages are read while the other's response travels.
 */
const READ_CALLS_IN_FLIGHT = 2;
const UNMAPPED_GPA = (1n << 64n) - 1n;

/**
 * The KVMI commands of one VM, with typed arguments and results. Methods that change guest state
 * (writes, pauses, event and interception control, registers, page access, single-step) need the
 * controller: run them on a controller {@link Session}, or on a {@link VmHandle} created with the
 * controller's session id. Every method accepts {@link CallOptions} (`signal`, `timeoutMs`) last.
 *
 * @throws KvmiBridgeError subclasses: InvalidArgumentError (bad range, vCPU index), NotFoundError
 *   (unknown VM, unbacked memory), PermissionDeniedError (not allowed, or not the controller),
 *   UnavailableError (VM not hooked, vCPU not started; reads are retried), …
 * @see ../../proto/kvmi/v1/command.proto for each command's errors.
 */
export interface VmCommands {
  /** The VM's UUID. */
  readonly uuid: string;

  /** KVMI_GET_VERSION: the KVMI version and features. */
  getVersion(options?: CallOptions): Promise<VersionInfo>;
  /** KVMI_VM_CHECK_COMMAND: resolves if the command is supported and allowed. @throws NotFoundError, PermissionDeniedError */
  checkCommand(command: Command, options?: CallOptions): Promise<void>;
  /** KVMI_VM_CHECK_EVENT: resolves if the event is supported and allowed. @throws NotFoundError, PermissionDeniedError */
  checkEvent(event: EventName, options?: CallOptions): Promise<void>;
  /** KVMI_VM_GET_INFO: the number of online vCPUs. */
  getVmInfo(options?: CallOptions): Promise<{ readonly vcpuCount: number }>;
  /** KVMI_VM_CONTROL_EVENTS: enables or disables the UNHOOK event (the only VM event). Controller only. */
  controlVmEvents(event: "unhook", enable: boolean, options?: CallOptions): Promise<void>;
  /** KVMI_VM_READ_PHYSICAL: 1..4096 bytes within one page. Use {@link readPhysical} for any length. */
  readPhysicalMemory(gpa: bigint, size: number, options?: CallOptions): Promise<Uint8Array>;
  /** KVMI_VM_WRITE_PHYSICAL: 1..4096 bytes within one page. Controller only. Use {@link writePhysical} for any length. */
  writePhysicalMemory(gpa: bigint, data: Uint8Array, options?: CallOptions): Promise<void>;
  /** KVMI_VM_CONTROL_CLEANUP: whether unhooking restores KVM's interception state. Controller only. */
  controlCleanup(enable: boolean, options?: CallOptions): Promise<void>;
  /** KVMI_VM_GET_MAX_GFN: the first guest frame number past guest memory. */
  getMaxGfn(options?: CallOptions): Promise<bigint>;
  /** KVMI_VM_SET_PAGE_ACCESS: R/W/X access of 1..511 pages (EPT). Controller only. */
  setPageAccess(entries: readonly PageAccessInput[], options?: CallOptions): Promise<void>;
  /** BatchReadMemory: many ranges of any length, physical or virtual; unreadable pages are holes. */
  batchReadMemory(ranges: readonly MemoryRangeInput[], options?: CallOptions): Promise<MemoryRangeResultInfo[]>;

  /** KVMI_VCPU_GET_INFO: the guest TSC frequency in Hz (0 without TSC scaling). */
  getVcpuInfo(vcpu: number, options?: CallOptions): Promise<{ readonly tscSpeed: bigint }>;
  /** KVMI_VCPU_PAUSE: kicks the vCPU; one `pauseVcpu` event follows. Controller only. */
  pauseVcpu(vcpu: number, options?: PauseVcpuOptions): Promise<void>;
  /** KVMI_VCPU_CONTROL_EVENTS: enables or disables a vCPU event. Controller only. */
  controlVcpuEvents(vcpu: number, event: VcpuEventName, enable: boolean, options?: CallOptions): Promise<void>;
  /** KVMI_VCPU_GET_REGISTERS: mode, general and special registers, and the requested MSRs. */
  getRegisters(vcpu: number, options?: GetRegistersOptions): Promise<RegistersSnapshot>;
  /** KVMI_VCPU_SET_REGISTERS: all 18 registers, only while the vCPU waits for an event reply. Controller only. */
  setRegisters(vcpu: number, regs: X86Regs, options?: CallOptions): Promise<void>;
  /** KVMI_VCPU_GET_CPUID: a guest-visible CPUID leaf. @throws NotFoundError for a missing leaf */
  getCpuid(vcpu: number, fn: number, index?: number, options?: CallOptions): Promise<CpuidLeaf>;
  /** KVMI_VCPU_CONTROL_CR: selects CR0, CR3 or CR4 for `cr` events. Controller only. */
  controlCr(vcpu: number, cr: 0 | 3 | 4, enable: boolean, options?: CallOptions): Promise<void>;
  /** KVMI_VCPU_INJECT_EXCEPTION: queues an exception; a `trap` event follows. Controller only. */
  injectException(vcpu: number, exception: ExceptionInput, options?: CallOptions): Promise<void>;
  /** KVMI_VCPU_GET_XCR: XCR0. */
  getXcr(vcpu: number, xcr?: number, options?: CallOptions): Promise<bigint>;
  /** KVMI_VCPU_GET_XSAVE: the raw `struct kvm_xsave`. */
  getXsave(vcpu: number, options?: CallOptions): Promise<Uint8Array>;
  /** KVMI_VCPU_SET_XSAVE: loads an XSAVE area (at most 4096 bytes). Controller only. */
  setXsave(vcpu: number, region: Uint8Array, options?: CallOptions): Promise<void>;
  /** KVMI_VCPU_GET_MTRR_TYPE: the guest memory type of a page. */
  getMtrrType(vcpu: number, gpa: bigint, options?: CallOptions): Promise<MtrrTypeInfo>;
  /** KVMI_VCPU_CONTROL_MSR: selects an MSR for `msr` write events. Controller only. */
  controlMsr(vcpu: number, msr: number, enable: boolean, options?: CallOptions): Promise<void>;
  /** KVMI_VCPU_CONTROL_SINGLESTEP: starts or stops single-stepping. Controller only. @throws UnimplementedError without hardware support */
  controlSingleStep(vcpu: number, enable: boolean, options?: CallOptions): Promise<void>;
  /** KVMI_VCPU_TRANSLATE_GVA: the GPA of a GVA with the vCPU's current paging; `undefined` if unmapped. */
  translateGva(vcpu: number, gva: bigint, options?: CallOptions): Promise<bigint | undefined>;

  /**
   * Reads guest physical memory of any length (BatchReadMemory, in chunks of 2 MiB).
   * @throws MemoryHoleError if part of the range is not backed (its `data` holds the rest).
   */
  readPhysical(gpa: bigint, length: number, options?: CallOptions): Promise<Uint8Array>;
  /**
   * Reads guest virtual memory of any length; each page is translated on its own, with the vCPU's
   * paging (`via` = vCPU index) or by walking the page tables at `via.cr3`.
   * @throws MemoryHoleError if a page is unmapped or not backed (its `data` holds the rest).
   */
  readVirtual(via: TranslationTarget, gva: bigint, length: number, options?: CallOptions): Promise<Uint8Array>;
  /** Writes guest physical memory of any length, page by page. Controller only. */
  writePhysical(gpa: bigint, data: Uint8Array, options?: CallOptions): Promise<void>;
  /**
   * Writes guest virtual memory of any length: translates every page first and writes only if all
   * are mapped. Controller only.
   * @throws MemoryHoleError (nothing written) if a page is unmapped.
   */
  writeVirtual(via: TranslationTarget, gva: bigint, data: Uint8Array, options?: CallOptions): Promise<void>;
  /** Translates a GVA with a vCPU (KVMI_VCPU_TRANSLATE_GVA) or a CR3 (a software page walk); `undefined` if unmapped. */
  translate(via: TranslationTarget, gva: bigint, options?: CallOptions): Promise<bigint | undefined>;
}

/** Implements {@link VmCommands} over a transport. @internal */
export class CommandSurface implements VmCommands {
  constructor(
    readonly uuid: string,
    protected readonly transport: Transport,
    protected readonly policy: RetryPolicy,
  ) {}

  /** `vms/{uuid}`. */
  protected get vmResource(): string {
    return vmName(this.uuid);
  }

  protected vcpu(index: number): string {
    return vcpuName(this.uuid, index);
  }

  protected call<M extends UnaryMethodName>(
    name: M,
    init: MessageInitShape<ServiceMethods[M]["input"]>,
    options?: CallOptions,
  ): Promise<ResponseOf<M>> {
    return dispatch(this.transport, this.policy, name, init, options);
  }

  async getVersion(options?: CallOptions): Promise<VersionInfo> {
    const r = await this.call("getVersion", { vm: this.vmResource }, options);
    return { version: r.version, singlestep: r.features?.singlestep ?? false, maxMsgSize: r.maxMsgSize };
  }

  async checkCommand(command: Command, options?: CallOptions): Promise<void> {
    await this.call("checkCommand", { vm: this.vmResource, command }, options);
  }

  async checkEvent(event: EventName, options?: CallOptions): Promise<void> {
    await this.call("checkEvent", { vm: this.vmResource, event: eventTypeOf(event) }, options);
  }

  async getVmInfo(options?: CallOptions): Promise<{ readonly vcpuCount: number }> {
    const r = await this.call("getVmInfo", { vm: this.vmResource }, options);
    return { vcpuCount: r.vcpuCount };
  }

  async controlVmEvents(event: "unhook", enable: boolean, options?: CallOptions): Promise<void> {
    await this.call("controlVmEvents", { vm: this.vmResource, event: eventTypeOf(event), enable }, options);
  }

  async readPhysicalMemory(gpa: bigint, size: number, options?: CallOptions): Promise<Uint8Array> {
    return (await this.call("readPhysicalMemory", { vm: this.vmResource, gpa, size }, options)).data;
  }

  async writePhysicalMemory(gpa: bigint, data: Uint8Array, options?: CallOptions): Promise<void> {
    await this.call("writePhysicalMemory", { vm: this.vmResource, gpa, data }, options);
  }

  async controlCleanup(enable: boolean, options?: CallOptions): Promise<void> {
    await this.call("controlCleanup", { vm: this.vmResource, enable }, options);
  }

  async getMaxGfn(options?: CallOptions): Promise<bigint> {
    return (await this.call("getMaxGfn", { vm: this.vmResource }, options)).gfn;
  }

  async setPageAccess(entries: readonly PageAccessInput[], options?: CallOptions): Promise<void> {
    const wire = entries.map((e) => create(PageAccessEntrySchema, { gpa: e.gpa, access: e.access, visible: e.visible ?? false }));
    await this.call("setPageAccess", { vm: this.vmResource, entries: wire }, options);
  }

  async batchReadMemory(ranges: readonly MemoryRangeInput[], options?: CallOptions): Promise<MemoryRangeResultInfo[]> {
    const r = await this.call("batchReadMemory", { vm: this.vmResource, ranges: ranges.map(toWireRange) }, options);
    return r.results.map((result) => {
      const holes = holesOf(result.holes);
      if (result.result.case === "data") return { ok: true, data: result.result.value, holes };
      const error =
        result.result.case === "error"
          ? fromStatus(result.result.value)
          : createError({ code: StatusCode.INTERNAL, message: "the bridge returned an empty range result" });
      return { ok: false, error, holes };
    });
  }

  async getVcpuInfo(vcpu: number, options?: CallOptions): Promise<{ readonly tscSpeed: bigint }> {
    return { tscSpeed: (await this.call("getVcpuInfo", { vcpu: this.vcpu(vcpu) }, options)).tscSpeed };
  }

  async pauseVcpu(vcpu: number, options?: PauseVcpuOptions): Promise<void> {
    await this.call("pauseVcpu", { vcpu: this.vcpu(vcpu), wait: options?.wait ?? false }, options);
  }

  async controlVcpuEvents(vcpu: number, event: VcpuEventName, enable: boolean, options?: CallOptions): Promise<void> {
    await this.call("controlVcpuEvents", { vcpu: this.vcpu(vcpu), event: eventTypeOf(event), enable }, options);
  }

  async getRegisters(vcpu: number, options?: GetRegistersOptions): Promise<RegistersSnapshot> {
    const r = await this.call("getRegisters", { vcpu: this.vcpu(vcpu), msrIndices: [...(options?.msrs ?? [])] }, options);
    return {
      mode: r.mode,
      regs: r.regs ?? create(RegsSchema),
      sregs: r.sregs!,
      msrs: new Map(r.msrs.map((m: MsrEntry) => [m.index, m.data])),
    };
  }

  async setRegisters(vcpu: number, regs: X86Regs, options?: CallOptions): Promise<void> {
    await this.call("setRegisters", { vcpu: this.vcpu(vcpu), regs: create(RegsSchema, regs) }, options);
  }

  async getCpuid(vcpu: number, fn: number, index = 0, options?: CallOptions): Promise<CpuidLeaf> {
    const r = await this.call("getCpuid", { vcpu: this.vcpu(vcpu), function: fn, index }, options);
    return { eax: r.eax, ebx: r.ebx, ecx: r.ecx, edx: r.edx };
  }

  async controlCr(vcpu: number, cr: 0 | 3 | 4, enable: boolean, options?: CallOptions): Promise<void> {
    await this.call("controlCr", { vcpu: this.vcpu(vcpu), cr, enable }, options);
  }

  async injectException(vcpu: number, exception: ExceptionInput, options?: CallOptions): Promise<void> {
    await this.call(
      "injectException",
      { vcpu: this.vcpu(vcpu), vector: exception.vector, errorCode: exception.errorCode ?? 0, address: exception.address ?? 0n },
      options,
    );
  }

  async getXcr(vcpu: number, xcr = 0, options?: CallOptions): Promise<bigint> {
    return (await this.call("getXcr", { vcpu: this.vcpu(vcpu), xcr }, options)).value;
  }

  async getXsave(vcpu: number, options?: CallOptions): Promise<Uint8Array> {
    return (await this.call("getXsave", { vcpu: this.vcpu(vcpu) }, options)).region;
  }

  async setXsave(vcpu: number, region: Uint8Array, options?: CallOptions): Promise<void> {
    await this.call("setXsave", { vcpu: this.vcpu(vcpu), region }, options);
  }

  async getMtrrType(vcpu: number, gpa: bigint, options?: CallOptions): Promise<MtrrTypeInfo> {
    const r = await this.call("getMtrrType", { vcpu: this.vcpu(vcpu), gpa }, options);
    return { type: r.type, rawType: r.rawType };
  }

  async controlMsr(vcpu: number, msr: number, enable: boolean, options?: CallOptions): Promise<void> {
    await this.call("controlMsr", { vcpu: this.vcpu(vcpu), msr, enable }, options);
  }

  async controlSingleStep(vcpu: number, enable: boolean, options?: CallOptions): Promise<void> {
    await this.call("controlSingleStep", { vcpu: this.vcpu(vcpu), enable }, options);
  }

  async translateGva(vcpu: number, gva: bigint, options?: CallOptions): Promise<bigint | undefined> {
    const r = await this.call("translateGva", { vcpu: this.vcpu(vcpu), gva }, options);
    return r.mapped && r.gpa !== UNMAPPED_GPA ? r.gpa : undefined;
  }

  // -------------------------------------------------------------------------------------------
  // Memory of any length

  readPhysical(gpa: bigint, length: number, options?: CallOptions): Promise<Uint8Array> {
    return this.readRange(undefined, gpa, length, options);
  }

  readVirtual(via: TranslationTarget, gva: bigint, length: number, options?: CallOptions): Promise<Uint8Array> {
    return this.readRange(via, gva, length, options);
  }

  private async readRange(via: TranslationTarget | undefined, address: bigint, length: number, options?: CallOptions): Promise<Uint8Array> {
    checkLength(length);
    const data = new Uint8Array(length);
    // Holes per chunk, so that they come out in address order whichever call finishes first.
    const holesByChunk: (readonly MemoryHoleInfo[])[] = [];
    let next = 0;
    let failed = false;
    const readChunks = async (): Promise<void> => {
      while (next < length && !failed) {
        const offset = next;
        next += READ_CHUNK_BYTES;
        const size = Math.min(READ_CHUNK_BYTES, length - offset);
        const [result] = await this.batchReadMemory([{ address: address + BigInt(offset), length: size, ...(via !== undefined && { via }) }], options).catch((err: unknown) => {
          failed = true;
          throw err;
        });
        if (!result!.ok) {
          failed = true;
          throw result!.error;
        }
        data.set(result!.data, offset);
        holesByChunk[offset / READ_CHUNK_BYTES] = result!.holes;
      }
    };
    await Promise.all(Array.from({ length: Math.min(READ_CALLS_IN_FLIGHT, Math.ceil(length / READ_CHUNK_BYTES)) }, readChunks));
    const holes = holesByChunk.flat();
    if (holes.length > 0) {
      const space = via === undefined ? "guest physical" : "guest virtual";
      throw new MemoryHoleError(`${space} range ${hex(address)}+${hex(length)} is not fully readable (${describeHoles(holes)})`, holes, data);
    }
    return data;
  }

  async writePhysical(gpa: bigint, data: Uint8Array, options?: CallOptions): Promise<void> {
    for (const piece of splitPages(gpa, data.length)) {
      await this.writePhysicalMemory(piece.address, data.subarray(piece.offset, piece.offset + piece.length), options);
    }
  }

  async writeVirtual(via: TranslationTarget, gva: bigint, data: Uint8Array, options?: CallOptions): Promise<void> {
    const pieces = splitPages(gva, data.length);
    const gpas = await Promise.all(pieces.map((p) => this.translate(via, p.address, options)));
    const holes: MemoryHoleInfo[] = pieces
      .filter((_, i) => gpas[i] === undefined)
      .map((p) => ({ address: p.address, length: BigInt(p.length), reason: "notMapped" }));
    if (holes.length > 0) {
      throw new MemoryHoleError(`guest virtual range ${hex(gva)}+${hex(data.length)} is not fully mapped (${describeHoles(holes)}); nothing was written`, holes);
    }
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i]!;
      await this.writePhysicalMemory(gpas[i]!, data.subarray(p.offset, p.offset + p.length), options);
    }
  }

  async translate(via: TranslationTarget, gva: bigint, options?: CallOptions): Promise<bigint | undefined> {
    if (typeof via === "number") return this.translateGva(via, gva, options);
    return walkPageTables(async (gpa, size) => {
      const [r] = await this.batchReadMemory([{ address: gpa, length: size }], options);
      return r!.ok && r!.holes.length === 0 ? r!.data : undefined;
    }, via.cr3, gva);
  }
}

function checkLength(length: number): void {
  if (!Number.isSafeInteger(length) || length < 0) throw new RangeError(`length must be a non-negative integer, got ${length}`);
}

function describeHoles(holes: readonly MemoryHoleInfo[]): string {
  const shown = holes.slice(0, 3).map((h) => `${hex(h.address)}+${hex(h.length)} ${h.reason}`);
  return holes.length > 3 ? `${shown.join(", ")}, …` : shown.join(", ");
}

function toWireRange(range: MemoryRangeInput): MemoryRange {
  const via = range.via;
  return create(MemoryRangeSchema, {
    address: range.address,
    length: BigInt(range.length),
    space: via === undefined ? AddressSpace.PHYSICAL : AddressSpace.VIRTUAL,
    translation:
      via === undefined ? { case: undefined } : typeof via === "number" ? { case: "vcpu", value: via } : { case: "cr3", value: via.cr3 },
  });
}

export { PAGE_SIZE };
