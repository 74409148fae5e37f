// SPDX-License-Identifier: Apache-2.0
/**
 * `@kvmi/clients`: the TypeScript SDK of kvmi-bridge. Connect to a bridge, list and watch VMs, run
 * every KVMI command with typed arguments (bigint for u64), read and write guest memory of any
 * length, dump memory, and attach a session to receive vCPU events and answer them.
 *
 * @example
 * import { connect } from "@kvmi/clients";
 * const client = connect({ target: "127.0.0.1:50051" });
 * const [vm] = await client.listVms();
 * const session = await client.attach(vm.uuid, { role: "controller" });
 * await session.controlCr(0, 3, true);
 * await session.controlVcpuEvents(0, "cr", true);
 * for await (const item of session.events()) {
 *   if (item.kind === "event" && item.type === "cr") await item.continue();
 *   if (item.kind === "unhook") break;
 * }
 * await session.release();
 *
 * @see ../README.md
 */

// End-user API.
export { connect } from "./client.js";
export type {
  BridgeClient,
  ConnectOptions,
  DumpChunk,
  DumpOptions,
  ReleaseVmOptions,
  VmHandle,
  VmHandleOptions,
  WatchVmsOptions,
} from "./client.js";
export type { BearerToken, CallOptions, TlsOptions } from "./channel.js";
export type { AttachOptions, EventFilterInput, EventsOptions, ReleaseOptions, Session, SessionRole, SetEventFilterOptions } from "./session.js";
export { parseEventFilter } from "./filter-syntax.js";
export { PAGE_ACCESS } from "./command-types.js";
export { PAGE_SIZE } from "./memory.js";
// Guest profiles (ISF JSON) and OS-aware helpers (docs/profiles.md).
export { Profile, ProfileError, stringifyIsf } from "./profile/profile.js";
export type { FieldLayout, IsfDocument, IsfTypeRef } from "./profile/profile.js";
export { LinuxGuest, linux } from "./profile/linux.js";
export type { LinuxModule, LinuxProcess } from "./profile/linux.js";
export { buildLinuxProfile, extractVmlinux, parseKallsyms } from "./profile/build-linux.js";
export type { KernelSymbol, LinuxProfileInput } from "./profile/build-linux.js";
export type {
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
export type {
  BreakpointEvent,
  ContinueWithValueOptions,
  CrEvent,
  DescriptorEvent,
  EventArchState,
  CpuidEvent,
  EventNotice,
  FilterSummaryNotice,
  HypercallEvent,
  MsrEvent,
  PageFaultEvent,
  PauseVcpuEvent,
  ReplyOptions,
  ReplyRejectedNotice,
  RetryableEvent,
  RuleCounts,
  SessionItem,
  SingleStepEvent,
  TrapEvent,
  UnhookCause,
  UnhookNotice,
  VcpuEvent,
  VcpuEventBase,
  VmChangeNotice,
  XsetbvEvent,
} from "./events.js";
export {
  AbortedError,
  AlreadyExistsError,
  CancelledError,
  DataLossError,
  DeadlineExceededError,
  ERROR_DOMAIN,
  FailedPreconditionError,
  fromStatus,
  InternalError,
  InvalidArgumentError,
  isKvmiBridgeError,
  KvmiBridgeError,
  MemoryHoleError,
  NotFoundError,
  OutOfRangeError,
  PermissionDeniedError,
  ResourceExhaustedError,
  SessionClosedError,
  StatusCode,
  statusCodeName,
  toSdkError,
  UnauthenticatedError,
  UnavailableError,
  UnimplementedError,
  UnknownError,
} from "./errors.js";
export type {
  ErrorDetails,
  FieldViolation,
  KvmiBridgeErrorInit,
  MemoryHoleInfo,
  PreconditionViolation,
  ResourceInfo,
  StatusCodeName,
} from "./errors.js";
export { DEFAULT_RETRY_POLICY, isRetryable, retryDelayMs } from "./retry.js";
export type { RetryPolicy } from "./retry.js";
export { EVENT_NAMES, eventNameOf, isUuid, uuidOf, vcpuName, vmName } from "./names.js";
export { serveGdb } from "./gdb/serve-gdb.js";
export { dumpToFile, DumpResumeError, resumeStatePath } from "./dump/dump-file.js";
export type { DumpFileProgress, DumpFileResult, DumpFormat, DumpToFileOptions } from "./dump/dump-file.js";
export type { GdbGateway, GdbSessionEnd, ServeGdbOptions } from "./gdb/serve-gdb.js";
export type { EventName, VcpuEventName } from "./names.js";

/** Proto enums that SDK values use (see proto/kvmi/v1/*.proto for their meaning). */
export { Command, CpuMode, DescriptorType, MtrrType, State, UnhookReason, VmChangeType } from "@kvmi/proto";
/** Proto message types that SDK values use. */
export type { Dtable, EventMsrs, Regs, Segment, Sregs, Vm, VmChange } from "@kvmi/proto";

// ---------------------------------------------------------------------------------------------
// Building blocks: exported for tests and advanced tools, not semver-stable.

/** @internal */
export { decodeStatusDetails } from "./errors.js";
/** @internal */
export { withRetry } from "./retry.js";
/** @internal */
export { splitPages, walkPageTables } from "./memory.js";
/** @internal */
export type { PhysicalReader } from "./memory.js";
/** @internal */
export { checksum, encodePacket, escapeBinary, expandRunLength, RspReader, unescapeBinary } from "./gdb/rsp-packet.js";
/** @internal */
export type { RspItem } from "./gdb/rsp-packet.js";
/** @internal */
export { elfHeader, elfNote, limeHeader, programHeader, prstatus, prstatusNotes } from "./dump/dump-formats.js";
