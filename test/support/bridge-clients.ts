// SPDX-License-Identifier: Apache-2.0
/**
 * The tests' clients of the bridge: unary calls, Session and WatchVms streams built from the
 * protobuf-es service descriptor over plain grpc-js, and a Prometheus metrics scrape.
 */
import type http2 from "node:http2";
import { create, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { credentials, makeGenericClientConstructor, Metadata, status as GrpcStatus } from "@grpc/grpc-js";
import type { ChannelCredentials, ChannelOptions, Client, ClientDuplexStream, ClientReadableStream, StatusObject } from "@grpc/grpc-js";
import { DumpMemoryRequestSchema, EventAction, IntrospectionService, Role, SessionRequestSchema, WatchVmsRequestSchema } from "@kvmi/proto";
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
  WatchVmsResponse,
} from "@kvmi/proto";
import { SESSION_ID_METADATA } from "@kvmi/service";
import { createServiceDefinition } from "@kvmi/service/testing";
import { expect } from "vitest";
import { StreamQueue, WAIT_MS } from "./waiting.js";

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
// A bare HTTP/2 client's call

/**
 * Starts a call of `method` (e.g. "DumpMemory") on a plain HTTP/2 session: writes the request's
 * gRPC frame and half-closes. No grpc-js on the client side (its readable stream queues 16
 * messages and frees its window as it likes), so a test decides exactly what the client takes.
 */
export function startBareCall<Desc extends DescMessage>(
  session: http2.ClientHttp2Session,
  method: string,
  schema: Desc,
  request: MessageInitShape<Desc>,
): http2.ClientHttp2Stream {
  const body = toBinary(schema, create(schema, request));
  // gRPC's length-prefixed message: no compression flag, 4-byte big-endian length, the bytes.
  const frame = Buffer.alloc(5 + body.length);
  frame.writeUInt32BE(body.length, 1);
  frame.set(body, 5);
  const stream = session.request({ ":method": "POST", ":path": `/${IntrospectionService.typeName}/${method}`, "content-type": "application/grpc", te: "trailers" });
  stream.end(frame);
  return stream;
}
