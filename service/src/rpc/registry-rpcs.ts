// SPDX-License-Identifier: Apache-2.0
/**
 * The VM registry RPCs: GetVm, ListVms (AIP-158 paging, ordered by UUID), WatchVms (existing VMs,
 * then every change) and ReleaseVm (the operator's unhook).
 */
import { create } from "@bufbuild/protobuf";
import type { ServerUnaryCall, ServerWritableStream } from "@grpc/grpc-js";
import type { VmChange as RegistryChange, VmRecord as RegistryRecord } from "@kvmi/kvm-bridge";
import {
  GetVmResponseSchema,
  ListVmsResponseSchema,
  ReleaseVmResponseSchema,
  WatchVmsResponseSchema,
} from "@kvmi/proto";
import type { GetVmRequest, ListVmsRequest, ReleaseVmRequest, VmChange, WatchVmsRequest, WatchVmsResponse } from "@kvmi/proto";
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import { BridgeError, QuotaExceededError, vmNotFound } from "../mapping/bridge-error.js";
import { parseVmName, vmName } from "../mapping/resource-names.js";
import { vmChangeToProto, vmToProto } from "../mapping/vm.js";
import type { VmChangeKind, VmRecord } from "../mapping/vm.js";
import { outcome, who } from "../audit/audit-records.js";
import { ownerOf, principalOf } from "./principals.js";
import type { RpcDeps } from "./call-context.js";
import { dropUnreadStream, failStream, failure, quotasOf, unary } from "./call-context.js";
import type { QuotaLease } from "./quotas.js";

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
    // Generation 0: announced by a forwarder, never hooked, so no handshake to report.
    variant: record.generation === 0 ? "none" : record.variant,
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
    ...(record.origin !== undefined && { origin: record.origin }),
    ...(record.state === "not-connected" && record.problem !== undefined && { problem: record.problem }),
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

    listVms: unary(deps, "listVms", async (call: ServerUnaryCall<ListVmsRequest, unknown>) => {
      const { pageSize, pageToken } = call.request;
      if (pageSize < 0) throw new KvmiArgumentError("page_size", "page_size must not be negative");
      const size = Math.min(pageSize === 0 ? DEFAULT_PAGE_SIZE : pageSize, MAX_PAGE_SIZE);
      const after = pageStart(pageToken);
      const principal = principalOf(call);
      // Only the VMs the caller may list (auth/rules.ts: a "filter" rule), before paging.
      const records = deps.registry.list().filter((r) => r.uuid > after && deps.access.allows(principal, "list", r.uuid));
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
      async (call: ServerUnaryCall<ReleaseVmRequest, unknown>) => {
        const record = find(deps, call.request.name, "name");
        const principal = principalOf(call);
        const graceMs = gracePeriodMs(call.request);
        const host = deps.hosts.get(record.uuid);
        // vm.proto: FAILED_PRECONDITION if the VM is already disconnected (not UNAVAILABLE: a retry
        // cannot succeed until QEMU reconnects, and then it is a new generation).
        if (record.state === "unhooked" || host === undefined || !host.channel.isOpen) {
          throw new BridgeError("VM_DISCONNECTED", `VM ${vmName(record.uuid)} is already disconnected; there is nothing to release`, { vm: record.uuid });
        }
        const controller = host.sessions.find((s) => s.role === "controller");
        const audited = { action: "release_vm", ...who(principal), vm: record.uuid, graceMs, controllerAttached: controller !== undefined };
        try {
          await host.release("operator", graceMs);
        } catch (err) {
          deps.audit.record({ ...audited, ...outcome(err) });
          throw err;
        }
        deps.audit.record({ ...audited, ...outcome(undefined) });
        return create(ReleaseVmResponseSchema, { vm: vmToProto(recordOf(deps, deps.registry.get(record.uuid)!)) });
      },
      (request) => vmContext(request.name),
    ),
  };
}

/**
 * Changes a watcher may stay behind (after its initial listing) for {@link WATCHER_BEHIND_GRACE_MS}
 * before it is dropped. A burst of changes in one turn (many VMs hooking or unhooking at once)
 * leaves even a reading watcher that far behind for a moment, since grpc-js sends one message per
 * write callback; a watcher still behind after the grace is not reading.
 */
