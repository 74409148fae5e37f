// SPDX-License-Identifier: Apache-2.0
/**
 * End-to-end harness: a real bridge (`startBridge`) listening on a KVMI UNIX socket in a fresh
 * temporary directory and on gRPC 127.0.0.1:0, emulated VMs (`@kvmi/kvm-bridge/emulator`) that
 * connect to it exactly as QEMU would, and grpc-js clients built from the protobuf-es service
 * descriptor. Nothing is mocked: every call crosses the gRPC socket and the KVMI socket.
 *
 * Everything waits with a deadline ({@link waitUntil}, {@link withTimeout}, {@link StreamQueue.take});
 * nothing sleeps unbounded. {@link Harness.stop} ends sessions and streams, closes clients, stops the
 * VMs and the bridge and removes the socket directory, so a test file leaves no timer or socket.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import type { MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { credentials, makeGenericClientConstructor, Metadata, status as GrpcStatus } from "@grpc/grpc-js";
import type { ChannelCredentials, ChannelOptions, Client, ClientDuplexStream, ClientReadableStream, StatusObject } from "@grpc/grpc-js";
import { silentLogger } from "@kvmi/kvm-bridge";
import type { Logger } from "@kvmi/kvm-bridge";
import { createEmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { commandByOp, dialectByName, eventByKind } from "@kvmi/kvm-bridge/wire";
import type { CommandOp, Dialect, EventKind } from "@kvmi/kvm-bridge/wire";
import type { EmulatedVm, EmulatedVmOptions } from "@kvmi/kvm-bridge/emulator";
import {
  DumpMemoryRequestSchema,
  EventAction,
  IntrospectionService,
  Role,
  SessionRequestSchema,
  State,
  WatchVmsRequestSchema,
} from "@kvmi/proto";
import type {
  Attached,
  RegsSchema,
  EventFilterSchema,
  SessionCommandSchema,
  CommandResult,
  DumpMemoryResponse,
  Event,
  Regs,
  SessionRequest,
  SessionResponse,
  Vm,
  WatchVmsResponse,
} from "@kvmi/proto";
import { loadConfigOrThrow, SESSION_ID_METADATA, startBridge } from "@kvmi/service";
import type { Bridge } from "@kvmi/service";
import { createServiceDefinition } from "@kvmi/service/testing";
import { decodeStatus, ERROR_DOMAIN, readStatusDetails, STATUS_DETAILS_KEY } from "@kvmi/proto/status-details";
import type { StatusDetails } from "@kvmi/proto/status-details";
import type { Status } from "@kvmi/proto";
import { expect } from "vitest";

export { GrpcStatus };

/** Default bound of every wait in the e2e tests. */
export const WAIT_MS = 5_000;

// -------------------------------------------------------------------------------------------------
// Waiting, bounded

/** Rejects with a message naming `what` when `promise` has not settled within `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Polls `probe` every `intervalMs` until it returns something other than undefined/false, and
 * resolves with that; rejects after `timeoutMs` with `what` and the last error the probe threw.
 */
