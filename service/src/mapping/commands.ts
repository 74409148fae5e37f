// SPDX-License-Identifier: Apache-2.0
/**
 * The 25 v9 KVMI commands <-> their kvmi.v1 request/response messages (kvmi-abi §4, command.proto).
 *
 * One table entry per command: its kernel name, its RPC/session method, the proto schemas, and two
 * pure functions. `toWire` parses the resource name (the caller resolves the VM and checks the vCPU
 * index with `checkVcpuIndex`), makes every argument check the kernel would make, so that a request
 * we already know is wrong never reaches the socket, and shapes the exact request object that
 * `KvmiChannel.command(name, body, vcpu)` takes. `fromWire` turns the channel's reply object into
 * the response init. Pre-check failures are {@link KvmiArgumentError}s naming the proto field
 * (INVALID_ARGUMENT + BadRequest in `status.ts`).
 *
 * Each entry also declares which wire fields it carries (`wireFields`), checked against the layout
 * tables by `coverage.test.ts`.
 *
 * @example
 * const m = COMMAND_MAPPINGS.KVMI_VM_READ_PHYSICAL;
 * const { vm, vcpu, body } = m.toWire(request, limitsOf); // throws KvmiArgumentError
 * const reply = await channelOf(vm).command(m.command, body, vcpu);
 * return create(m.responseSchema, m.fromWire(reply));
 */
import { create } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import { layouts, V9_COMMANDS, v9Ids } from "@kvmi/kvm-bridge/wire";
import type { DialectLimits, V9CommandName, V9CommandReply as CommandReply, V9CommandRequest as CommandRequest } from "@kvmi/kvm-bridge/wire";
import {
  CheckCommandRequestSchema,
  CheckCommandResponseSchema,
  CheckEventRequestSchema,
  CheckEventResponseSchema,
  ControlCleanupRequestSchema,
  ControlCleanupResponseSchema,
  ControlCrRequestSchema,
  ControlCrResponseSchema,
  ControlMsrRequestSchema,
  ControlMsrResponseSchema,
  ControlSingleStepRequestSchema,
  ControlSingleStepResponseSchema,
  ControlVcpuEventsRequestSchema,
  ControlVcpuEventsResponseSchema,
  ControlVmEventsRequestSchema,
  ControlVmEventsResponseSchema,
  FeaturesSchema,
  GetCpuidRequestSchema,
  GetCpuidResponseSchema,
  GetMaxGfnRequestSchema,
  GetMaxGfnResponseSchema,
  GetMtrrTypeRequestSchema,
  GetMtrrTypeResponseSchema,
  GetRegistersRequestSchema,
  GetRegistersResponseSchema,
  GetVcpuInfoRequestSchema,
  GetVcpuInfoResponseSchema,
  GetVersionRequestSchema,
  GetVersionResponseSchema,
  GetVmInfoRequestSchema,
  GetVmInfoResponseSchema,
  GetXcrRequestSchema,
  GetXcrResponseSchema,
  GetXsaveRequestSchema,
  GetXsaveResponseSchema,
  InjectExceptionRequestSchema,
  InjectExceptionResponseSchema,
  PageAccessEntrySchema,
  PauseVcpuRequestSchema,
  PauseVcpuResponseSchema,
  ReadPhysicalMemoryRequestSchema,
  ReadPhysicalMemoryResponseSchema,
  SetPageAccessRequestSchema,
  SetPageAccessResponseSchema,
  SetRegistersRequestSchema,
  SetRegistersResponseSchema,
  SetXsaveRequestSchema,
  SetXsaveResponseSchema,
  TranslateGvaRequestSchema,
  TranslateGvaResponseSchema,
  WritePhysicalMemoryRequestSchema,
  WritePhysicalMemoryResponseSchema,
} from "@kvmi/proto";
import type { EventType } from "@kvmi/proto";
import { commandIdForCheck, cpuModeFromWire, eventIdForCheck, eventSpecFromProto, mtrrTypeFromWire } from "./enums.js";
import { msrEntryToProto, regsToProto, regsToWire, sregsToProto } from "./registers.js";
import { parseVcpuName, parseVmName } from "./resource-names.js";
import { mapFields } from "./wire-coverage.js";
import type { WireFieldMapping } from "./wire-coverage.js";

