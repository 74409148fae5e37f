// SPDX-License-Identifier: Apache-2.0
/**
 * The measuring client's connections: the bridge (`kvmi.v1.IntrospectionService` with the
 * protobuf-es messages a real tool uses, encoded and decoded by `@kvmi/proto/binary` as the SDK
 * does) and the bare echo (raw bytes). Both are plain grpc-js
 * `Client`s with the same channel options over TCP loopback.
 */
import { create } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Client, credentials, Metadata } from "@grpc/grpc-js";
import type { ClientDuplexStream, MethodDefinition, ServiceError } from "@grpc/grpc-js";
import { EventAction, IntrospectionService, Role, SessionRequestSchema } from "@kvmi/proto";
import type { CommandResult, DumpMemoryRequest, DumpMemoryResponse, Event, SessionCommandSchema, SessionRequest, SessionResponse } from "@kvmi/proto";
import { createServiceDefinition } from "@kvmi/service/testing";
import { CLIENT_OPTIONS, ECHO_SERVICE } from "./echo-protocol.js";

/** The bridge's grpc-js service definition. */
export const BRIDGE = createServiceDefinition(IntrospectionService);

/** Wire size of one request and its response, as the bridge and the client encode them. */
export interface MessageSizes {
  readonly request: number;
  readonly response: number;
}

function unaryCall<Req, Res>(client: Client, m: MethodDefinition<Req, Res>, request: Req, serialize = m.requestSerialize, deserialize = m.responseDeserialize): Promise<Res> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(m.path, serialize, deserialize, request, new Metadata(), {}, (err: ServiceError | null, res?: Res) =>
      err ? reject(err) : resolve(res!),
    );
  });
}

/** A client of the bridge that can record the wire size of the messages it exchanges. */
export class BridgeClient {
  readonly client: Client;
  /** While true, sizes of labelled calls and session messages are recorded in {@link sizes}. */
  capture = false;
  private readonly requestSizes = new Map<string, number>();
  private readonly responseSizes = new Map<string, number>();

  constructor(target: string) {
    this.client = new Client(target, credentials.createInsecure(), CLIENT_OPTIONS);
  }

  /** The recorded wire sizes (gRPC message payload, without the 5-byte frame header). */
  sizeOf(requestLabel: string, responseLabel = requestLabel): MessageSizes {
    const request = this.requestSizes.get(requestLabel);
    const response = this.responseSizes.get(responseLabel);
    if (request === undefined || response === undefined) throw new Error(`no message sizes recorded for ${requestLabel} / ${responseLabel}`);
    return { request, response };
  }

  /** One unary RPC; with `label` and {@link capture}, records its message sizes. */
  /** Runs one DumpMemory to its end; resolves with the data bytes received. */
  dump(request: DumpMemoryRequest): Promise<number> {
    return new Promise((resolve, reject) => {
      let bytes = 0;
      const call = this.client.makeServerStreamRequest(BRIDGE.dumpMemory.path, BRIDGE.dumpMemory.requestSerialize, BRIDGE.dumpMemory.responseDeserialize, request);
      call.on("data", (m: DumpMemoryResponse) => (bytes += m.data.length));
      call.on("error", reject);
      call.on("end", () => resolve(bytes));
    });
  }

  unary<Req, Res>(m: MethodDefinition<Req, Res>, request: Req, label?: string): Promise<Res> {
    if (!this.capture || label === undefined) return unaryCall(this.client, m, request);
    return unaryCall(
      this.client,
      m,
      request,
      (value) => {
        const b = m.requestSerialize(value);
        this.requestSizes.set(label, b.length);
        return b;
      },
      (b) => {
        this.responseSizes.set(label, b.length);
        return m.responseDeserialize(b);
      },
    );
  }

  /** Records the size of a session message under its label (while capturing). */
  noteSession(direction: "request" | "response", label: string, bytes: number): void {
    (direction === "request" ? this.requestSizes : this.responseSizes).set(label, bytes);
  }

  close(): void {
    this.client.close();
  }
}

/** Label of a session message: `command:getVcpuInfo`, `event:cr`, `eventReply`, … */
function requestLabel(r: SessionRequest): string {
  return r.message.case === "command" ? `session:${r.message.value.request.case}` : `session:${r.message.case}`;
}
function responseLabel(r: SessionResponse): string {
  const m = r.message;
  if (m.case === "commandResult") return `session:${m.value.result.case}`;
  if (m.case === "event") return `session:event:${m.value.payload.case}`;
  if (m.case === "events") return `session:events`;
  return `session:${m.case}`;
}

type CommandRequest = NonNullable<MessageInitShape<typeof SessionCommandSchema>["request"]>;

/**
 * A controller (or observer) session. It answers every event with CONTINUE at once (CR/MSR
 * `new_val` left unset: the guest's own value) unless reading is paused for the slow-client test.
 */
export class SessionClient {
  readonly stream: ClientDuplexStream<SessionRequest, SessionResponse>;
  readonly attached: Promise<void>;
  private readonly pending = new Map<bigint, (result: CommandResult["result"]) => void>();
  private nextId = 1n;
  /** Events received and events answered. */
  events = 0;
  replies = 0;
  /** Events whose reply deadline had already passed when they were read (not answered). */
  stale = 0;
  error: Error | undefined;