export async function waitUntil<T>(
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  what: string,
  { timeoutMs = WAIT_MS, intervalMs = 10 }: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const suffix = lastError === undefined ? "" : ` (last error: ${(lastError as Error).message})`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${suffix}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/**
 * The items of a gRPC response stream, buffered in arrival order. `take` removes and returns the
 * first item that matches (already buffered or arriving later) and leaves the others in place.
 */
export class StreamQueue<T> {
  private readonly items: T[] = [];
  private readonly waiters: Array<{ match: (item: T) => boolean; resolve: (item: T) => void; reject: (err: Error) => void }> = [];
  private status: StatusObject | undefined;
  private readonly endWaiters: Array<(status: StatusObject) => void> = [];

  constructor(private readonly describe: (item: T) => string) {}

  push(item: T): void {
    const index = this.waiters.findIndex((w) => w.match(item));
    if (index >= 0) this.waiters.splice(index, 1)[0]!.resolve(item);
    else this.items.push(item);
  }

  end(status: StatusObject): void {
    if (this.status !== undefined) return;
    this.status = status;
    for (const waiter of this.waiters.splice(0)) {
      waiter.reject(new Error(`the stream ended (${GrpcStatus[status.code]}: ${status.details}) before the awaited message arrived`));
    }
    for (const resolve of this.endWaiters.splice(0)) resolve(status);
  }

  /** The final status, once the stream ended. */
  get ended(): StatusObject | undefined {
    return this.status;
  }

  /** Items buffered and not taken yet. */
  get pending(): readonly T[] {
    return this.items;
  }

  /** Removes and returns the first item matching `match`, waiting up to `timeoutMs` for it. */
  take(match: (item: T) => boolean, what: string, timeoutMs = WAIT_MS): Promise<T> {
    const index = this.items.findIndex(match);
    if (index >= 0) return Promise.resolve(this.items.splice(index, 1)[0]!);
    if (this.status !== undefined) {
      return Promise.reject(new Error(`${what}: the stream already ended (${GrpcStatus[this.status.code]}: ${this.status.details})`));
    }
    let waiter!: (typeof this.waiters)[number];
    const arrived = new Promise<T>((resolve, reject) => {
      waiter = { match, resolve, reject };
      this.waiters.push(waiter);
    });
    return withTimeout(arrived, timeoutMs, `${what} [buffered: ${this.items.map(this.describe).join(", ") || "nothing"}]`).finally(() => {
      const at = this.waiters.indexOf(waiter);
      if (at >= 0) this.waiters.splice(at, 1);
    });
  }

  /** Removes and returns every buffered item. */
  drain(): T[] {
    return this.items.splice(0);
  }

  /** Resolves with the final status; rejects after `timeoutMs`. */
  closed(timeoutMs = WAIT_MS): Promise<StatusObject> {
    if (this.status !== undefined) return Promise.resolve(this.status);
    return withTimeout(new Promise<StatusObject>((resolve) => this.endWaiters.push(resolve)), timeoutMs, "the end of the stream");
  }

  /** Asserts that no matching item arrives within `ms` (a bounded negative check). */
  async expectNone(match: (item: T) => boolean, ms: number, what: string): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, ms));
    const found = this.items.find(match);
    if (found !== undefined) throw new Error(`unexpected ${what}: ${this.describe(found)}`);
  }
}

// -------------------------------------------------------------------------------------------------
// Errors

/** A failed call as a client sees it: the gRPC status plus the decoded google.rpc details. */
export interface GrpcFailure {
  readonly code: GrpcStatus;
  readonly message: string;
  readonly details: StatusDetails;
}

/** The rich status of a grpc-js trailer, read with the decoder the SDK uses. */
function parseStatusDetails(metadata: Metadata): StatusDetails | undefined {
  const value = metadata.get(STATUS_DETAILS_KEY)[0];
  const st = value instanceof Uint8Array ? decodeStatus(value) : undefined;
  return st === undefined ? undefined : readStatusDetails(st);
}

function failureOf(status: { code: number; details: string; metadata?: Metadata }): GrpcFailure {
  const details = status.metadata === undefined ? undefined : parseStatusDetails(status.metadata);
  if (details === undefined) throw new Error(`status ${GrpcStatus[status.code]} (${status.details}) carries no google.rpc.Status details`);
  // The rich status and the plain status must agree (AIP-193).
  expect(details.code).toBe(status.code);
  expect(details.domain).toBe(ERROR_DOMAIN);
  return { code: status.code, message: status.details, details };
}

/** Asserts that `promise` fails with `code` and returns the status with its decoded details. */
export async function expectGrpcError(promise: Promise<unknown>, code: GrpcStatus): Promise<GrpcFailure> {
  let error: unknown;
  try {
    const value = await promise;
    throw new Error(`expected ${GrpcStatus[code]}, but the call succeeded with ${describeValue(value)}`);
  } catch (err) {
    error = err;
  }
  const e = error as { code?: number; details?: string; metadata?: Metadata };
  if (typeof e.code !== "number" || !(e.metadata instanceof Metadata)) throw error;
  expect(GrpcStatus[e.code], `status message: ${e.details}`).toBe(GrpcStatus[code]);
  return failureOf({ code: e.code, details: e.details ?? "", metadata: e.metadata });
}

/** The decoded details of a stream's final status (which must carry them). */
export function streamFailure(status: StatusObject): GrpcFailure {
  return failureOf(status);
}