// ---------------------------------------------------------------------------------------------
// Rules the kernel enforces, checked before the socket. The limits that depend on the dialect
// (sizes that must fit its message size) come from the VM's dialect table (`DialectLimits`), never
// from here; what stays here is x86 and the same in every dialect.

/** Guest page size: READ/WRITE_PHYSICAL must stay within one page (kvmi-abi §4 ids 6, 7). */
export const PAGE_BYTES = 4096;
/** Control registers KVMI_VCPU_CONTROL_CR accepts (kvmi-abi §4 id 15). */
export const CONTROL_CR_REGISTERS: readonly number[] = [0, 3, 4];
/** MSR ranges KVMI_VCPU_CONTROL_MSR accepts, inclusive (kvmi-abi §4 id 22): low and high MSRs. */
export const CONTROL_MSR_RANGES: ReadonlyArray<readonly [number, number]> = [
  [0x0000_0000, 0x0000_1fff],
  [0xc000_0000, 0xc000_1fff],
];
/** Largest page-access value: R | W | X (kvmi-abi §4 id 23). */
export const PAGE_ACCESS_MAX = v9Ids.KVMI_PAGE_ACCESS_R | v9Ids.KVMI_PAGE_ACCESS_W | v9Ids.KVMI_PAGE_ACCESS_X;
/** Largest exception vector (`nr` is a u8). */
const VECTOR_MAX = 0xff;
/** What KVMI_VCPU_TRANSLATE_GVA answers for an unmapped address. */
const UNMAPPED_GPA = (1n << 64n) - 1n;

const hex = (value: number | bigint): string => `0x${value.toString(16)}`;

/**
 * The kernel limits of the VM a request names: its dialect's `limits`. The RPC layer resolves the
 * VM (NOT_FOUND for an unknown one) only when a check needs them.
 */
export type LimitsOf = (vm: string) => DialectLimits;

/**
 * Checks a READ/WRITE_PHYSICAL range: 1..`max` bytes (the dialect's `maxPhysicalBytes`) inside one
 * 4 KiB page.
 * @throws KvmiArgumentError naming `field` (`size` or `data`).
 */
export function checkPhysicalRange(gpa: bigint, size: number, field: string, verb: "read" | "write", max: number): void {
  if (size === 0) throw new KvmiArgumentError(field, `${field} is required: ${verb} 1..${max} bytes`);
  if (size > max) {
    throw new KvmiArgumentError(
      field,
      `${field} of ${size} bytes is above the ${max}-byte limit of one ${verb}` +
        (verb === "read" ? "; use BatchReadMemory for larger ranges" : ""),
    );
  }
  const offset = Number(gpa % BigInt(PAGE_BYTES));
  if (offset + size > PAGE_BYTES) {
    const boundary = gpa - BigInt(offset) + BigInt(PAGE_BYTES);
    throw new KvmiArgumentError(
      field,
      `the range ${hex(gpa)}..${hex(gpa + BigInt(size) - 1n)} crosses the 4 KiB page boundary at ${hex(boundary)}; ` +
        `split it there` + (verb === "read" ? " or use BatchReadMemory" : ""),
    );
  }
}

function checkMsr(msr: number, field: string): void {
  if (CONTROL_MSR_RANGES.some(([lo, hi]) => msr >= lo && msr <= hi)) return;
  throw new KvmiArgumentError(
    field,
    `${field} ${hex(msr)} cannot be intercepted: KVMI accepts MSRs 0x0..0x1fff and 0xc0000000..0xc0001fff`,
  );
}

function vmEvent(type: EventType, field: string): number {
  const spec = eventSpecFromProto(type, field);
  if (spec.scope !== "vm") {
    throw new KvmiArgumentError(field, `${field} ${spec.name} is a vCPU event: enable it with ControlVcpuEvents`);
  }
  return spec.id;
}

function vcpuEvent(type: EventType, field: string): number {
  const spec = eventSpecFromProto(type, field);
  if (spec.scope !== "vcpu") {
    throw new KvmiArgumentError(field, `${field} ${spec.name} is a VM event: enable it with ControlVmEvents`);
  }
  return spec.id;
}

