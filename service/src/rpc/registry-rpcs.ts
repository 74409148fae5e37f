// SPDX-License-Identifier: Apache-2.0
/**
 * The VM registry RPCs: GetVm, ListVms (AIP-158 paging, ordered by UUID), WatchVms (existing VMs,
 * then every change) and ReleaseVm (the operator's unhook).
 */
import { create } from "@bufbuild/protobuf";
import type { ServerWritableStream } from "@grpc/grpc-js";
import type { VmChange as RegistryChange, VmRecord as RegistryRecord } from "@kvmi/kvm-bridge";
import {
  GetVmResponseSchema,
  ListVmsResponseSchema,
  ReleaseVmResponseSchema,
  WatchVmsResponseSchema,
} from "@kvmi/proto";
import type { GetVmRequest, ListVmsRequest, ReleaseVmRequest, WatchVmsRequest, WatchVmsResponse } from "@kvmi/proto";
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import { BridgeError, vmNotFound } from "../mapping/bridge-error.js";
import { parseVmName, vmName } from "../mapping/resource-names.js";
import { vmChangeToProto, vmToProto } from "../mapping/vm.js";
import type { VmChangeKind, VmRecord } from "../mapping/vm.js";
import type { RpcDeps } from "./call-context.js";
import { failStream, failure, unary } from "./call-context.js";

const DEFAULT_PAGE_SIZE = 100;
const MAX_PAGE_SIZE = 1000;

/** The registry record plus what only the hosts know (sessions), in the mapping's shape. */
export function recordOf(deps: RpcDeps, record: RegistryRecord): VmRecord {
  const sessions = deps.hosts.get(record.uuid)?.sessions ?? [];
  return {
    uuid: record.uuid,
    name: record.name,
    state: record.state === "unhooked" ? "disconnected" : record.state,
    generation: record.generation,
    vcpuCount: record.vcpuCount,
    startTime: record.startTime,
    hookedAt: record.hookedAt,
    variant: record.variant,
    dialect: record.dialect,
    kvmiVersion: record.kvmiVersion,
    features: { singlestep: record.singlestep },
    commands: record.commands,
    events: record.events,
    ...(record.maxGpa !== undefined && { maxGpa: record.maxGpa }),
    ...(record.cpuType !== undefined && { cpuType: record.cpuType }),
    ...(record.e820 !== undefined && { e820: record.e820 }),
    controllerAttached: sessions.some((s) => s.role === "controller"),
    observerCount: sessions.filter((s) => s.role === "observer").length,
    ...(record.state === "unhook-pending" && record.unhookDeadline !== undefined && { unhookDeadline: record.unhookDeadline }),
  };
}

/** The proto change kind of a registry change (WatchVms and the session's vm_change share it). */
export function changeKind(change: RegistryChange): VmChangeKind {
  if (change.type !== "state") return change.type;
  return change.vm.state === "unhook-pending" ? "unhook-pending" : "state-changed";
}

function find(deps: RpcDeps, name: string, field: string): RegistryRecord {
  const uuid = parseVmName(name, field);
  const record = deps.registry.get(uuid);
  if (record === undefined) throw vmNotFound(uuid);
  return record;
}

/** A page token is the base64url of the last UUID of the previous page. */
function pageStart(token: string): string {
  if (token === "") return "";
  const uuid = Buffer.from(token, "base64url").toString("utf8");
  if (!/^[0-9a-f-]{36}$/.test(uuid)) throw new KvmiArgumentError("page_token", "page_token is not one this bridge issued");
  return uuid;
}

/** ReleaseVm's grace period when the request leaves it unset, and the longest one (vm.proto). */
const DEFAULT_GRACE_MS = 10_000;
const MAX_GRACE_MS = 300_000;

/**
 * ReleaseVm's grace period in ms: unset means 10 s, at most 300 s (vm.proto).
 * @throws KvmiArgumentError for a negative, malformed or too long duration.
 */
function gracePeriodMs(request: ReleaseVmRequest): number {
  const grace = request.gracePeriod;
  if (grace === undefined) return DEFAULT_GRACE_MS;
  const valid = grace.seconds >= 0n && grace.nanos >= 0 && grace.nanos < 1e9;
  const ms = Number(grace.seconds) * 1000 + Math.floor(grace.nanos / 1e6);
  if (!valid || ms > MAX_GRACE_MS) {
    throw new KvmiArgumentError("grace_period", "grace_period must be between 0 and 300 s");
  }
  return ms;
}