/** Decodes a `google.rpc.Status` carried inside a message (CommandResult.error, ReplyRejected.status). */
export function inlineFailure(st: Status): StatusDetails {
  const details = readStatusDetails(st);
  expect(details.domain).toBe(ERROR_DOMAIN);
  return details;
}

function describeValue(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === "bigint" ? `${v}n` : v))?.slice(0, 300) ?? String(value);
}

// -------------------------------------------------------------------------------------------------
// The typed client

type Methods = typeof IntrospectionService.method;
/** Names of the unary methods (`readPhysicalMemory`, `getVm`, …). */
export type UnaryMethod = { [K in keyof Methods]: Methods[K]["methodKind"] extends "unary" ? K : never }[keyof Methods];
/** The init shape of a method's request (plain object, bigint for u64). */
export type RequestOf<K extends keyof Methods> = MessageInitShape<Methods[K]["input"]>;
/** A method's response message. */
export type ResponseOf<K extends keyof Methods> = MessageShape<Methods[K]["output"]>;

/** Per-call options. */
export interface CallOptions {
  /** Sent as `kvmi-session-id` metadata (the controller's session id on mutating RPCs). */
  readonly sessionId?: string;
  readonly deadlineMs?: number;
}

const GenericClient = makeGenericClientConstructor(createServiceDefinition(IntrospectionService) as never, "IntrospectionService");

type RawClient = Client & Record<string, (...args: unknown[]) => unknown>;

/** A kvmi.v1.IntrospectionService client over a real gRPC channel. */
export class IntrospectionClient {
  readonly raw: RawClient;
  private readonly streams = new Set<{ cancel(): void }>();

  constructor(target: string, creds: ChannelCredentials = credentials.createInsecure(), options: ChannelOptions = {}) {
    this.raw = new GenericClient(target, creds, options) as unknown as RawClient;
  }

  /** Calls a unary RPC; rejects with the grpc-js ServiceError. */
  unary<K extends UnaryMethod>(method: K, request: RequestOf<K>, options: CallOptions = {}): Promise<ResponseOf<K>> {
    const schema = IntrospectionService.method[method].input;
    const message = create(schema as never, request as never);
    const metadata = new Metadata();
    if (options.sessionId !== undefined) metadata.set(SESSION_ID_METADATA, options.sessionId);
    return new Promise((resolve, reject) => {
      this.raw[method]!(message, metadata, { deadline: Date.now() + (options.deadlineMs ?? WAIT_MS) }, (err: Error | null, response: ResponseOf<K>) =>
        err ? reject(err) : resolve(response),
      );
    });
  }

  /** Opens a Session stream (not attached yet). */
  openSession(): SessionClient {
    const stream = this.raw["session"]!(new Metadata()) as ClientDuplexStream<SessionRequest, SessionResponse>;
    const session = new SessionClient(stream);
    this.streams.add(stream);
    return session;
  }

  /** Opens a session and attaches; rejects with the stream's status if the bridge refuses. */
  async attach(vm: string, role: Role, options: AttachOptions = {}): Promise<SessionClient> {
    const session = this.openSession();
    await session.attach(vm, role, options);
    return session;
  }

  /** Starts WatchVms; the queue receives every WatchVmsResponse. */
  watchVms(name = ""): { queue: StreamQueue<WatchVmsResponse>; cancel(): void } {
    const stream = this.raw["watchVms"]!(create(WatchVmsRequestSchema, { name }), new Metadata()) as ClientReadableStream<WatchVmsResponse>;
    const queue = new StreamQueue<WatchVmsResponse>((r) => `${r.change?.type}:${r.change?.vm?.name}#${r.change?.vm?.generation}`);
    feed(stream, queue);
    this.streams.add(stream);
    return { queue, cancel: () => stream.cancel() };
  }

  /** Runs DumpMemory to the end and returns every response and the final status. */
  async dumpMemory(request: RequestOf<"dumpMemory">, timeoutMs = WAIT_MS * 2): Promise<{ responses: DumpMemoryResponse[]; status: StatusObject }> {
    const stream = this.raw["dumpMemory"]!(create(DumpMemoryRequestSchema, request), new Metadata()) as ClientReadableStream<DumpMemoryResponse>;
    const queue = new StreamQueue<DumpMemoryResponse>((r) => `chunk@0x${r.gpa.toString(16)}`);
    feed(stream, queue);
    this.streams.add(stream);
    const status = await queue.closed(timeoutMs);
    return { responses: queue.drain(), status };
  }

