// SPDX-License-Identifier: Apache-2.0
/**
 * A plain grpc-js client of `kvmi.v1.IntrospectionService` and `grpc.health.v1.Health` for the
 * container tests, built from the generated protobuf-es descriptors in @kvmi/proto (the tests
 * reach the bridge only over its published port, like any remote tool).
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { Metadata, credentials, makeGenericClientConstructor } from "@grpc/grpc-js";
import type { Client, ClientDuplexStream, MethodDefinition, ServiceError } from "@grpc/grpc-js";
import { IntrospectionService, SessionRequestSchema } from "@kvmi/proto";
import type { SessionRequest, SessionResponse } from "@kvmi/proto";

type Methods = (typeof IntrospectionService)["method"];
type UnaryName = { [K in keyof Methods]: Methods[K]["methodKind"] extends "unary" ? K : never }[keyof Methods];

const definition: Record<string, MethodDefinition<unknown, unknown>> = {};
for (const method of IntrospectionService.methods) {
  const kind = method.methodKind;
  definition[method.localName] = {
    path: `/${IntrospectionService.typeName}/${method.name}`,
    requestStream: kind === "client_streaming" || kind === "bidi_streaming",
    responseStream: kind === "server_streaming" || kind === "bidi_streaming",
    requestSerialize: (value) => Buffer.from(toBinary(method.input, value as MessageShape<DescMessage>)),
    requestDeserialize: (bytes: Buffer) => fromBinary(method.input, bytes),
    responseSerialize: (value) => Buffer.from(toBinary(method.output, value as MessageShape<DescMessage>)),
    responseDeserialize: (bytes: Buffer) => fromBinary(method.output, bytes),
    originalName: method.name,
  };
}
const ClientCtor = makeGenericClientConstructor(definition, IntrospectionService.typeName);

/** A connected client. */
export interface KvmiClient {
  /** One unary RPC by its local name (`listVms`), with a 10 s deadline. */
  call<K extends UnaryName>(method: K, request: MessageInitShape<Methods[K]["input"]>): Promise<MessageShape<Methods[K]["output"]>>;
  /** Opens the bidirectional Session stream. */
  session(): ClientDuplexStream<SessionRequest, SessionResponse>;
  /** `grpc.health.v1.Health/Check` for `service` (`""`: the server). */
  health(service?: string): Promise<string>;
  close(): void;
}

const SERVING_STATUS = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

/** TLS for {@link connectKvmi}: the CA of the server certificate, a client pair for mTLS. */
export interface ClientTls {
  readonly ca: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
  /** The name the server certificate is checked against. */
  readonly serverName: string;
}

/** Connects (lazily, like every grpc-js client) to a target such as `127.0.0.1:32768`; plaintext without `tls`. */
export function connectKvmi(target: string, tls?: ClientTls): KvmiClient {
  const creds = tls === undefined ? credentials.createInsecure() : credentials.createSsl(tls.ca, tls.key ?? null, tls.cert ?? null);
  const options = tls === undefined ? {} : { "grpc.ssl_target_name_override": tls.serverName };
  const client = new ClientCtor(target, creds, options) as Client & Record<string, (...args: unknown[]) => unknown>;
  const deadline = (): { deadline: number } => ({ deadline: Date.now() + 10_000 });
  return {
    call(method, request) {
      const input = IntrospectionService.method[method].input;
      return new Promise((resolve, reject) => {
        client[method]!(create(input, request as never), new Metadata(), deadline(), (error: ServiceError | null, response: never) =>
          error ? reject(error) : resolve(response),
        );
      });
    },
    session: () => client.session!() as ClientDuplexStream<SessionRequest, SessionResponse>,
    health: (service = "") =>
      new Promise((resolve, reject) => {
        client.makeUnaryRequest(
          "/grpc.health.v1.Health/Check",
          (name: string) => Buffer.from(new BinaryWriter().tag(1, WireType.LengthDelimited).string(name).finish()),
          (bytes: Buffer) => {
            const reader = new BinaryReader(bytes);
            let value = 0;
            while (reader.pos < reader.len) {
              const [field, wireType] = reader.tag();
              if (field === 1) value = reader.int32();
              else reader.skip(wireType);
            }
            return SERVING_STATUS[value] ?? `UNRECOGNIZED(${value})`;
          },
          service,
          new Metadata(),
          deadline(),
          (error: ServiceError | null, value?: string) => (error ? reject(error) : resolve(value ?? "UNKNOWN")),
        );
      }),
    close: () => client.close(),
  };
}

/** A SessionRequest from its oneof case and value. */
export function sessionRequest(message: MessageInitShape<typeof SessionRequestSchema>["message"]): SessionRequest {
  return create(SessionRequestSchema, { message } as MessageInitShape<typeof SessionRequestSchema>);
}