const flag = (value: boolean): number => (value ? 1 : 0);

// ---------------------------------------------------------------------------------------------
// The table

/** What `toWire` produces: the VM to resolve, the vCPU index for vCPU-scoped commands, the body. */
export interface WireCommand<N extends V9CommandName> {
  /** VM UUID parsed from `vm` or `name`; the caller resolves it (NOT_FOUND if unknown). */
  readonly vm: string;
  /** vCPU index for vCPU-scoped commands; the caller checks it against the VM's vCPU count. */
  readonly vcpu?: number;
  /** Exactly the request object `KvmiChannel.command(command, body, vcpu)` takes. */
  readonly body: CommandRequest<N>;
}

/** One v9 command's mapping. */
export interface CommandMapping<
  N extends V9CommandName = V9CommandName,
  Req extends DescMessage = DescMessage,
  Res extends DescMessage = DescMessage,
> {
  /** Kernel name (`KVMI_VM_READ_PHYSICAL`), the key of `V9_COMMANDS`. */
  readonly command: N;
  /** Method local name: the IntrospectionService method and the SessionCommand/CommandResult case. */
  readonly method: string;
  /** `vcpu` when the request names a vCPU (`name`), `vm` when it names a VM (`vm`). */
  readonly scope: "vm" | "vcpu";
  readonly requestSchema: Req;
  readonly responseSchema: Res;
  /**
   * Parses the name, checks the arguments (kernel limits from `limitsOf`, the VM's dialect) and
   * shapes the wire request.
   * @throws KvmiArgumentError (INVALID_ARGUMENT) with the proto field name.
   */
  toWire(request: MessageShape<Req>, limitsOf: LimitsOf): WireCommand<N>;
  /** Turns the reply data into the response init. Never throws for a decodable reply. */
  fromWire(reply: CommandReply<N>): MessageInitShape<Res>;
  /** The wire fields this entry carries (see wire-coverage.ts). */
  readonly wireFields: readonly WireFieldMapping[];
}

type EntryInput<N extends V9CommandName, Req extends DescMessage, Res extends DescMessage> = Omit<
  CommandMapping<N, Req, Res>,
  "scope"
>;

function defineCommand<N extends V9CommandName, Req extends DescMessage, Res extends DescMessage>(
  entry: EntryInput<N, Req, Res>,
): CommandMapping<N, Req, Res> {
  const scope = V9_COMMANDS[entry.command].scope;
  const hdr: WireFieldMapping[] =
    scope === "vcpu" ? [{ wire: `${layouts.kvmiVcpuHdr.name}.vcpu`, proto: `${entry.requestSchema.name}.name` }] : [];
  return Object.freeze({ ...entry, scope, wireFields: Object.freeze([...hdr, ...entry.wireFields]) });
}

const vmOf = (request: { vm: string }): string => parseVmName(request.vm, "vm");