  /** Cancels every stream this client opened and closes the channel. */
  close(): void {
    for (const stream of this.streams) stream.cancel();
    this.streams.clear();
    this.raw.close();
  }
}

function feed<T>(stream: ClientReadableStream<T> | ClientDuplexStream<unknown, T>, queue: StreamQueue<T>): void {
  stream.on("data", (item: T) => queue.push(item));
  // grpc-js emits 'error' for a non-OK status and always 'status'; the listener keeps 'error'
  // from being thrown, the status is what the tests look at.
  stream.on("error", () => undefined);
  stream.on("status", (status: StatusObject) => queue.end(status));
}

type ResponseCase = NonNullable<SessionResponse["message"]["case"]>;
type ResponseValue<C extends ResponseCase> = Extract<SessionResponse["message"], { case: C }>["value"];
/** The init shape of a SessionCommand's `request` oneof. */
export type SessionCommandRequest = NonNullable<MessageInitShape<typeof SessionCommandSchema>["request"]>;

/** One Session stream, driven by a test. */
/** What a test may set on Attach. */
export interface AttachOptions {
  readonly eventDeadlineMs?: number;
  readonly eventFilter?: MessageInitShape<typeof EventFilterSchema>;
  /** Attach.event_batches: events of a turn may come as one EventBatch. */
  readonly eventBatches?: boolean;
}

export class SessionClient {
  readonly queue: StreamQueue<SessionResponse>;
  attached: Attached | undefined;
  private nextId = 1n;

  constructor(readonly stream: ClientDuplexStream<SessionRequest, SessionResponse>) {
    this.queue = new StreamQueue<SessionResponse>((r) =>
      r.message.case === "event" ? `event(${describeEvent(r.message.value)})` : String(r.message.case),
    );
    feed(stream, this.queue);
  }

  /** The session id the bridge assigned (after attach). */
  get id(): string {
    return this.attached!.session!.sessionId;
  }

  send(message: MessageInitShape<typeof SessionRequestSchema>["message"]): void {
    this.stream.write(create(SessionRequestSchema, { message } as never));
  }

  async attach(vm: string, role: Role, options: AttachOptions = {}): Promise<Attached> {
    const eventDeadline =
      options.eventDeadlineMs === undefined
        ? undefined
        : { seconds: BigInt(Math.floor(options.eventDeadlineMs / 1000)), nanos: (options.eventDeadlineMs % 1000) * 1e6 };
    this.send({
      case: "attach",
      value: {
        vm,
        role,
        ...(eventDeadline && { eventDeadline }),
        ...(options.eventFilter && { eventFilter: options.eventFilter }),
        ...(options.eventBatches && { eventBatches: true }),
      },
    });
    try {
      this.attached = await this.next("attached");
    } catch (err) {
      const status = this.queue.ended;
      if (status !== undefined && status.code !== GrpcStatus.OK) {
        throw Object.assign(new Error(status.details), status);
      }
      throw err;
    }
    return this.attached;
  }

  /** Takes the first message of the given kind (optionally matching), leaving the others queued. */
  async next<C extends ResponseCase>(kind: C, match: (value: ResponseValue<C>) => boolean = () => true, timeoutMs = WAIT_MS): Promise<ResponseValue<C>> {
    const response = await this.queue.take(
      (r) => r.message.case === kind && match(r.message.value as ResponseValue<C>),
      `a ${kind} message`,
      timeoutMs,
    );
    return response.message.value as ResponseValue<C>;
  }

  /** Takes the next event, optionally of one type. */
  event(match: (event: Event) => boolean = () => true, timeoutMs = WAIT_MS): Promise<Event> {
    return this.next("event", match, timeoutMs);
  }

  /** Sends a command with a fresh id and waits for its result. */
  async command(request: SessionCommandRequest, timeoutMs = WAIT_MS): Promise<CommandResult> {
    const id = this.nextId++;
    this.send({ case: "command", value: { id, request } as never });
    return this.next("commandResult", (r) => r.id === id, timeoutMs);
  }

