// SPDX-License-Identifier: Apache-2.0
/**
 * `service/src/mapping/`: the only code that knows both the KVMI wire world (`@kvmi/kvm-bridge`)
 * and the kvmi.v1 proto world (`@kvmi/proto`) (conventions §2). RPC handlers and the session use
 * these functions and never pick a status code or touch a wire field themselves.
 */

// Errors -> gRPC status (conventions §5).
export {
  BRIDGE_ERROR_STATUS,
  COMMAND_ERRNO_OVERRIDES,
  EAGAIN_RETRY_DELAY_MS,
  ERROR_DOMAIN,
  GrpcCode,
  INTERNAL_MESSAGE,
  mapError,
  statusToProto,
  STATUS_DETAILS_KEY,
  toGrpcStatus,
} from "./status.js";
export type { ErrorContext, MappedError, StatusDetail } from "./status.js";
export { BridgeError, checkVcpuIndex, vmNotFound } from "./bridge-error.js";
export type { BridgeErrorCode, BridgeErrorOptions } from "./bridge-error.js";

// Resource names.
export { MAX_VCPU_INDEX, parseVcpuName, parseVmName, vcpuName, vmName } from "./resource-names.js";
export type { VcpuRef } from "./resource-names.js";

// Commands.
export {
  checkPhysicalRange,
  COMMAND_MAPPINGS,
  commandMappingByMethod,
  CONTROL_CR_REGISTERS,
  CONTROL_MSR_RANGES,
  PAGE_ACCESS_MAX,
  PAGE_BYTES,
  responseFromWire,
} from "./commands.js";
export type { AnyCommandMapping, CommandMapping, WireCommand } from "./commands.js";

// Events.
export { continueReply, EVENT_MAPPINGS, eventReplyToWire, eventToProto, isVmEvent, unhookNotice } from "./events.js";
export type { EventMapping, EventPayload, EventReplyData, WireEventReply } from "./events.js";

// VMs.
export { vmChangeToProto, vmStateToProto, vmToProto } from "./vm.js";
export type { VmChangeKind, VmE820Entry, VmHandshakeVariant, VmRecord, VmState } from "./vm.js";

// Registers and enums.
export {
  dtableToProto,
  dtableToWire,
  eventArchToProto,
  eventArchToWire,
  eventMsrsToProto,
  eventMsrsToWire,
  msrEntryToProto,
  msrEntryToWire,
  regsToProto,
  regsToWire,
  segmentToProto,
  segmentToWire,
  sregsToProto,
  sregsToWire,
} from "./registers.js";
export type {
  WireDtable,
  WireEventArch,
  WireEventArchMsrs,
  WireMsrEntry,
  WireRegs,
  WireSegment,
  WireSregs,
} from "./registers.js";
export {
  commandIdForCheck,
  cpuModeFromWire,
  cpuTypeFromWire,
  descriptorTypeFromWire,
  eventActionName,
  eventActionToWire,
  eventIdForCheck,
  eventSpecFromProto,
  eventKindOfApiId,
  eventTypeOfKind,
  mtrrTypeFromWire,
} from "./enums.js";

// ---------------------------------------------------------------------------------------------
// @internal: the coverage ledger, for tests.
export { NOT_CARRIED, WIRE_FIELD_MAPPINGS } from "./coverage.js";
export type { NotCarried, WireFieldMapping } from "./wire-coverage.js";
