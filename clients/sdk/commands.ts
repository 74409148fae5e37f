// SPDX-License-Identifier: Apache-2.0
/**
 * Typed methods for every KVMI v9 command (kvmi-abi §4; one per RPC of
 * `kvmi.v1.IntrospectionService`), plus memory helpers of any length. The same methods run over two
 * transports: unary RPCs ({@link VmHandle}) and the session stream ({@link Session}); this file
 * builds requests and reads responses, the transport carries them.
 *
 * The public types are in `command-types.ts`, the retry/transport path in `dispatch.ts`, the memory
 * helpers of any length in `memory-io.ts`.
 *
 * Values the wire holds as u64 (addresses, registers, MSR values, GFNs, TSC) are `bigint`.
 *
 * @see ../../proto/kvmi/v1/command.proto
 */
import { create } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { AddressSpace, MemoryRangeSchema, PageAccessEntrySchema, RegsSchema } from "@kvmi/proto";
import type { Command, MemoryRange, MsrEntry } from "@kvmi/proto";
import type { CallOptions } from "./channel.js";
import type {
  CpuidLeaf,
  ExceptionInput,
  GetRegistersOptions,
  MemoryRangeInput,
  MemoryRangeResultInfo,
  MtrrTypeInfo,
  PageAccessInput,
  PauseVcpuOptions,
  RegistersSnapshot,
  TranslationTarget,
  VersionInfo,
  VmCommands,
  X86Regs,
} from "./command-types.js";
import { dispatch } from "./dispatch.js";
import type { Transport } from "./dispatch.js";
import { createError, fromStatus, StatusCode } from "./errors.js";
import { holesOf } from "./memory.js";
import { readMemory, translateVia, writePhysicalPages, writeVirtualPages } from "./memory-io.js";
import { eventTypeOf, vcpuName, vmName } from "./names.js";
import type { EventName, VcpuEventName } from "./names.js";
import type { RetryPolicy } from "./retry.js";
import type { ResponseOf, ServiceMethods, UnaryMethodName } from "./rpc-methods.js";

const UNMAPPED_GPA = (1n << 64n) - 1n;

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
  // Memory of any length (memory-io.ts), over the methods above so that a subclass's overrides apply

  readPhysical(gpa: bigint, length: number, options?: CallOptions): Promise<Uint8Array> {
    return readMemory(this, undefined, gpa, length, options);
  }

  readVirtual(via: TranslationTarget, gva: bigint, length: number, options?: CallOptions): Promise<Uint8Array> {
    return readMemory(this, via, gva, length, options);
  }

  writePhysical(gpa: bigint, data: Uint8Array, options?: CallOptions): Promise<void> {
    return writePhysicalPages(this, gpa, data, options);
  }

  writeVirtual(via: TranslationTarget, gva: bigint, data: Uint8Array, options?: CallOptions): Promise<void> {
    return writeVirtualPages(this, via, gva, data, options);
  }

  translate(via: TranslationTarget, gva: bigint, options?: CallOptions): Promise<bigint | undefined> {
    return translateVia(this, via, gva, options);
  }
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

