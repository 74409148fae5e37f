// SPDX-License-Identifier: Apache-2.0
// createGrpcServer against real grpc-js clients: health, reflection, access log + metrics, TLS,
// mTLS, unix sockets and graceful shutdown. Certificates are generated per run (testdata/test-pki.ts).
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { create, createFileRegistry, equals, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import type { FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { Client, Metadata, credentials, status } from "@grpc/grpc-js";
import type { ChannelCredentials, ClientDuplexStream, ServiceError } from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";
import {
  GetVersionRequestSchema,
  GetVersionResponseSchema,
  GetVmRequestSchema,
  IntrospectionService,
  file_kvmi_v1_introspection_service,
} from "@kvmi/proto";
import type { GetVersionResponse } from "@kvmi/proto";
import { createRootLogger, routeGrpcJsLogs } from "../log/index.js";
import { createBridgeMetrics } from "../metrics/index.js";
import { createServiceDefinition } from "../rpc/service-definition.js";
import type { ServiceImplementationFor } from "../rpc/service-definition.js";
import { createGrpcServer, fileDescriptorProtos } from "./index.js";
import type { BridgeGrpcServer, GrpcServerOptions } from "./index.js";
import { createTestPki } from "./testdata/test-pki.js";
import type { TestPki } from "./testdata/test-pki.js";

const definition = createServiceDefinition(IntrospectionService);
const SERVICE = "kvmi.v1.IntrospectionService";
const CALL_TIMEOUT_MS = 5_000;

const sessionsStarted = { count: 0 };

/** Handlers: GetVersion answers, GetVm never answers (deadline tests), Session stays open. */
const implementation: Partial<ServiceImplementationFor<typeof IntrospectionService>> = {
  getVersion(_call, callback) {
    callback(null, create(GetVersionResponseSchema, { version: 1, maxMsgSize: 8184 }));
  },
  getVm() {
    // Never answers: the client deadline ends the call.
  },
  session(call) {
    sessionsStarted.count++;
    call.on("end", () => call.end());
  },
};

type Config = GrpcServerOptions["config"];
const plainConfig: Config = {
  grpcListen: "127.0.0.1:0",
  tlsCert: undefined,
  tlsKey: undefined,
  tlsClientCa: undefined,
  allowInsecure: false,
  shutdownGraceMs: 1_000,
};

function captureLogger() {
  const lines: Array<Record<string, unknown>> = [];
  const logger = createRootLogger({ logLevel: "info" }, { destination: { write: (line: string) => void lines.push(JSON.parse(line)) } });
  return { logger, lines };
}

const servers: BridgeGrpcServer[] = [];
const clients: Client[] = [];

async function start(config: Partial<Config> = {}, extra: Partial<GrpcServerOptions> = {}) {
  const { logger, lines } = captureLogger();
  const metrics = createBridgeMetrics({ defaultMetrics: false });
  const bridge = createGrpcServer({
    config: { ...plainConfig, ...config },
    logger,
    metrics,
    services: [{ definition, implementation }],
    protoFileDescriptors: [file_kvmi_v1_introspection_service],
    ...extra,
  });
  servers.push(bridge);
  const { target, port } = await bridge.listen();
  return { bridge, target, port, lines, metrics };
}

function connect(target: string, creds: ChannelCredentials = credentials.createInsecure()): Client {
  // The test certificate names localhost; checking it by name avoids Node's warning about
  // TLS SNI with an IP address.
  const client = new Client(target, creds, { "grpc.ssl_target_name_override": "localhost" });
  clients.push(client);
  return client;
}

function deadline(ms = CALL_TIMEOUT_MS): Date {
  return new Date(Date.now() + ms);
}

/** grpc.health.v1.Health/Check, with the health service's own serializers. */
function healthCheck(client: Client, service = ""): Promise<string> {
  const check = healthService.Check!;
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      check.path,
      check.requestSerialize,
      check.responseDeserialize,
      { service },
      new Metadata(),
      { deadline: deadline() },
      (error, response) => (error ? reject(error) : resolve((response as { status: string }).status)),
    );
  });
}

