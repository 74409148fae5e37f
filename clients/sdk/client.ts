// SPDX-License-Identifier: Apache-2.0
/**
 * The entry point of the SDK: {@link connect} returns a {@link BridgeClient} for one bridge. It
 * lists and watches VMs, opens sessions, and hands out {@link VmHandle}s whose typed command
 * methods run as unary RPCs.
 */
import type { ClientOptions } from "@grpc/grpc-js";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type { Vm, VmChange } from "@kvmi/proto";
import { Channel, createRequest } from "./channel.js";
import type { BearerToken, CallOptions, TlsOptions } from "./channel.js";
import type { VmCommands } from "./command-types.js";
import { CommandSurface } from "./commands.js";
import { dispatch } from "./dispatch.js";
import type { Transport } from "./dispatch.js";
import { createError, InvalidArgumentError, NotFoundError, StatusCode } from "./errors.js";
import type { MemoryHoleInfo } from "./errors.js";
import { holesOf } from "./memory.js";
import { uuidOf, vmName } from "./names.js";
import { DEFAULT_RETRY_POLICY } from "./retry.js";
import type { RetryPolicy } from "./retry.js";
import type { RequestOf, ResponseOf, UnaryMethodName } from "./rpc-methods.js";
import { openSession } from "./session.js";
import type { AttachOptions, Session } from "./session.js";

/** Options of {@link connect}. */
export interface ConnectOptions {
  /** The bridge's gRPC address: `host:port`, `dns:///host:port` or `unix:/path`. */
  readonly target?: string;
  /** A UNIX socket path; shorthand for `target: "unix:<path>"`. */
  readonly unix?: string;
  /** TLS (and mTLS with `cert`/`key`); plaintext when absent (the bridge allows that only on loopback and UNIX sockets). */
  readonly tls?: TlsOptions;
  /** Default deadline of one unary call attempt in ms (default 30000). */
  readonly timeoutMs?: number;
  /** Retries of idempotent methods (reads and idempotent changes) on UNAVAILABLE; `{ maxAttempts: 1 }` turns them off. */
  readonly retry?: Partial<RetryPolicy>;
  /** Extra grpc-js channel options; they override the SDK's own (a 4 MiB HTTP/2 receive window, `grpc-node.flow_control_window`). */
  readonly grpcOptions?: ClientOptions;
  /**
   * A bearer JWT (or a function returning the current one) sent as `authorization: Bearer …`,
   * e.g. a Kubernetes projected ServiceAccount token with the audience the bridge expects.
   */
  readonly bearerToken?: BearerToken;
}

/** Options of {@link BridgeClient.vm}. */
export interface VmHandleOptions {
  /** A controller's session id: sent as `kvmi-session-id` so that mutating unary RPCs act as that controller. */
  readonly sessionId?: string;
}

/** Options of {@link VmHandle.dump}. */
export interface DumpOptions {
  /** First GPA, a multiple of 4096 (default 0). */
  readonly start?: bigint;
  /** Bytes, a multiple of 4096; 0 or absent means up to the end of guest memory. */
  readonly length?: bigint;
  /** Bytes per chunk, a multiple of 4096 up to 2 MiB (default 256 KiB). */
  readonly chunkSize?: number;
  /** Called after each chunk with the bytes processed (holes included) and the total. */
  readonly onProgress?: (bytesDone: bigint, bytesTotal: bigint) => void;
  /** Cancels the dump; the iterator then throws CancelledError. */
  readonly signal?: AbortSignal;
}

/** One chunk of a dump: `data` belongs at `gpa`; `holes` are the unreadable ranges found since the previous chunk. */
export interface DumpChunk {
  readonly gpa: bigint;
  readonly data: Uint8Array;
  readonly holes: readonly MemoryHoleInfo[];
  readonly bytesDone: bigint;
  readonly bytesTotal: bigint;
}

/** Options of {@link BridgeClient.watchVms}. */
export interface WatchVmsOptions {
  /** Only this VM (UUID or `vms/UUID`); it need not exist yet. */
  readonly vm?: string;
  /** Ends the watch; the iterator then throws CancelledError. */
  readonly signal?: AbortSignal;
}

/** Options of {@link BridgeClient.releaseVm}. */
export interface ReleaseVmOptions extends CallOptions {
  /** How long the bridge waits for the controller to release, in ms (default 10 s on the bridge; 0 skips the wait). */
  readonly gracePeriodMs?: number;
}

/**
 * One VM over unary RPCs: every {@link VmCommands} method (reads retried on UNAVAILABLE), plus
 * memory dumps. Mutating methods need the controller's session id (see {@link BridgeClient.vm}).
 */