/** Every v9 command by kernel name (kvmi-abi §4), in message-id order. */
export const COMMAND_MAPPINGS = {
  KVMI_GET_VERSION: defineCommand({
    command: "KVMI_GET_VERSION",
    method: "getVersion",
    requestSchema: GetVersionRequestSchema,
    responseSchema: GetVersionResponseSchema,
    toWire: (r) => ({ vm: vmOf(r), body: {} }),
    // v12 reports max_msg_size; for v9 and kvmi-v7, which do not, vm/dialect-translation.ts fills in the
    // dialect table's KVMI_MSG_SIZE.
    fromWire: (w) => ({
      version: w.version,
      features: create(FeaturesSchema, { singlestep: w.features.singlestep !== 0 }),
      maxMsgSize: (w as { max_msg_size?: number }).max_msg_size ?? v9Ids.KVMI_MSG_SIZE,
    }),
    wireFields: [
      ...mapFields(layouts.kvmiGetVersionReply.name, GetVersionResponseSchema.name, { version: "version", features: "features" }),
      ...mapFields(layouts.kvmiFeatures.name, FeaturesSchema.name, { singlestep: "singlestep" }),
    ],
  }),

  KVMI_VM_CHECK_COMMAND: defineCommand({
    command: "KVMI_VM_CHECK_COMMAND",
    method: "checkCommand",
    requestSchema: CheckCommandRequestSchema,
    responseSchema: CheckCommandResponseSchema,
    toWire: (r) => ({ vm: vmOf(r), body: { id: commandIdForCheck(r.command, "command") } }),
    fromWire: () => ({}),
    wireFields: mapFields(layouts.kvmiVmCheckCommand.name, CheckCommandRequestSchema.name, { id: "command" }),
  }),

  KVMI_VM_CHECK_EVENT: defineCommand({
    command: "KVMI_VM_CHECK_EVENT",
    method: "checkEvent",
    requestSchema: CheckEventRequestSchema,
    responseSchema: CheckEventResponseSchema,
    toWire: (r) => ({ vm: vmOf(r), body: { id: eventIdForCheck(r.event, "event") } }),
    fromWire: () => ({}),
    wireFields: mapFields(layouts.kvmiVmCheckEvent.name, CheckEventRequestSchema.name, { id: "event" }),
  }),

  KVMI_VM_GET_INFO: defineCommand({
    command: "KVMI_VM_GET_INFO",
    method: "getVmInfo",
    requestSchema: GetVmInfoRequestSchema,
    responseSchema: GetVmInfoResponseSchema,
    toWire: (r) => ({ vm: vmOf(r), body: {} }),
    fromWire: (w) => ({ vcpuCount: w.vcpu_count }),
    wireFields: mapFields(layouts.kvmiVmGetInfoReply.name, GetVmInfoResponseSchema.name, { vcpu_count: "vcpu_count" }),
  }),

  KVMI_VM_CONTROL_EVENTS: defineCommand({
    command: "KVMI_VM_CONTROL_EVENTS",
    method: "controlVmEvents",
    requestSchema: ControlVmEventsRequestSchema,
    responseSchema: ControlVmEventsResponseSchema,
    toWire: (r) => ({ vm: vmOf(r), body: { event_id: vmEvent(r.event, "event"), enable: flag(r.enable) } }),
    fromWire: () => ({}),
    wireFields: mapFields(layouts.kvmiVmControlEvents.name, ControlVmEventsRequestSchema.name, {
      event_id: "event",
      enable: "enable",
    }),
  }),

  KVMI_VM_READ_PHYSICAL: defineCommand({
    command: "KVMI_VM_READ_PHYSICAL",
    method: "readPhysicalMemory",
    requestSchema: ReadPhysicalMemoryRequestSchema,
    responseSchema: ReadPhysicalMemoryResponseSchema,
    toWire: (r, limitsOf) => {
      const vm = vmOf(r);
      checkPhysicalRange(r.gpa, r.size, "size", "read", limitsOf(vm).maxPhysicalBytes);
      return { vm, body: { gpa: r.gpa, size: r.size } };
    },
    // Copy: the reply view may point into the framer's reusable buffer.
    fromWire: (w) => ({ data: w.data.slice() }),
    wireFields: [
      ...mapFields(layouts.kvmiVmReadPhysical.name, ReadPhysicalMemoryRequestSchema.name, { gpa: "gpa", size: "size" }),
      { wire: "KVMI_VM_READ_PHYSICAL.reply.data", proto: `${ReadPhysicalMemoryResponseSchema.name}.data` },
    ],
  }),

  KVMI_VM_WRITE_PHYSICAL: defineCommand({
    command: "KVMI_VM_WRITE_PHYSICAL",
    method: "writePhysicalMemory",
    requestSchema: WritePhysicalMemoryRequestSchema,
    responseSchema: WritePhysicalMemoryResponseSchema,
    toWire: (r, limitsOf) => {
      const vm = vmOf(r);
      checkPhysicalRange(r.gpa, r.data.length, "data", "write", limitsOf(vm).maxPhysicalBytes);
      return { vm, body: { gpa: r.gpa, data: r.data } };
    },
    fromWire: () => ({}),
    wireFields: mapFields(layouts.kvmiVmWritePhysical.name, WritePhysicalMemoryRequestSchema.name, { gpa: "gpa", data: "data" }),
  }),

  KVMI_VCPU_GET_INFO: defineCommand({
    command: "KVMI_VCPU_GET_INFO",
    method: "getVcpuInfo",
    requestSchema: GetVcpuInfoRequestSchema,
    responseSchema: GetVcpuInfoResponseSchema,
    toWire: (r) => ({ ...parseVcpuName(r.name), body: {} }),
    fromWire: (w) => ({ tscSpeed: w.tsc_speed }),
    wireFields: mapFields(layouts.kvmiVcpuGetInfoReply.name, GetVcpuInfoResponseSchema.name, { tsc_speed: "tsc_speed" }),
  }),

  KVMI_VCPU_PAUSE: defineCommand({
    command: "KVMI_VCPU_PAUSE",
    method: "pauseVcpu",
    requestSchema: PauseVcpuRequestSchema,
    responseSchema: PauseVcpuResponseSchema,
    toWire: (r) => ({ ...parseVcpuName(r.name), body: { wait: flag(r.wait) } }),
    fromWire: () => ({}),
    wireFields: mapFields(layouts.kvmiVcpuPause.name, PauseVcpuRequestSchema.name, { wait: "wait" }),
  }),

  KVMI_VCPU_CONTROL_EVENTS: defineCommand({
    command: "KVMI_VCPU_CONTROL_EVENTS",
    method: "controlVcpuEvents",
    requestSchema: ControlVcpuEventsRequestSchema,
    responseSchema: ControlVcpuEventsResponseSchema,
    toWire: (r) => {
      const target = parseVcpuName(r.name);
      return { ...target, body: { event_id: vcpuEvent(r.event, "event"), enable: flag(r.enable) } };
    },
    fromWire: () => ({}),
    wireFields: mapFields(layouts.kvmiVcpuControlEvents.name, ControlVcpuEventsRequestSchema.name, {
      event_id: "event",
      enable: "enable",
    }),
  }),

  KVMI_VCPU_GET_REGISTERS: defineCommand({
    command: "KVMI_VCPU_GET_REGISTERS",
    method: "getRegisters",
    requestSchema: GetRegistersRequestSchema,
    responseSchema: GetRegistersResponseSchema,
    toWire: (r, limitsOf) => {
      const target = parseVcpuName(r.name);
      const max = limitsOf(target.vm).maxGetRegistersMsrs;
      if (r.msrIndices.length > max) {
        throw new KvmiArgumentError(
          "msr_indices",
          `msr_indices lists ${r.msrIndices.length} MSRs, at most ${max} fit in one reply; split the request`,
        );
      }
      return { ...target, body: { msrs_idx: [...r.msrIndices] } };
    },
    fromWire: (w) => ({
      mode: cpuModeFromWire(w.mode),
      regs: regsToProto(w.regs),
      sregs: sregsToProto(w.sregs),
      msrs: w.entries.map(msrEntryToProto),
    }),
    wireFields: [
      ...mapFields(layouts.kvmiVcpuGetRegisters.name, GetRegistersRequestSchema.name, { msrs_idx: "msr_indices" }),
      ...mapFields(layouts.kvmiVcpuGetRegistersReply.name, GetRegistersResponseSchema.name, {
        mode: "mode",
        regs: "regs",
        sregs: "sregs",
        entries: "msrs",
      }),
    ],
  }),

  KVMI_VCPU_SET_REGISTERS: defineCommand({
    command: "KVMI_VCPU_SET_REGISTERS",
    method: "setRegisters",
    requestSchema: SetRegistersRequestSchema,
    responseSchema: SetRegistersResponseSchema,
    toWire: (r) => {
      const target = parseVcpuName(r.name);
      if (r.regs === undefined) {
        throw new KvmiArgumentError("regs", "regs is required: send all 18 registers (GetRegisters, then change what you need)");
      }
      return { ...target, body: regsToWire(r.regs) };
    },
    fromWire: () => ({}),
    // The request body IS `kvm_regs`; its fields are declared by REGISTER_WIRE_FIELDS.
    wireFields: [],
  }),

  KVMI_VCPU_GET_CPUID: defineCommand({
    command: "KVMI_VCPU_GET_CPUID",
    method: "getCpuid",
    requestSchema: GetCpuidRequestSchema,
    responseSchema: GetCpuidResponseSchema,
    toWire: (r) => ({ ...parseVcpuName(r.name), body: { function: r.function, index: r.index } }),
    fromWire: (w) => ({ eax: w.eax, ebx: w.ebx, ecx: w.ecx, edx: w.edx }),
    wireFields: [
      ...mapFields(layouts.kvmiVcpuGetCpuid.name, GetCpuidRequestSchema.name, { function: "function", index: "index" }),
      ...mapFields(layouts.kvmiVcpuGetCpuidReply.name, GetCpuidResponseSchema.name, { eax: "eax", ebx: "ebx", ecx: "ecx", edx: "edx" }),
    ],
  }),

  KVMI_VM_CONTROL_CLEANUP: defineCommand({
    command: "KVMI_VM_CONTROL_CLEANUP",
    method: "controlCleanup",
    requestSchema: ControlCleanupRequestSchema,
    responseSchema: ControlCleanupResponseSchema,
    toWire: (r) => ({ vm: vmOf(r), body: { enable: flag(r.enable) } }),
    fromWire: () => ({}),
    wireFields: mapFields(layouts.kvmiVmControlCleanup.name, ControlCleanupRequestSchema.name, { enable: "enable" }),
  }),

  KVMI_VCPU_CONTROL_CR: defineCommand({
    command: "KVMI_VCPU_CONTROL_CR",
    method: "controlCr",
    requestSchema: ControlCrRequestSchema,
    responseSchema: ControlCrResponseSchema,
    toWire: (r) => {
      const target = parseVcpuName(r.name);
      if (!CONTROL_CR_REGISTERS.includes(r.cr)) {
        throw new KvmiArgumentError("cr", `cr ${r.cr} cannot be intercepted: KVMI accepts CR0, CR3 and CR4 (cr 0, 3 or 4)`);
      }
      return { ...target, body: { cr: r.cr, enable: flag(r.enable) } };
    },
    fromWire: () => ({}),
    wireFields: mapFields(layouts.kvmiVcpuControlCr.name, ControlCrRequestSchema.name, { cr: "cr", enable: "enable" }),
  }),

  KVMI_VCPU_INJECT_EXCEPTION: defineCommand({
    command: "KVMI_VCPU_INJECT_EXCEPTION",
    method: "injectException",
    requestSchema: InjectExceptionRequestSchema,
    responseSchema: InjectExceptionResponseSchema,
    toWire: (r) => {
      const target = parseVcpuName(r.name);
      if (r.vector > VECTOR_MAX) {
        throw new KvmiArgumentError("vector", `vector ${r.vector} is not an x86 exception vector (0..${VECTOR_MAX})`);
      }
      return { ...target, body: { nr: r.vector, error_code: r.errorCode, address: r.address } };
    },
    fromWire: () => ({}),
    wireFields: mapFields(layouts.kvmiVcpuInjectException.name, InjectExceptionRequestSchema.name, {
      nr: "vector",
      error_code: "error_code",
      address: "address",
    }),
  }),

  KVMI_VM_GET_MAX_GFN: defineCommand({
    command: "KVMI_VM_GET_MAX_GFN",
    method: "getMaxGfn",
    requestSchema: GetMaxGfnRequestSchema,
    responseSchema: GetMaxGfnResponseSchema,
    toWire: (r) => ({ vm: vmOf(r), body: {} }),
    fromWire: (w) => ({ gfn: w.gfn }),
    wireFields: mapFields(layouts.kvmiVmGetMaxGfnReply.name, GetMaxGfnResponseSchema.name, { gfn: "gfn" }),
  }),

  KVMI_VCPU_GET_XCR: defineCommand({
    command: "KVMI_VCPU_GET_XCR",
    method: "getXcr",
    requestSchema: GetXcrRequestSchema,
    responseSchema: GetXcrResponseSchema,
    toWire: (r) => {
      const target = parseVcpuName(r.name);
      if (r.xcr !== 0) throw new KvmiArgumentError("xcr", `xcr ${r.xcr} cannot be read: KVMI reads only XCR0 (xcr 0)`);
      return { ...target, body: { xcr: r.xcr } };
    },
    fromWire: (w) => ({ value: w.value }),
    wireFields: [
      ...mapFields(layouts.kvmiVcpuGetXcr.name, GetXcrRequestSchema.name, { xcr: "xcr" }),
      ...mapFields(layouts.kvmiVcpuGetXcrReply.name, GetXcrResponseSchema.name, { value: "value" }),
    ],
  }),

  KVMI_VCPU_GET_XSAVE: defineCommand({
    command: "KVMI_VCPU_GET_XSAVE",
    method: "getXsave",
    requestSchema: GetXsaveRequestSchema,
    responseSchema: GetXsaveResponseSchema,
    toWire: (r) => ({ ...parseVcpuName(r.name), body: {} }),
    fromWire: (w) => ({ region: w.region.slice() }),
    wireFields: [{ wire: "KVMI_VCPU_GET_XSAVE.reply.region", proto: `${GetXsaveResponseSchema.name}.region` }],
  }),

  KVMI_VCPU_SET_XSAVE: defineCommand({
    command: "KVMI_VCPU_SET_XSAVE",
    method: "setXsave",
    requestSchema: SetXsaveRequestSchema,
    responseSchema: SetXsaveResponseSchema,
    toWire: (r, limitsOf) => {
      const target = parseVcpuName(r.name);
      const max = limitsOf(target.vm).maxXsaveBytes;
      if (r.region.length === 0) {
        throw new KvmiArgumentError("region", "region is required: send the XSAVE area read with GetXsave, changed as needed");
      }
      if (r.region.length > max) {
        throw new KvmiArgumentError("region", `region of ${r.region.length} bytes is larger than struct kvm_xsave (${max} bytes)`);
      }
      return { ...target, body: { region: r.region } };
    },
    fromWire: () => ({}),
    wireFields: [{ wire: "KVMI_VCPU_SET_XSAVE.request.region", proto: `${SetXsaveRequestSchema.name}.region` }],
  }),

  KVMI_VCPU_GET_MTRR_TYPE: defineCommand({
    command: "KVMI_VCPU_GET_MTRR_TYPE",
    method: "getMtrrType",
    requestSchema: GetMtrrTypeRequestSchema,
    responseSchema: GetMtrrTypeResponseSchema,
    toWire: (r) => ({ ...parseVcpuName(r.name), body: { gpa: r.gpa } }),
    fromWire: (w) => ({ type: mtrrTypeFromWire(w.type), rawType: w.type }),
    wireFields: [
      ...mapFields(layouts.kvmiVcpuGetMtrrType.name, GetMtrrTypeRequestSchema.name, { gpa: "gpa" }),
      ...mapFields(layouts.kvmiVcpuGetMtrrTypeReply.name, GetMtrrTypeResponseSchema.name, { type: "type" }),
      ...mapFields(layouts.kvmiVcpuGetMtrrTypeReply.name, GetMtrrTypeResponseSchema.name, { type: "raw_type" }),
    ],
  }),

  KVMI_VCPU_CONTROL_MSR: defineCommand({
    command: "KVMI_VCPU_CONTROL_MSR",
    method: "controlMsr",
    requestSchema: ControlMsrRequestSchema,
    responseSchema: ControlMsrResponseSchema,
    toWire: (r) => {
      const target = parseVcpuName(r.name);
      checkMsr(r.msr, "msr");
      return { ...target, body: { enable: flag(r.enable), msr: r.msr } };
    },
    fromWire: () => ({}),
    wireFields: mapFields(layouts.kvmiVcpuControlMsr.name, ControlMsrRequestSchema.name, { enable: "enable", msr: "msr" }),
  }),

  KVMI_VM_SET_PAGE_ACCESS: defineCommand({
    command: "KVMI_VM_SET_PAGE_ACCESS",
    method: "setPageAccess",
    requestSchema: SetPageAccessRequestSchema,
    responseSchema: SetPageAccessResponseSchema,
    toWire: (r, limitsOf) => {
      const vm = vmOf(r);
      if (r.entries.length === 0) throw new KvmiArgumentError("entries", "entries is required: list the pages to change");
      const max = limitsOf(vm).maxPageAccessEntries;
      if (r.entries.length > max) {
        throw new KvmiArgumentError("entries", `entries lists ${r.entries.length} pages, at most ${max} fit in one message; split the request`);
      }
      const entries = r.entries.map((e, i) => {
        if (e.access > PAGE_ACCESS_MAX) {
          throw new KvmiArgumentError(
            `entries[${i}].access`,
            `entries[${i}].access ${e.access} has bits other than R (1), W (2) and X (4); use 0..${PAGE_ACCESS_MAX}`,
          );
        }
        return { gpa: e.gpa, access: e.access, visible: flag(e.visible) };
      });
      // kvmi-v7's EPT view (dialect-translation.ts refuses a non-zero view on dialects without one).
      if (r.view > 0xffff) throw new KvmiArgumentError("view", `view ${r.view} is not an EPT view index (0..65535)`);
      return { vm, body: { entries, ...(r.view !== 0 && { view: r.view }) } };
    },
    fromWire: () => ({}),
    wireFields: [
      ...mapFields(layouts.kvmiVmSetPageAccess.name, SetPageAccessRequestSchema.name, { entries: "entries" }),
      ...mapFields(layouts.kvmiPageAccessEntry.name, PageAccessEntrySchema.name, { gpa: "gpa", access: "access", visible: "visible" }),
    ],
  }),

  KVMI_VCPU_CONTROL_SINGLESTEP: defineCommand({
    command: "KVMI_VCPU_CONTROL_SINGLESTEP",
    method: "controlSingleStep",
    requestSchema: ControlSingleStepRequestSchema,
    responseSchema: ControlSingleStepResponseSchema,
    toWire: (r) => ({ ...parseVcpuName(r.name), body: { enable: flag(r.enable) } }),
    fromWire: () => ({}),
    wireFields: mapFields(layouts.kvmiVcpuControlSinglestep.name, ControlSingleStepRequestSchema.name, { enable: "enable" }),
  }),

  KVMI_VCPU_TRANSLATE_GVA: defineCommand({
    command: "KVMI_VCPU_TRANSLATE_GVA",
    method: "translateGva",
    requestSchema: TranslateGvaRequestSchema,
    responseSchema: TranslateGvaResponseSchema,
    toWire: (r) => ({ ...parseVcpuName(r.name), body: { gva: r.gva } }),
    fromWire: (w) => ({ gpa: w.gpa, mapped: w.gpa !== UNMAPPED_GPA }),
    wireFields: [
      ...mapFields(layouts.kvmiVcpuTranslateGva.name, TranslateGvaRequestSchema.name, { gva: "gva" }),
      ...mapFields(layouts.kvmiVcpuTranslateGvaReply.name, TranslateGvaResponseSchema.name, { gpa: "gpa" }),
      ...mapFields(layouts.kvmiVcpuTranslateGvaReply.name, TranslateGvaResponseSchema.name, { gpa: "mapped" }),
    ],
  }),
} as const satisfies { readonly [N in V9CommandName]: CommandMapping<N, DescMessage, DescMessage> };

