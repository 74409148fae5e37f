// SPDX-License-Identifier: Apache-2.0
// createServiceDefinition against a real grpc-js server and client on
// 127.0.0.1 (ephemeral port): one unary and one bidi method of
// IntrospectionService, with handlers written here.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { Client, Server, ServerCredentials, credentials, status } from "@grpc/grpc-js";
import type { ServiceError } from "@grpc/grpc-js";
import {
  AttachedSchema,
  CommandResultSchema,
  GetVersionResponseSchema,
  GetVmRequestSchema,
  GetVmResponseSchema,
  IntrospectionService,
  ListVmsRequestSchema,
  Role,
  SessionRequestSchema,
  SessionResponseSchema,
  State,
} from "@kvmi/proto";
import type { SessionRequest, SessionResponse } from "@kvmi/proto";
import { createServiceDefinition } from "./service-definition.js";
import type { ServiceImplementationFor } from "./service-definition.js";

const definition = createServiceDefinition(IntrospectionService);

describe("createServiceDefinition (shape)", () => {
  it("has one entry per proto method, keyed by localName, with the gRPC path", () => {
    expect(Object.keys(definition)).toHaveLength(IntrospectionService.methods.length);
    expect(IntrospectionService.methods.length).toBe(33);
    for (const method of IntrospectionService.methods) {
      const entry = definition[method.localName as keyof typeof definition];
      expect(entry, `missing ${method.localName}`).toBeDefined();
      expect(entry.path).toBe(`/kvmi.v1.IntrospectionService/${method.name}`);
      expect(entry.originalName).toBe(method.name);
    }
  });

  it("derives requestStream/responseStream from the method kind", () => {
    const flags = (k: keyof typeof definition) => [definition[k].requestStream, definition[k].responseStream];
    expect(flags("getVm")).toEqual([false, false]);
    expect(flags("readPhysicalMemory")).toEqual([false, false]);
    expect(flags("watchVms")).toEqual([false, true]);
    expect(flags("dumpMemory")).toEqual([false, true]);
    expect(flags("session")).toEqual([true, true]);
  });

  it("serializes with the method's own schemas and keeps u64 as bigint", () => {
    const def = definition.getVm;
    const bytes = def.responseSerialize(
      create(GetVmResponseSchema, { vm: { name: "vms/a", generation: 0xffff_ffff_ffff_fffen } }),
    );
    expect(Buffer.isBuffer(bytes)).toBe(true);
    const back = def.responseDeserialize(bytes);
    expect(back.$typeName).toBe("kvmi.v1.GetVmResponse");
    expect(back.vm?.generation).toBe(0xffff_ffff_ffff_fffen);
    expect(def.requestDeserialize(def.requestSerialize(create(GetVmRequestSchema, { name: "vms/x" }))).name).toBe("vms/x");
  });
});

describe("createServiceDefinition (grpc-js server + client)", () => {
  let server: Server;
  let client: Client;

  const handlers: Partial<ServiceImplementationFor<typeof IntrospectionService>> = {
    getVm(call, callback) {
      if (call.request.name !== "vms/5b8a3c7e-1d2f-4e6a-9b0c-7d8e9f0a1b2c") {
        callback({ code: status.NOT_FOUND, details: "VM not found" });
        return;
      }
      callback(null, create(GetVmResponseSchema, {
        vm: { name: call.request.name, state: State.HOOKED, generation: 3n, vcpuCount: 2 },
      }));
    },
    session(call) {
      call.on("data", (req: SessionRequest) => {
        switch (req.message.case) {
          case "attach":
            call.write(create(SessionResponseSchema, {
              message: { case: "attached", value: create(AttachedSchema, { role: req.message.value.role, vm: { name: req.message.value.vm } }) },
            }));
            return;
          case "command":
            call.write(create(SessionResponseSchema, {
              message: {
                case: "commandResult",
                value: create(CommandResultSchema, {
                  id: req.message.value.id,
                  result: { case: "getVersion", value: create(GetVersionResponseSchema, { version: 1, maxMsgSize: 8184 }) },
                }),
              },
            }));
            return;
          case "release":
            call.end();
            return;
          default:
            return;
        }
      });
      call.on("end", () => call.end());
    },
  };

  beforeAll(async () => {
    server = new Server();
    server.addService(definition, handlers);
    const port = await new Promise<number>((resolve, reject) => {
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)));
    });
    client = new Client(`127.0.0.1:${port}`, credentials.createInsecure());
  });

  afterAll(() => {
    client?.close();
    server?.forceShutdown();
  });

  function getVm(name: string) {
    const def = definition.getVm;
    return new Promise<ReturnType<typeof def.responseDeserialize>>((resolve, reject) => {
      client.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, create(GetVmRequestSchema, { name }), (err, res) =>
        err || !res ? reject(err ?? new Error("no response")) : resolve(res),
      );
    });
  }

  it("unary: GetVm round-trips typed messages, bigint included", async () => {
    const res = await getVm("vms/5b8a3c7e-1d2f-4e6a-9b0c-7d8e9f0a1b2c");
    expect(res.$typeName).toBe("kvmi.v1.GetVmResponse");
    expect(res.vm).toMatchObject({ name: "vms/5b8a3c7e-1d2f-4e6a-9b0c-7d8e9f0a1b2c", state: State.HOOKED, vcpuCount: 2 });
    expect(res.vm?.generation).toBe(3n);
  });

  it("unary: handler errors arrive as gRPC status", async () => {
    await expect(getVm("vms/unknown")).rejects.toMatchObject({ code: status.NOT_FOUND, details: "VM not found" });
  });

  it("unary: a method without a handler answers UNIMPLEMENTED", async () => {
    const def = definition.listVms;
    const err = await new Promise<ServiceError | null>((resolve) => {
      client.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, create(ListVmsRequestSchema), (e) => resolve(e));
    });
    expect(err?.code).toBe(status.UNIMPLEMENTED);
  });

  it("bidi: Session exchanges attach/command/release in order and ends with OK", async () => {
    const def = definition.session;
    const stream = client.makeBidiStreamRequest(def.path, def.requestSerialize, def.responseDeserialize);
    const received: SessionResponse[] = [];
    const ended = new Promise<number>((resolve, reject) => {
      stream.on("data", (res: SessionResponse) => {
        received.push(res);
        if (res.message.case === "commandResult") {
          stream.write(create(SessionRequestSchema, { message: { case: "release", value: {} } }));
        }
      });
      stream.on("status", (s: { code: number }) => resolve(s.code));
      stream.on("error", reject);
    });
    stream.write(create(SessionRequestSchema, {
      message: { case: "attach", value: { vm: "vms/5b8a3c7e-1d2f-4e6a-9b0c-7d8e9f0a1b2c", role: Role.CONTROLLER } },
    }));
    stream.write(create(SessionRequestSchema, {
      message: { case: "command", value: { id: 42n, request: { case: "getVersion", value: { vm: "vms/5b8a3c7e-1d2f-4e6a-9b0c-7d8e9f0a1b2c" } } } },
    }));
    expect(await ended).toBe(status.OK);
    stream.end();

    expect(received.map((r) => r.message.case)).toEqual(["attached", "commandResult"]);
    const [attached, result] = received;
    expect(attached?.message.case === "attached" && attached.message.value.role).toBe(Role.CONTROLLER);
    expect(result?.message.case === "commandResult" && result.message.value.id).toBe(42n);
    expect(result?.message.case === "commandResult" && result.message.value.result.case === "getVersion"
      ? result.message.value.result.value.maxMsgSize
      : undefined).toBe(8184);
  });
});