const MAX_WATCHER_BACKLOG = 64;
const WATCHER_BEHIND_GRACE_MS = 2_000;
/** Changes a watcher may fall behind at all: the memory bound, whatever the grace. */
const MAX_WATCHER_BURST = 1024;

/**
 * The messages of a registry change, built once however many watchers and sessions receive it:
 * with thousands of receivers, building it per receiver made each attach cost thousands of copies
 * (and `recordOf` walks the VM's sessions each time).
 */
const changeMessages = new WeakMap<RegistryChange, WatchVmsResponse>();

/** The `kvmi.v1.VmChange` of a registry change, shared by every receiver (WatchVms and sessions). */
export function vmChangeOf(deps: RpcDeps, change: RegistryChange): VmChange {
  return watchMessageOf(deps, change).change!;
}

function watchMessageOf(deps: RpcDeps, change: RegistryChange): WatchVmsResponse {
  let message = changeMessages.get(change);
  if (message === undefined) {
    message = create(WatchVmsResponseSchema, { change: vmChangeToProto(changeKind(change), recordOf(deps, change.vm), new Date()) });
    changeMessages.set(change, message);
  }
  return message;
}

/**
 * WatchVms: one EXISTING change per known VM, then every change until the client cancels. The
 * stream is server-side only and bounded by the client's flow control; when the client stops
 * reading, grpc-js buffers, so a watcher that stays {@link MAX_WATCHER_BACKLOG} changes behind (or
 * falls {@link MAX_WATCHER_BURST} behind) is dropped with RESOURCE_EXHAUSTED (and its stream reset if it never takes that status) rather
 * than allowed to grow memory. Each watcher counts against the watchers quota of its identity.
 */
export function watchVmsHandler(deps: RpcDeps) {
  return (call: ServerWritableStream<WatchVmsRequest, WatchVmsResponse>): void => {
    let only: string | undefined;
    let lease: QuotaLease;
    try {
      only = call.request.name === "" ? undefined : parseVmName(call.request.name, "name");
      lease = quotasOf(deps).acquire("watchers", ownerOf(principalOf(call)));
    } catch (err) {
      failStream(call, failure(deps, "watchVms", err));
      return;
    }
    const principal = principalOf(call);
    let listed = false;
    let dropped = false;
    let behindSince: number | undefined;
    const write = (message: WatchVmsResponse): void => {
      if (dropped) return;
      // grpc-js counts messages here: those it holds because the client has not taken them.
      const backlog = listed ? call.writableLength : 0;
      if (backlog <= MAX_WATCHER_BACKLOG) behindSince = undefined;
      else behindSince ??= performance.now();
      if (backlog > MAX_WATCHER_BURST || (behindSince !== undefined && performance.now() - behindSince >= WATCHER_BEHIND_GRACE_MS)) {
        dropped = true;
        stop();
        dropUnreadStream(
          call,
          failure(
            deps,
            "watchVms",
            new QuotaExceededError("watcher", "watcherBacklog", `the watcher stayed ${backlog} changes behind; watch again and read faster`),
          ),
        );
        return;
      }
      call.write(message);
    };
    // Asked per change, so a policy reload applies to running watches.
    for (const record of deps.registry.list()) {
      if (!deps.access.allows(principal, "list", record.uuid)) continue;
      if (only === undefined || record.uuid === only) write(create(WatchVmsResponseSchema, { change: vmChangeToProto("existing", recordOf(deps, record), new Date()) }));
    }
    listed = true;
    const unwatch = deps.registry.watch((change) => {
      if (only !== undefined && change.vm.uuid !== only) return;
      if (!deps.access.allows(principal, "list", change.vm.uuid)) return;
      write(watchMessageOf(deps, change));
    });
    // A watch never ends by itself: on shutdown the bridge ends it (retryable UNAVAILABLE), else
    // the server would wait its whole grace period for the client to cancel.
    const onShutdown = (): void => {
      stop();
      failStream(call, failure(deps, "watchVms", new BridgeError("VM_UNHOOKING", "the bridge is shutting down and has released every VM; watch again when it is back")));
    };
    const stop = (): void => {
      unwatch();
      lease.release();
      deps.shuttingDown?.removeEventListener("abort", onShutdown);
    };
    if (deps.shuttingDown?.aborted === true) return onShutdown();
    deps.shuttingDown?.addEventListener("abort", onShutdown, { once: true });
    call.once("cancelled", stop);
    call.once("close", stop);
  };
}