/** Any entry of {@link COMMAND_MAPPINGS}. */
export type AnyCommandMapping = (typeof COMMAND_MAPPINGS)[V9CommandName];

const BY_METHOD: ReadonlyMap<string, AnyCommandMapping> = new Map(
  Object.values<AnyCommandMapping>(COMMAND_MAPPINGS).map((m) => [m.method, m]),
);

/**
 * The mapping of an IntrospectionService method or SessionCommand case by local name
 * (`readPhysicalMemory`); undefined for methods that are not one KVMI command (GetVm, BatchReadMemory…).
 */
export function commandMappingByMethod(method: string): AnyCommandMapping | undefined {
  return BY_METHOD.get(method);
}

/** Wraps `fromWire` in `create()`: the response message of a reply. */
export function responseFromWire<N extends V9CommandName, Req extends DescMessage, Res extends DescMessage>(
  mapping: CommandMapping<N, Req, Res>,
  reply: CommandReply<N>,
): MessageShape<Res> {
  return create(mapping.responseSchema, mapping.fromWire(reply));
}

/** The wire fields all command entries carry (see wire-coverage.ts). */
export const COMMAND_WIRE_FIELDS: readonly WireFieldMapping[] = Object.values<AnyCommandMapping>(COMMAND_MAPPINGS).flatMap(
  (m) => m.wireFields,
);