export interface VmHandle extends VmCommands {
  /** `vms/{uuid}`. */
  readonly name: string;
  /** The controller session id sent with every call, if any. */
  readonly sessionId: string | undefined;
  /** The VM's current registry snapshot (GetVm). */
  get(options?: CallOptions): Promise<Vm>;
  /**
   * Streams guest physical memory (DumpMemory) in chunks, skipping unreadable pages.
   * @throws InvalidArgumentError for a misaligned range or chunk size; CancelledError on abort.
   */
  dump(options?: DumpOptions): AsyncGenerator<DumpChunk, void, undefined>;
  /** Attaches a session to this VM; see {@link BridgeClient.attach}. */
  attach(options: AttachOptions): Promise<Session>;
  /** The same VM with another controller session id (or none). */
  withSession(sessionId: string | undefined): VmHandle;
  /**
   * KVMI_GET_PAGE_ACCESS (kvmi-v7 VMs only; a unary RPC, not a session command): the R/W/X access
   * SetPageAccess left on each page, in the order asked.
   * @throws FailedPreconditionError (reason NOT_IN_DIALECT) on a v9 or v12 VM.
   */
  getPageAccess(gpas: readonly bigint[], options?: GetPageAccessOptions): Promise<PageAccessInfo[]>;
}

/** Options of {@link VmHandle.getPageAccess}. */
export interface GetPageAccessOptions extends CallOptions {
  /** The EPT view (default 0, the default view). */
  readonly view?: number;
}

/** One page of {@link VmHandle.getPageAccess}. */
export interface PageAccessInfo {
  readonly gpa: bigint;
  /** Allowed access bits: R = 1, W = 2, X = 4; 7 when unrestricted. */
  readonly access: number;
}

/** A connection to one kvmi-bridge. */
export interface BridgeClient {
  /** The target this client connects to. */
  readonly target: string;
  /** Every VM the bridge knows, all pages (ListVms), ordered by UUID. */
  listVms(options?: CallOptions & { readonly pageSize?: number }): Promise<Vm[]>;
  /** One VM (GetVm). @throws NotFoundError for an unknown VM */
  getVm(vm: string, options?: CallOptions): Promise<Vm>;
  /**
   * Finds a VM by UUID, `vms/UUID` or display name.
   * @throws NotFoundError when nothing matches; InvalidArgumentError when a display name matches several VMs.
   */
  resolveVm(ref: string, options?: CallOptions): Promise<Vm>;
  /** Registry changes (WatchVms): one `EXISTING` per known VM, then every change, until `signal` fires. */
  watchVms(options?: WatchVmsOptions): AsyncGenerator<VmChange, void, undefined>;
  /** A handle on one VM (UUID or `vms/UUID`); no call is made. @throws InvalidArgumentError for another reference (see {@link resolveVm}). */
  vm(vm: string, options?: VmHandleOptions): VmHandle;
  /**
   * Attaches a session to a VM as controller or observer. Its command methods travel on the
   * stream; `events()` yields events with their reply methods.
   * @throws FailedPreconditionError (`CONTROLLER_PRESENT`) when a controller is attached already;
   *   NotFoundError for an unknown VM; CancelledError when `signal` fires.
   */
  attach(vm: string, options: AttachOptions): Promise<Session>;
  /** Releases a VM (ReleaseVm): unhook notice to its sessions, grace period, undo, socket closed. */
  releaseVm(vm: string, options?: ReleaseVmOptions): Promise<Vm>;
  /** Closes the connection. Sessions and calls still open fail. */
  close(): void;
}

/**
 * Connects to a bridge. The connection is made lazily by the first call; nothing is sent here.
 * @example
 * const client = connect({ target: "127.0.0.1:50051" });
 * for (const vm of await client.listVms()) console.log(vm.name, vm.displayName);
 */
export function connect(options: ConnectOptions): BridgeClient {
  const target = options.unix !== undefined ? `unix:${options.unix}` : options.target;
  if (target === undefined || target === "") throw new TypeError("connect() needs a target or a unix socket path");
  const channel = new Channel({ target, tls: options.tls, timeoutMs: options.timeoutMs ?? 30_000, grpcOptions: options.grpcOptions, bearerToken: options.bearerToken });
  const policy: RetryPolicy = { ...DEFAULT_RETRY_POLICY, ...options.retry };
  return new Client(target, channel, policy);
}

/** The UUID of a VM reference that must be a UUID. */
function requireUuid(ref: string): string {
  const uuid = uuidOf(ref);
  if (uuid === undefined) {
    throw new InvalidArgumentError({
      code: StatusCode.INVALID_ARGUMENT,
      message: `"${ref}" is not a VM UUID or vms/UUID name`,
      reason: "INVALID_VM_NAME",
      details: { fieldViolations: [{ field: "vm", description: "expected a UUID or vms/UUID" }] },
    });
  }
  return uuid;
}

/** Unary RPCs, with the controller session id in metadata when given. */
class UnaryTransport implements Transport {
  readonly usable = true;

  constructor(
    private readonly channel: Channel,
    private readonly sessionId: string | undefined,
  ) {}

  run<M extends UnaryMethodName>(name: M, request: RequestOf<M>, options: CallOptions): Promise<ResponseOf<M>> {
    return this.channel.unary(name, request, { ...options, sessionId: this.sessionId });
  }
}