  /** Sends a command and expects its success; returns the result value. */
  async ok(request: SessionCommandRequest, timeoutMs = WAIT_MS): Promise<CommandResult["result"]> {
    const result = await this.command(request, timeoutMs);
    if (result.result.case === "error") {
      throw new Error(`${request.case} failed: ${GrpcStatus[result.result.value.code]} ${result.result.value.message}`);
    }
    expect(result.result.case).toBe(request.case);
    return result.result;
  }

  /** Answers an event. */
  reply(event: Pick<Event, "vcpu" | "seq">, action: EventAction, extra: { newVal?: bigint; registers?: MessageInitShape<typeof RegsSchema> | Regs } = {}): void {
    this.send({
      case: "eventReply",
      value: {
        vcpu: event.vcpu,
        seq: event.seq,
        action,
        ...(extra.newVal !== undefined && { newVal: extra.newVal }),
        ...(extra.registers !== undefined && { registers: extra.registers }),
      },
    });
  }

  /** Sends Release (the bridge ends the stream with OK). */
  release(): void {
    this.send({ case: "release", value: {} });
  }

  /** Resolves with the stream's final status. */
  closed(timeoutMs = WAIT_MS): Promise<StatusObject> {
    return this.queue.closed(timeoutMs);
  }

  /** Half-closes the client side. */
  end(): void {
    this.stream.end();
  }

  cancel(): void {
    this.stream.cancel();
  }
}

function describeEvent(event: Event): string {
  return `${event.payload.case ?? "?"} vcpu ${event.vcpu} seq ${event.seq}`;
}

// -------------------------------------------------------------------------------------------------
// Metrics

/** One scrape of the Prometheus text endpoint. */
export class MetricsScrape {
  private readonly samples: Array<{ name: string; labels: Record<string, string>; value: number }> = [];