function getVersion(client: Client): Promise<GetVersionResponse> {
  const method = definition.getVersion;
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(method.path, method.requestSerialize, method.responseDeserialize, create(GetVersionRequestSchema, {}), new Metadata(), { deadline: deadline() }, (error, response) =>
      error || !response ? reject(error) : resolve(response),
    );
  });
}

// grpc.reflection.v1 messages, hand-encoded: the reflection proto is not part of @kvmi/proto.
// ServerReflectionRequest: file_by_filename = 3, file_containing_symbol = 4, list_services = 7.
// ServerReflectionResponse: file_descriptor_response = 4 {repeated bytes = 1},
//   list_services_response = 6 {repeated ServiceResponse{name = 1} = 1}, error_response = 7.
type ReflectionAnswer = { services?: string[]; files?: Uint8Array[]; error?: string };

function encodeReflectionRequest(field: 3 | 4 | 7, value: string): Buffer {
  return Buffer.from(new BinaryWriter().tag(field, WireType.LengthDelimited).string(value).finish());
}

function decodeReflectionResponse(bytes: Buffer): ReflectionAnswer {
  const reader = new BinaryReader(bytes);
  const answer: ReflectionAnswer = {};
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 6) {
      const list = new BinaryReader(reader.bytes());
      answer.services = [];
      while (list.pos < list.len) {
        list.tag();
        const service = new BinaryReader(list.bytes());
        service.tag();
        answer.services.push(service.string());
      }
    } else if (field === 4) {
      const files = new BinaryReader(reader.bytes());
      answer.files = [];
      while (files.pos < files.len) {
        files.tag();
        answer.files.push(files.bytes());
      }
    } else if (field === 7) {
      const error = new BinaryReader(reader.bytes());
      while (error.pos < error.len) {
        const [f] = error.tag();
        if (f === 2) answer.error = error.string();
        else error.skip(WireType.Varint);
      }
    } else {
      reader.skip(wireType);
    }
  }
  return answer;
}

function reflectionStream(client: Client): {
  ask: (field: 3 | 4 | 7, value: string) => Promise<ReflectionAnswer>;
  stream: ClientDuplexStream<Buffer, ReflectionAnswer>;
} {
  const stream = client.makeBidiStreamRequest(
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    (value: Buffer) => value,
    decodeReflectionResponse,
    new Metadata(),
    { deadline: deadline() },
  );
  const waiting: Array<(answer: ReflectionAnswer) => void> = [];
  stream.on("data", (answer: ReflectionAnswer) => waiting.shift()?.(answer));
  stream.on("error", () => undefined);
  return {
    stream,
    ask: (field, value) =>
      new Promise((resolve) => {
        waiting.push(resolve);
        stream.write(encodeReflectionRequest(field, value));
      }),
  };
}

let pki: TestPki;
let scratch: string;

beforeAll(() => {
  pki = createTestPki(); // Fails with a clear message when the openssl CLI is missing.
  scratch = mkdtempSync(join(tmpdir(), "kvmi-bridge-grpc-test-"));
});

afterEach(async () => {
  for (const client of clients.splice(0)) client.close();
  await Promise.all(servers.splice(0).map((server) => server.shutdown(0)));
});