  constructor(
    owner: BridgeClient,
    readonly vm: string,
    role: Role = Role.CONTROLLER,
    eventDeadlineMs?: number,
    /** Attach with `event_batches` and answer a batch with one EventReplyBatch, as the SDK does. */
    eventBatches = false,
  ) {
    const serialize = (value: SessionRequest): Buffer => {
      const b = BRIDGE.session.requestSerialize(value);
      if (owner.capture) owner.noteSession("request", requestLabel(value), b.length);
      return b;
    };
    const deserialize = (b: Buffer): SessionResponse => {
      const value = BRIDGE.session.responseDeserialize(b);
      if (owner.capture) owner.noteSession("response", responseLabel(value), b.length);
      return value;
    };
    this.stream = owner.client.makeBidiStreamRequest(BRIDGE.session.path, serialize, deserialize, new Metadata(), {});
    let attached!: () => void;
    let failed!: (err: Error) => void;
    this.attached = new Promise<void>((resolve, reject) => {
      attached = resolve;
      failed = reject;
    });
    this.stream.on("data", (response: SessionResponse) => {
      const m = response.message;
      switch (m.case) {
        case "attached":
          attached();
          return;
        case "commandResult": {
          const done = this.pending.get(m.value.id);
          this.pending.delete(m.value.id);
          done?.(m.value.result);
          return;
        }
        case "event":
          this.events++;
          this.answer(m.value);
          return;
        case "events":
          this.events += m.value.events.length;
          this.answerAll(m.value.events);
          return;
        default:
          return;
      }
    });
    this.stream.on("error", (err: Error) => {
      this.error = err;
      failed(err);
    });
    const eventDeadline = eventDeadlineMs === undefined ? undefined : durationFromMs(eventDeadlineMs);
    this.stream.write(create(SessionRequestSchema, { message: { case: "attach", value: { vm, role, eventBatches, ...(eventDeadline && { eventDeadline }) } } }));
  }

  /** Answers a batch of events with one message (the stale ones left unanswered, as one by one). */
  private answerAll(events: readonly Event[]): void {
    const now = Date.now();
    const replies = [];
    for (const event of events) {
      if (event.replyDeadline !== undefined && timestampMs(event.replyDeadline) < now) {
        this.stale++;
        continue;
      }
      replies.push({ vcpu: event.vcpu, seq: event.seq, action: EventAction.CONTINUE });
    }
    if (replies.length === 0) return;
    this.stream.write(create(SessionRequestSchema, { message: { case: "eventReplies", value: { replies } } }));
    this.replies += replies.length;
  }

  private answer(event: Event): void {
    if (event.replyDeadline !== undefined && timestampMs(event.replyDeadline) < Date.now()) {
      this.stale++;
      return;
    }
    this.stream.write(
      create(SessionRequestSchema, {
        message: { case: "eventReply", value: { vcpu: event.vcpu, seq: event.seq, action: EventAction.CONTINUE } },
      }),
    );
    this.replies++;
  }

  /** Runs one command on the stream; resolves with its result (or error status). */
  command(request: CommandRequest): Promise<CommandResult["result"]> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.stream.write(create(SessionRequestSchema, { message: { case: "command", value: { id, request } } }));
    });
  }

  /** Like {@link command}, but throws when the result is an error. */
  async commandOk(request: CommandRequest): Promise<CommandResult["result"]> {
    const result = await this.command(request);
    if (result.case === "error") throw new Error(`${request.case}: ${result.value.message}`);
    return result;
  }

  end(): void {
    this.stream.end();
  }
}

/** The bare echo's client. */
export class EchoClient {
  readonly client: Client;

  constructor(target: string) {
    this.client = new Client(target, credentials.createInsecure(), CLIENT_OPTIONS);
  }

  unary(request: Buffer): Promise<Buffer> {
    return unaryCall(this.client, ECHO_SERVICE.unary, request);
  }

  /** A bidi stream answering requests in order (so any number of lanes can share it). */
  bidi(): EchoStream {
    return new EchoStream(this.client);
  }

  /** Moves `total` bytes in messages of `size` over a server stream; resolves with the bytes seen. */
  stream(request: Buffer): Promise<number> {
    return new Promise((resolve, reject) => {
      let bytes = 0;
      const call = this.client.makeServerStreamRequest(ECHO_SERVICE.stream.path, ECHO_SERVICE.stream.requestSerialize, ECHO_SERVICE.stream.responseDeserialize, request, new Metadata(), {});
      call.on("data", (b: Buffer) => (bytes += b.length));
      call.on("error", reject);
      call.on("end", () => resolve(bytes));
    });
  }

  close(): void {
    this.client.close();
  }
}

/** One echo bidi stream; `roundTrip` resolves when the answer to that request arrives. */
export class EchoStream {
  private readonly call: ClientDuplexStream<Buffer, Buffer>;
  private readonly waiting: Array<() => void> = [];

  constructor(client: Client) {
    this.call = client.makeBidiStreamRequest(ECHO_SERVICE.bidi.path, ECHO_SERVICE.bidi.requestSerialize, ECHO_SERVICE.bidi.responseDeserialize, new Metadata(), {});
    this.call.on("data", () => this.waiting.shift()?.());
    this.call.on("error", () => undefined);
  }

  roundTrip(request: Buffer): Promise<void> {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.call.write(request);
    });
  }

  end(): void {
    this.call.end();
  }
}
