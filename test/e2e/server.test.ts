// SPDX-License-Identifier: Apache-2.0
/**
 * What the bridge serves besides the API, end to end: server reflection (what grpcurl uses) lists
 * the services and describes IntrospectionService completely, standard health checking reports
 * SERVING, and the Prometheus endpoint's counters move with real traffic (commands, events, event
 * round trips, bytes read, gRPC requests, hooked VMs).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fromBinary } from "@bufbuild/protobuf";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { Metadata } from "@grpc/grpc-js";
import type { ClientDuplexStream } from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";
import { EventType, IntrospectionService } from "@kvmi/proto";
import { CONTINUE, expectGrpcError, GrpcStatus, Role, settle, startHarness, StreamQueue, WAIT_MS } from "../support/bridge-harness.js";
import type { Harness } from "../support/bridge-harness.js";

const SERVICE = "kvmi.v1.IntrospectionService";

let h: Harness;

beforeAll(async () => {
  // VM 1 is released below; it reconnects only after a second, so the metrics see it gone first.
  h = await startHarness({ vms: [{}, { reconnectMs: 1000 }] });
});

afterAll(async () => {
  await h?.stop();
});

// -------------------------------------------------------------------------------------------------
// grpc.reflection.v1 by hand (its proto is not part of @kvmi/proto): ServerReflectionRequest
// file_containing_symbol = 4, list_services = 7; ServerReflectionResponse file_descriptor_response
// = 4 {repeated bytes file_descriptor_proto = 1}, list_services_response = 6 {repeated
// ServiceResponse{string name = 1} service = 1}, error_response = 7 {int32 error_code = 1}.

interface ReflectionAnswer {
  services?: string[];
  files?: Uint8Array[];
  errorCode?: number;
}

function decodeAnswer(bytes: Buffer): ReflectionAnswer {
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
      const [, type] = error.tag();
      answer.errorCode = type === WireType.Varint ? error.int32() : -1;
    } else {
      reader.skip(wireType);
    }
  }
  return answer;
}

function reflection(): { ask(field: 4 | 7, value: string): Promise<ReflectionAnswer>; close(): void } {
  const stream = h.client.raw.makeBidiStreamRequest(
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    (value: Buffer) => value,
    decodeAnswer,
    new Metadata(),
    { deadline: Date.now() + WAIT_MS },
  ) as ClientDuplexStream<Buffer, ReflectionAnswer>;
  const queue = new StreamQueue<ReflectionAnswer>((a) => JSON.stringify(Object.keys(a)));
  stream.on("data", (answer: ReflectionAnswer) => queue.push(answer));
  stream.on("error", () => undefined);
  stream.on("status", (status) => queue.end(status));
  return {
    ask: (field, value) => {
      stream.write(Buffer.from(new BinaryWriter().tag(field, WireType.LengthDelimited).string(value).finish()));
      return queue.take(() => true, `the reflection answer to field ${field}`);
    },
    close: () => stream.end(),
  };
}

describe("server reflection", () => {
  it("lists the API and health services", async () => {
    const r = reflection();
    const { services } = await r.ask(7, "");
    expect([...services!].sort()).toEqual(["grpc.health.v1.Health", SERVICE]);
    r.close();
  });

  it("describes IntrospectionService with every method and message, and answers NOT_FOUND for an unknown symbol", async () => {
    const r = reflection();
    const { files } = await r.ask(4, SERVICE);
    const protos: FileDescriptorProto[] = files!.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes));
    const file = protos.find((p) => p.service.some((s) => s.name === "IntrospectionService"))!;
    expect(file.name).toBe("kvmi/v1/introspection_service.proto");
    const methods = file.service.find((s) => s.name === "IntrospectionService")!.method.map((m) => m.name);
    expect(methods.sort()).toEqual(IntrospectionService.methods.map((m) => m.name).sort());
    expect(methods).toHaveLength(33);
    const session = file.service[0]!.method.find((m) => m.name === "Session")!;
    expect(session).toMatchObject({ inputType: ".kvmi.v1.SessionRequest", outputType: ".kvmi.v1.SessionResponse", clientStreaming: true, serverStreaming: true });
    expect(protos.map((p) => p.name)).toEqual(expect.arrayContaining(["kvmi/v1/session.proto", "kvmi/v1/command.proto", "google/rpc/status.proto"]));
    const missing = await r.ask(4, "kvmi.v1.NoSuchThing");
    expect(missing.errorCode).toBe(GrpcStatus.NOT_FOUND);
    r.close();
  });
});

describe("health", () => {
  function check(service: string): Promise<string> {
    const method = healthService.Check!;
    return new Promise((resolve, reject) => {
      h.client.raw.makeUnaryRequest(
        method.path,
        method.requestSerialize,
        method.responseDeserialize,
        { service },
        new Metadata(),
        { deadline: Date.now() + WAIT_MS },
        (error, response) => (error ? reject(error) : resolve((response as { status: string }).status)),
      );
    });
  }

  it("reports SERVING for the server and for IntrospectionService, NOT_FOUND for an unknown service", async () => {
    expect(await check("")).toBe("SERVING");
    expect(await check(SERVICE)).toBe("SERVING");
    await expect(check("no.such.Service")).rejects.toMatchObject({ code: GrpcStatus.NOT_FOUND });
  });
});

describe("metrics", () => {
  it("counts commands, events, round trips, bytes read, gRPC requests and hooked VMs as traffic flows", async () => {
    const before = await h.metrics();
    expect(before.value("kvmi_bridge_vms_hooked")).toBe(2);

    await h.client.unary("getVersion", { vm: h.vmName(0) });
    await h.client.unary("readPhysicalMemory", { vm: h.vmName(0), gpa: 0x1000n, size: 100 });
    await expectGrpcError(h.client.unary("readPhysicalMemory", { vm: h.vmName(0), gpa: 0xa0000n, size: 1 }), GrpcStatus.NOT_FOUND);
    await expectGrpcError(h.client.unary("getVm", { name: "vms/00000000-0000-4000-8000-000000000000" }), GrpcStatus.NOT_FOUND);
    const controller = await h.attach(0, Role.CONTROLLER);
    await controller.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(0, 0), event: EventType.HYPERCALL, enable: true } });
    const call = h.vms[0]!.guest.vcpus[0]!.hypercall(34n, 24n, 0n);
    controller.reply(await controller.event((e) => e.type === EventType.HYPERCALL), CONTINUE);
    await settle(call, "VMCALL");
    controller.release();
    await controller.closed();

    const after = await h.metrics();
    const delta = (name: string, labels: Record<string, string> = {}): number => after.value(name, labels) - before.value(name, labels);
    expect(delta("kvmi_bridge_commands_total", { command: "KVMI_GET_VERSION", status: "ok" })).toBe(1);
    expect(delta("kvmi_bridge_commands_total", { command: "KVMI_VM_READ_PHYSICAL", status: "ok" })).toBe(1);
    expect(delta("kvmi_bridge_commands_total", { command: "KVMI_VM_READ_PHYSICAL", status: "remote_error" })).toBe(1);
    expect(delta("kvmi_bridge_command_duration_seconds_count", { command: "KVMI_VM_READ_PHYSICAL" })).toBe(2);
    expect(delta("kvmi_bridge_commands_total", { command: "KVMI_VCPU_CONTROL_EVENTS", status: "ok" })).toBeGreaterThanOrEqual(1);
    expect(delta("kvmi_bridge_bytes_read_total")).toBe(100);
    expect(delta("kvmi_bridge_events_total", { event: "hypercall" })).toBe(1);
    expect(delta("kvmi_bridge_event_round_trip_seconds_count", { event: "hypercall" })).toBe(1);
    expect(delta("kvmi_bridge_grpc_requests_total", { method: `/${SERVICE}/GetVersion`, code: "OK" })).toBe(1);
    expect(delta("kvmi_bridge_grpc_requests_total", { method: `/${SERVICE}/GetVm`, code: "NOT_FOUND" })).toBe(1);
    expect(after.value("kvmi_bridge_vms_hooked")).toBe(2);
    expect(after.has("process_cpu_seconds_total")).toBe(true);
  });

  it("counts hooked VMs down and up again across a release", async () => {
    await h.client.unary("releaseVm", { name: h.vmName(1) });
    const during = await h.metrics();
    expect(during.value("kvmi_bridge_vms_hooked")).toBeLessThanOrEqual(1);
    expect(during.value("kvmi_bridge_unhook_to_close_seconds_count")).toBeGreaterThanOrEqual(1);
    await h.waitHooked(1, 2);
    expect((await h.metrics()).value("kvmi_bridge_vms_hooked")).toBe(2);
  });
});