class Handle extends CommandSurface implements VmHandle {
  readonly name: string;

  constructor(
    uuid: string,
    private readonly client: Client,
    readonly sessionId: string | undefined,
  ) {
    super(uuid, new UnaryTransport(client.channel, sessionId), client.policy);
    this.name = vmName(uuid);
  }

  get(options?: CallOptions): Promise<Vm> {
    return this.client.getVm(this.uuid, options);
  }

  async *dump(options: DumpOptions = {}): AsyncGenerator<DumpChunk, void, undefined> {
    const request = {
      vm: this.name,
      startGpa: options.start ?? 0n,
      length: options.length ?? 0n,
      chunkSize: options.chunkSize ?? 0,
    };
    for await (const response of this.client.channel.serverStream("dumpMemory", createRequest("dumpMemory", request), options.signal)) {
      const bytesDone = response.progress?.bytesDone ?? 0n;
      const bytesTotal = response.progress?.bytesTotal ?? 0n;
      options.onProgress?.(bytesDone, bytesTotal);
      yield { gpa: response.gpa, data: response.data, holes: holesOf(response.holes), bytesDone, bytesTotal };
    }
  }

  attach(options: AttachOptions): Promise<Session> {
    return this.client.attach(this.uuid, options);
  }

  withSession(sessionId: string | undefined): VmHandle {
    return new Handle(this.uuid, this.client, sessionId);
  }

  async getPageAccess(gpas: readonly bigint[], options: GetPageAccessOptions = {}): Promise<PageAccessInfo[]> {
    const r = await this.call("getPageAccess", { vm: this.name, gpas: [...gpas], view: options.view ?? 0 }, options);
    return r.entries.map((e) => ({ gpa: e.gpa, access: e.access }));
  }
}

class Client implements BridgeClient {
  private readonly unary: UnaryTransport;

  constructor(
    readonly target: string,
    readonly channel: Channel,
    readonly policy: RetryPolicy,
  ) {
    this.unary = new UnaryTransport(channel, undefined);
  }

  async listVms(options: CallOptions & { readonly pageSize?: number } = {}): Promise<Vm[]> {
    const vms: Vm[] = [];
    let pageToken = "";
    do {
      const page = await dispatch(this.unary, this.policy, "listVms", { pageSize: options.pageSize ?? 0, pageToken }, options);
      vms.push(...page.vms);
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    return vms;
  }

  async getVm(vm: string, options?: CallOptions): Promise<Vm> {
    const response = await dispatch(this.unary, this.policy, "getVm", { vm: vmName(requireUuid(vm)) }, options);
    if (response.vm === undefined) throw createError({ code: StatusCode.INTERNAL, message: "GetVm returned no VM" });
    return response.vm;
  }

  async resolveVm(ref: string, options?: CallOptions): Promise<Vm> {
    const uuid = uuidOf(ref);
    if (uuid !== undefined) return this.getVm(uuid, options);
    const matches = (await this.listVms(options)).filter((vm) => vm.displayName === ref);
    if (matches.length === 1) return matches[0]!;
    if (matches.length === 0) {
      throw new NotFoundError({
        code: StatusCode.NOT_FOUND,
        message: `no VM is named "${ref}" (give a UUID, vms/UUID or a display name)`,
        reason: "VM_NOT_FOUND",
        details: { resourceInfo: { resourceType: "kvmi.v1.Vm", resourceName: ref, owner: "", description: "no VM with this display name" } },
      });
    }
    throw new InvalidArgumentError({
      code: StatusCode.INVALID_ARGUMENT,
      message: `${matches.length} VMs are named "${ref}": use one of ${matches.map((vm) => vm.uuid).join(", ")}`,
      reason: "AMBIGUOUS_VM_NAME",
    });
  }

  async *watchVms(options: WatchVmsOptions = {}): AsyncGenerator<VmChange, void, undefined> {
    const name = options.vm === undefined ? "" : vmName(requireUuid(options.vm));
    for await (const response of this.channel.serverStream("watchVms", createRequest("watchVms", { vm: name }), options.signal)) {
      if (response.change !== undefined) yield response.change;
    }
  }

  vm(vm: string, options: VmHandleOptions = {}): VmHandle {
    return new Handle(requireUuid(vm), this, options.sessionId);
  }

  async attach(vm: string, options: AttachOptions): Promise<Session> {
    return openSession(this.channel, requireUuid(vm), options, this.policy);
  }

  async releaseVm(vm: string, options: ReleaseVmOptions = {}): Promise<Vm> {
    const { gracePeriodMs } = options;
    const response = await dispatch(
      this.unary,
      this.policy,
      "releaseVm",
      { vm: vmName(requireUuid(vm)), ...(gracePeriodMs !== undefined && { gracePeriod: durationFromMs(gracePeriodMs) }) },
      options,
    );
    return response.vm!;
  }

  close(): void {
    this.channel.close();
  }
}