/** The VM a registry request names, for ErrorInfo metadata; nothing when the name does not parse. */
function vmContext(name: string): { vm?: string } {
  try {
    return { vm: parseVmName(name, "name") };
  } catch {
    return {};
  }
}

/** The unary registry handlers. */
export function registryHandlers(deps: RpcDeps) {
  return {
    getVm: unary(deps, "getVm", async (call: { request: GetVmRequest }) =>
      create(GetVmResponseSchema, { vm: vmToProto(recordOf(deps, find(deps, call.request.name, "name"))) }),
    ),

    listVms: unary(deps, "listVms", async (call: { request: ListVmsRequest }) => {
      const { pageSize, pageToken } = call.request;
      if (pageSize < 0) throw new KvmiArgumentError("page_size", "page_size must not be negative");
      const size = Math.min(pageSize === 0 ? DEFAULT_PAGE_SIZE : pageSize, MAX_PAGE_SIZE);
      const after = pageStart(pageToken);
      const records = deps.registry.list().filter((r) => r.uuid > after);
      const page = records.slice(0, size);
      const more = records.length > size;
      return create(ListVmsResponseSchema, {
        vms: page.map((r) => vmToProto(recordOf(deps, r))),
        nextPageToken: more ? Buffer.from(page.at(-1)!.uuid).toString("base64url") : "",
      });
    }),

    releaseVm: unary(
      deps,
      "releaseVm",
      async (call: { request: ReleaseVmRequest }) => {
        const record = find(deps, call.request.name, "name");
        const graceMs = gracePeriodMs(call.request);
        const host = deps.hosts.get(record.uuid);
        // vm.proto: FAILED_PRECONDITION if the VM is already disconnected (not UNAVAILABLE: a retry
        // cannot succeed until QEMU reconnects, and then it is a new generation).
        if (record.state === "unhooked" || host === undefined || !host.channel.isOpen) {
          throw new BridgeError("VM_DISCONNECTED", `VM ${vmName(record.uuid)} is already disconnected; there is nothing to release`, { vm: record.uuid });
        }
        await host.release("operator", graceMs);
        return create(ReleaseVmResponseSchema, { vm: vmToProto(recordOf(deps, deps.registry.get(record.uuid)!)) });
      },
      (request) => vmContext(request.name),
    ),
  };
}

/**
 * WatchVms: one EXISTING change per known VM, then every change until the client cancels. The
 * stream is server-side only and bounded by the client's flow control; when the client stops
 * reading, grpc-js buffers, so a watcher that falls more than a bounded number of writes behind is
 * ended with RESOURCE_EXHAUSTED rather than allowed to grow memory.
 */
export function watchVmsHandler(deps: RpcDeps) {
  const MAX_BUFFERED_WRITES = 1024;
  return (call: ServerWritableStream<WatchVmsRequest, WatchVmsResponse>): void => {
    let only: string | undefined;
    try {
      only = call.request.name === "" ? undefined : parseVmName(call.request.name, "name");
    } catch (err) {
      failStream(call, failure(deps, "watchVms", err));
      return;
    }
    let behind = 0;
    const send = (kind: VmChangeKind, record: RegistryRecord): void => {
      if (only !== undefined && record.uuid !== only) return;
      const ok = call.write(create(WatchVmsResponseSchema, { change: vmChangeToProto(kind, recordOf(deps, record), new Date()) }));
      if (!ok && ++behind > MAX_BUFFERED_WRITES) {
        stop();
        failStream(
          call,
          failure(deps, "watchVms", new BridgeError("TOO_MANY_IN_FLIGHT", `the watcher fell ${MAX_BUFFERED_WRITES} changes behind; watch again and read faster`)),
        );
      }
    };
    call.on("drain", () => (behind = 0));
    for (const record of deps.registry.list()) send("existing", record);
    const unwatch = deps.registry.watch((change) => send(changeKind(change), change.vm));
    // A watch never ends by itself: on shutdown the bridge ends it (retryable UNAVAILABLE), else
    // the server would wait its whole grace period for the client to cancel.
    const onShutdown = (): void => {
      stop();
      failStream(call, failure(deps, "watchVms", new BridgeError("VM_UNHOOKING", "the bridge is shutting down and has released every VM; watch again when it is back")));
    };
    const stop = (): void => {
      unwatch();
      deps.shuttingDown?.removeEventListener("abort", onShutdown);
    };
    if (deps.shuttingDown?.aborted === true) return onShutdown();
    deps.shuttingDown?.addEventListener("abort", onShutdown, { once: true });
    call.once("cancelled", stop);
    call.once("close", stop);
  };
}