  constructor(text: string) {
    for (const line of text.split("\n")) {
      if (line === "" || line.startsWith("#")) continue;
      const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
      if (match === null) continue;
      const labels: Record<string, string> = {};
      for (const pair of (match[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]!] = pair[2]!;
      this.samples.push({ name: match[1]!, labels, value: Number(match[3]) });
    }
  }

  /** The sum of every sample of `name` whose labels include `labels` (0 when there is none). */
  value(name: string, labels: Record<string, string> = {}): number {
    return this.samples
      .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
      .reduce((sum, s) => sum + s.value, 0);
  }

  /** Whether a sample of `name` exists at all. */
  has(name: string): boolean {
    return this.samples.some((s) => s.name === name);
  }
}

/** Fetches and parses the metrics endpoint. */
export async function scrapeMetrics(url: string): Promise<MetricsScrape> {
  const response = await fetch(url, { signal: AbortSignal.timeout(WAIT_MS) });
  expect(response.status).toBe(200);
  return new MetricsScrape(await response.text());
}

// -------------------------------------------------------------------------------------------------
// The harness

/** Options of one emulated VM (the harness supplies the endpoint and logger). */
export type VmSpec = Omit<EmulatedVmOptions, "logger">;

/** Options of {@link startHarness}. */
export interface HarnessOptions {
  /** The VMs: a count of default VMs, or one spec per VM. Default 1. */
  readonly vms?: number | readonly VmSpec[];
  /** Overrides of the per-VM defaults (2 vCPUs, 8 MiB, no workload, reconnect 50 ms). */
  readonly vmDefaults?: VmSpec;
  /** Extra bridge flags; each replaces the harness's default for the same flag. */
  readonly bridgeArgs?: readonly string[];
  /** Credentials of the default client (plaintext by default). */
  readonly clientCredentials?: ChannelCredentials;
  /** Channel options of the default client, e.g. the TLS target name override. */
  readonly clientOptions?: ChannelOptions;
  /** The cookie secret shared by bridge and VMs. */
  readonly secret?: Uint8Array;
  /** Wait until every VM is hooked (default true). */
  readonly waitForHook?: boolean;
  /** The bridge's logger (default: silent, or stderr with KVMI_E2E_LOG=1), e.g. to read its access lines. */
  readonly bridgeLogger?: Logger;
}

/** A running bridge with its VMs and a client. */
export interface Harness {
  readonly bridge: Bridge;
  readonly dir: string;
  readonly kvmiPath: string;
  readonly vms: readonly EmulatedVm[];
  /** The default client. */
  readonly client: IntrospectionClient;
  /** `vms/{uuid}` of VM `i`. */
  vmName(i: number): string;
  /** `vms/{uuid}/vcpus/{vcpu}` of VM `i`. */
  vcpuName(i: number, vcpu: number): string;
  /** A further client (closed by stop()). */
  connect(creds?: ChannelCredentials, options?: ChannelOptions): IntrospectionClient;
  /** Attaches a session with the default client (cancelled by closeSessions()/stop()). */
  attach(i: number, role: Role, options?: AttachOptions): Promise<SessionClient>;
  /** Cancels every session opened through {@link attach} and waits for the bridge to detach them. */
  closeSessions(): Promise<void>;
  /** Polls GetVm until VM `i` is hooked and serving, with at least `generation`. */
  waitHooked(i: number, generation?: number): Promise<Vm>;
  /** Scrapes the metrics endpoint. */
  metrics(): Promise<MetricsScrape>;
  /** Stops the bridge (idempotent; stop() calls it too). */
  stopBridge(): Promise<void>;
  /** Tears everything down; idempotent. */
  stop(): Promise<void>;
}

/**
 * The KVMI dialect of the harness's bridge listener and emulated VMs. The e2e suites run once per
 * dialect (vitest projects e2e, e2e-v12, e2e-kvmi-v7 set it; vitest.config.ts): a matrix, not copies.
 */
export const E2E_DIALECT: Dialect = dialectByName(process.env["KVMI_E2E_DIALECT"] ?? "v9", "KVMI_E2E_DIALECT");

/** The wire id of an event kind in {@link E2E_DIALECT} (the emulator's state holds wire ids). */
export function e2eEventId(kind: EventKind): number {
  const spec = eventByKind(E2E_DIALECT, kind);
  if (spec === undefined) throw new Error(`event ${kind} is not in ${E2E_DIALECT.name}`);
  return spec.id;
}

/** The wire id of a command op in {@link E2E_DIALECT} (the device manager's allow lists take wire ids). */
export function e2eCommandId(op: CommandOp): number {
  const spec = commandByOp(E2E_DIALECT, op);
  if (spec === undefined) throw new Error(`command ${op} is not in ${E2E_DIALECT.name}`);
  return spec.id;
}

const VM_DEFAULTS: VmSpec = { vcpus: 2, memoryMiB: 8, workload: false, reconnectMs: 50, unhookTimeoutMs: 10_000 };

/** The harness's bridge flags; a flag in HarnessOptions.bridgeArgs replaces its default. */
const BRIDGE_DEFAULTS: Readonly<Record<string, string>> = {
  "--grpc-listen": "127.0.0.1:0",
  "--metrics-listen": "127.0.0.1:0",
  "--request-timeout-ms": "5000",
  "--event-timeout-ms": "5000",
  "--unhook-deadline-ms": "2000",
  "--shutdown-grace-ms": "500",
};

function bridgeArgv(kvmiPath: string, extra: readonly string[]): string[] {
  const defaults = Object.entries(BRIDGE_DEFAULTS).filter(([flag]) => !extra.includes(flag));
  const dialect = extra.includes("--kvmi-dialect") ? [] : ["--kvmi-dialect", E2E_DIALECT.name];
  return [...defaults.flat(), ...dialect, "--kvmi-listen", `unix:${kvmiPath}`, ...extra];
}

/**
 * The logger of the bridge and the emulated VMs: silent, or info, warnings and errors on stderr when `KVMI_E2E_LOG=1` (to see
 * why a kernel side closed a tool's socket while debugging a failing e2e test).
 */
const E2E_LOGGER: Logger = process.env["KVMI_E2E_LOG"] ? stderrLogger({}) : silentLogger;

function stderrLogger(bindings: Record<string, unknown>): Logger {
  const write = (level: string) => (fields: Record<string, unknown>, message?: string) => {
    const line = { level, ...bindings, ...fields, ...(message !== undefined && { msg: message }) };
    process.stderr.write(`${JSON.stringify(line, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v instanceof Error ? v.message : v))}\n`);
  };
  const noop = (): void => undefined;
  return { trace: noop, debug: noop, info: write("info"), warn: write("warn"), error: write("error"), child: (more) => stderrLogger({ ...bindings, ...more }) };
}

/** Starts a bridge with emulated VMs; by default waits until every VM is hooked. */
export async function startHarness(options: HarnessOptions = {}): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), "kvmi-e2e-"));
  const kvmiPath = join(dir, "kvmi.sock");
  const config = loadConfigOrThrow({
    argv: bridgeArgv(kvmiPath, options.bridgeArgs ?? []),
    env: {},
    cwd: dir,
  });
  let bridge: Bridge;
  try {
    bridge = await startBridge({ config, logger: options.bridgeLogger ?? E2E_LOGGER, ...(options.secret && { secret: options.secret }) });
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const specs = typeof options.vms === "object" ? options.vms : Array.from({ length: options.vms ?? 1 }, () => ({}));
  const vms = specs.map((spec, i) =>
    createEmulatedVm(
      { kind: "unix", path: kvmiPath },
      { name: `e2e-${i}`, dialect: E2E_DIALECT, logger: E2E_LOGGER, ...VM_DEFAULTS, ...options.vmDefaults, ...(options.secret && { secret: options.secret }), ...spec },
    ),
  );
  const clients: IntrospectionClient[] = [];
  const sessions: SessionClient[] = [];
  const connect = (creds?: ChannelCredentials, channelOptions?: ChannelOptions): IntrospectionClient => {
    const client = new IntrospectionClient(bridge.grpcTarget, creds ?? options.clientCredentials, channelOptions ?? options.clientOptions);
    clients.push(client);
    return client;
  };
  const client = connect();
  let bridgeStopped: Promise<void> | undefined;
  let stopped: Promise<void> | undefined;
  const vmName = (i: number): string => `vms/${vms[i]!.uuid}`;

  const harness: Harness = {
    bridge,
    dir,
    kvmiPath,
    vms,
    client,
    vmName,
    vcpuName: (i, vcpu) => `${vmName(i)}/vcpus/${vcpu}`,
    connect,
    async attach(i, role, attachOptions) {
      const session = client.openSession();
      sessions.push(session);
      await session.attach(vmName(i), role, attachOptions);
      return session;
    },
    async closeSessions() {
      const open = sessions.splice(0);
      for (const session of open) session.cancel();
      await Promise.all(open.map((s) => s.closed().catch(() => undefined)));
      // The bridge detaches asynchronously (and undoes the controller's ledger): wait for it.
      await waitUntil(
        () => bridge.hosts.all().every((host) => host.sessions.length === 0 && host.hookLedger.isEmpty),
        "every session detached and every ledger undone",
      );
    },
    waitHooked(i, generation = 1) {
      const uuid = vms[i]!.uuid;
      return waitUntil(
        async () => {
          const { vm } = await client.unary("getVm", { name: vmName(i) }, { deadlineMs: 1000 });
          const host = bridge.hosts.get(uuid);
          return vm !== undefined && vm.state === State.HOOKED && vm.generation >= generation && host?.isServing === true ? vm : undefined;
        },
        `VM ${i} hooked (generation >= ${generation})`,
      );
    },
    metrics: () => scrapeMetrics(bridge.metricsUrl!),
    stopBridge() {
      bridgeStopped ??= bridge.stop();
      return bridgeStopped;
    },
    stop() {
      stopped ??= (async () => {
        for (const session of sessions.splice(0)) session.cancel();
        for (const c of clients.splice(0)) c.close();
        await Promise.all(vms.map((vm) => vm.stop()));
        await harness.stopBridge();
        rmSync(dir, { recursive: true, force: true });
      })();
      return stopped;
    },
  };
  try {
    for (const vm of vms) vm.start();
    if (options.waitForHook !== false) for (let i = 0; i < vms.length; i++) await harness.waitHooked(i);
  } catch (err) {
    await harness.stop();
    throw err;
  }
  return harness;
}

/** The event actions, shorter. */
export const CONTINUE = EventAction.CONTINUE;
export const RETRY = EventAction.RETRY;
export const CRASH = EventAction.CRASH;

/** Runs a guest operation and waits (bounded) for it to settle. */
export function settle<T>(operation: Promise<T>, what: string, timeoutMs = WAIT_MS): Promise<T> {
  return withTimeout(operation, timeoutMs, what);
}

export { Role };