afterAll(() => {
  pki?.dispose();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

describe("health", () => {
  it("reports SERVING for the server and the API over a real client on 127.0.0.1:0", async () => {
    const { target, port } = await start();
    expect(target).toBe(`127.0.0.1:${port}`);
    expect(port).toBeGreaterThan(0);
    const client = connect(target);
    expect(await healthCheck(client, "")).toBe("SERVING");
    expect(await healthCheck(client, SERVICE)).toBe("SERVING");
    await expect(healthCheck(client, "no.such.Service")).rejects.toMatchObject({ code: status.NOT_FOUND });
  });

  it("flips to NOT_SERVING through the setter and at shutdown, telling Watch streams", async () => {
    const { bridge, target } = await start();
    const client = connect(target);
    bridge.health.setServing(false);
    expect(await healthCheck(client, SERVICE)).toBe("NOT_SERVING");
    bridge.health.setServing(true);

    const watch = healthService.Watch!;
    const stream = client.makeServerStreamRequest(watch.path, watch.requestSerialize, watch.responseDeserialize, { service: "" });
    const seen: string[] = [];
    const notServing = new Promise<void>((resolve) => {
      stream.on("data", (message: { status: string }) => {
        seen.push(message.status);
        if (message.status === "NOT_SERVING") resolve();
      });
    });
    stream.on("error", () => undefined);
    await vi.waitFor(() => expect(seen).toEqual(["SERVING"]));
    expect(bridge.shuttingDown.aborted).toBe(false);
    const stopped = bridge.shutdown(200); // The open Watch stream keeps it from finishing early.
    expect(bridge.shuttingDown.aborted).toBe(true);
    await notServing;
    expect(await stopped).toEqual({ forced: true });
    expect(bridge.shutdown()).toBe(bridge.shutdown());
  });
});

describe("reflection", () => {
  it("lists the API and health services and serves complete, faithful file descriptors", async () => {
    const warn = vi.spyOn(console, "warn");
    const { target } = await start();
    expect(warn).not.toHaveBeenCalled(); // @grpc/reflection warns about unresolvable type references.
    warn.mockRestore();
    const { ask, stream } = reflectionStream(connect(target));

    const listed = await ask(7, "*");
    expect(listed.services).toEqual(expect.arrayContaining([SERVICE, "grpc.health.v1.Health"]));

    // Like grpcurl: fetch the file containing the symbol, then any missing import by file name.
    const files = new Map<string, FileDescriptorProto>();
    const add = (answer: ReflectionAnswer) => {
      expect(answer.error).toBeUndefined();
      for (const bytes of answer.files ?? []) {
        const file = fromBinary(FileDescriptorProtoSchema, bytes);
        files.set(file.name, file);
      }
    };
    add(await ask(4, SERVICE));
    expect(files.has("kvmi/v1/introspection_service.proto")).toBe(true);
    for (let missing = [...files.values()].flatMap((f) => f.dependency).filter((d) => !files.has(d)); missing.length > 0; ) {
      for (const name of missing) add(await ask(3, name));
      missing = [...files.values()].flatMap((f) => f.dependency).filter((d) => !files.has(d));
    }
    stream.end();

    // Building a registry resolves every import, which proves the closure is complete.
    const ordered: FileDescriptorProto[] = [];
    const visit = (name: string): void => {
      const file = files.get(name)!;
      if (ordered.includes(file)) return;
      file.dependency.forEach(visit);
      ordered.push(file);
    };
    visit("kvmi/v1/introspection_service.proto");
    const registry = createFileRegistry(create(FileDescriptorSetSchema, { file: ordered }));
    const service = registry.getService(SERVICE);
    expect(service?.methods.map((m) => m.name)).toEqual(IntrospectionService.methods.map((m) => m.name));
    expect(registry.getMessage("kvmi.v1.GetVmRequest")?.fields.map((f) => f.name)).toEqual(
      IntrospectionService.method.getVm.input.fields.map((f) => f.name),
    );
    // Byte-for-byte the descriptors compiled into @kvmi/proto (proto3 optional, options included).
    for (const bytes of fileDescriptorProtos([file_kvmi_v1_introspection_service])) {
      const original = fromBinary(FileDescriptorProtoSchema, bytes);
      expect(equals(FileDescriptorProtoSchema, files.get(original.name)!, original), original.name).toBe(true);
    }

    const missingSymbol = await reflectionStream(connect(target)).ask(4, "kvmi.v1.Nope");
    expect(missingSymbol.error).toMatch(/Symbol not found/);
  });

  it("encodes the transitive import closure, dependencies first, once each", () => {
    const names = fileDescriptorProtos([file_kvmi_v1_introspection_service, file_kvmi_v1_introspection_service]).map(
      (bytes) => fromBinary(FileDescriptorProtoSchema, bytes).name,
    );
    expect(new Set(names).size).toBe(names.length);
    expect(names.at(-1)).toBe("kvmi/v1/introspection_service.proto");
    expect(names).toEqual(expect.arrayContaining(["google/protobuf/timestamp.proto", "google/api/field_behavior.proto", "google/protobuf/descriptor.proto"]));
    expect(names.indexOf("google/protobuf/descriptor.proto")).toBeLessThan(names.indexOf("google/api/field_behavior.proto"));
  });
});

describe("access log and request metrics (server interceptor)", () => {
  it("writes one line per RPC with method, status, duration and peer, and counts it", async () => {
    const { target, lines, metrics } = await start();
    const client = connect(target);
    expect((await getVersion(client)).maxMsgSize).toBe(8184);

    const getVm = definition.getVm;
    await expect(
      new Promise((resolve, reject) =>
        client.makeUnaryRequest(getVm.path, getVm.requestSerialize, getVm.responseDeserialize, create(GetVmRequestSchema, { name: "vms/a" }), new Metadata(), { deadline: deadline(100) }, (error, response) =>
          error ? reject(error) : resolve(response),
        ),
      ),
    ).rejects.toMatchObject({ code: status.DEADLINE_EXCEEDED });

    const unimplemented = definition.listVms;
    await expect(
      new Promise((resolve, reject) =>
        client.makeUnaryRequest(unimplemented.path, unimplemented.requestSerialize, unimplemented.responseDeserialize, create(IntrospectionService.method.listVms.input, {}), (error: ServiceError | null, response?: unknown) =>
          error ? reject(error) : resolve(response),
        ),
      ),
    ).rejects.toMatchObject({ code: status.UNIMPLEMENTED });

    const session = client.makeBidiStreamRequest(definition.session.path, definition.session.requestSerialize, definition.session.responseDeserialize);
    session.on("error", () => undefined);
    await vi.waitFor(() => expect(sessionsStarted.count).toBe(1));
    session.cancel();

    const access = async (method: string) => {
      await vi.waitFor(() => expect(lines.find((l) => l.method === method)).toBeDefined());
      return lines.find((l) => l.method === method)!;
    };
    const line = await access(definition.getVersion.path);
    expect(line).toMatchObject({ level: "info", component: "grpc-access", grpcCode: "OK", requestMessages: 1, responseMessages: 1, msg: "rpc finished" });
    expect(line.peer).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(typeof line.durationMs).toBe("number");
    expect(await access(definition.getVm.path)).toMatchObject({ grpcCode: "DEADLINE_EXCEEDED" });
    expect(await access(definition.listVms.path)).toMatchObject({ grpcCode: "UNIMPLEMENTED" });
    expect(await access(definition.session.path)).toMatchObject({ grpcCode: "CANCELLED" });

    const counted = await metrics.grpcRequestsTotal.get();
    const count = (method: string, code: string) =>
      counted.values.find((v) => v.labels.method === method && v.labels.code === code)?.value;
    expect(count(definition.getVersion.path, "OK")).toBe(1);
    expect(count(definition.getVm.path, "DEADLINE_EXCEEDED")).toBe(1);
  });

  it("can leave probe traffic out of the log while still counting it", async () => {
    const { target, lines, metrics } = await start({}, { accessLogSkipMethods: ["/grpc.health.v1.Health/Check"] });
    await healthCheck(connect(target));
    await vi.waitFor(async () => expect((await metrics.grpcRequestsTotal.get()).values).toHaveLength(1));
    expect(lines.filter((l) => l.msg === "rpc finished")).toEqual([]);
  });
});

describe("TLS", () => {
  it("serves TLS with a self-signed CA, and refuses plaintext clients", async () => {
    const { target, bridge } = await start({ tlsCert: pki.server.cert, tlsKey: pki.server.key, grpcListen: "127.0.0.1:0" });
    expect(bridge.tlsMode).toBe("tls");
    const ca = readFileSync(pki.ca.cert);
    expect(await healthCheck(connect(target, credentials.createSsl(ca)), SERVICE)).toBe("SERVING");
    await expect(healthCheck(connect(target))).rejects.toMatchObject({ code: status.UNAVAILABLE });
  });

  it("requires a client certificate from the client CA under mTLS", async () => {
    const { target, bridge } = await start({
      grpcListen: "0.0.0.0:0", // Non-loopback is fine with TLS.
      tlsCert: pki.server.cert,
      tlsKey: pki.server.key,
      tlsClientCa: pki.ca.cert,
    });
    expect(bridge.tlsMode).toBe("mtls");
    const port = target.split(":").at(-1);
    const local = `127.0.0.1:${port}`;
    const ca = readFileSync(pki.ca.cert);
    const withCert = credentials.createSsl(ca, readFileSync(pki.client.key), readFileSync(pki.client.cert));
    expect(await healthCheck(connect(local, withCert), SERVICE)).toBe("SERVING");
    await expect(healthCheck(connect(local, credentials.createSsl(ca)))).rejects.toMatchObject({ code: status.UNAVAILABLE });
    const rogue = credentials.createSsl(ca, readFileSync(pki.rogueClient.key), readFileSync(pki.rogueClient.cert));
    await expect(healthCheck(connect(local, rogue))).rejects.toMatchObject({ code: status.UNAVAILABLE });
  });

  it("refuses plaintext on a non-loopback address unless allowInsecure", () => {
    const options = { logger: captureLogger().logger, services: [], protoFileDescriptors: [] };
    expect(() => createGrpcServer({ ...options, config: { ...plainConfig, grpcListen: "0.0.0.0:0" } })).toThrow(/refusing plaintext/);
    expect(() => createGrpcServer({ ...options, config: { ...plainConfig, grpcListen: "0.0.0.0:0", allowInsecure: true } })).not.toThrow();
  });
});

describe("unix sockets and shutdown", () => {
  it("listens on unix:PATH, creating the directory and replacing a stale socket", async () => {
    const path = join(scratch, "run", "grpc.sock");
    const { bridge, target, lines } = await start({ grpcListen: `unix:${path}` });
    expect(target).toBe(`unix:${path}`);
    expect(await healthCheck(connect(target))).toBe("SERVING");
    await bridge.shutdown(0);
    expect(existsSync(path)).toBe(false);

    // A process killed with SIGKILL leaves its socket file behind.
    const stale = join(scratch, "stale.sock");
    await new Promise<void>((resolve) => {
      const child = spawn(process.execPath, ["-e", `require("node:net").createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, "SIGKILL"))`]);
      child.on("exit", () => resolve());
    });
    expect(existsSync(stale)).toBe(true);
    const second = await start({ grpcListen: `unix:${stale}` });
    expect(await healthCheck(connect(second.target))).toBe("SERVING");
    expect(second.lines.some((l) => l.msg === "removed stale unix socket")).toBe(true);
    expect(lines.some((l) => l.msg === "grpc server listening" && l.tls === "plaintext")).toBe(true);
  });

  it("refuses to take over a unix socket somebody is serving, logging grpc-js' reason as JSON", async () => {
    const path = join(scratch, "busy.sock");
    await start({ grpcListen: `unix:${path}` });
    const { logger, lines } = captureLogger();
    routeGrpcJsLogs(logger);
    const other = createGrpcServer({
      config: { ...plainConfig, grpcListen: `unix:${path}` },
      logger,
      services: [],
      protoFileDescriptors: [],
    });
    servers.push(other);
    await expect(other.listen()).rejects.toThrow();
    expect(lines).toContainEqual(expect.objectContaining({ level: "warn", component: "grpc-js", msg: expect.stringMatching(/No address added/) }));
  });

  it("shuts down without forcing when no call is running", async () => {
    const { bridge, target } = await start();
    expect((await getVersion(connect(target))).version).toBe(1);
    expect(await bridge.shutdown(5_000)).toEqual({ forced: false });
  });
});
