// SPDX-License-Identifier: Apache-2.0
// Plays virt-launcher against the hook server over a real UNIX socket: Info first (as
// collectSideCarSockets does), then OnDefineDomain with a virt-launcher domain XML and VMI JSON,
// PreCloudInitIso, Shutdown, and the error statuses; then the Plugin API's MutateDomain.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { credentials, makeGenericClientConstructor, status } from "@grpc/grpc-js";
import type { Client, ServiceError } from "@grpc/grpc-js";
import { silentLogger } from "@kvmi/kvm-bridge";
import { createServiceDefinition } from "../rpc/service-definition.js";
import { Info, InfoParamsSchema } from "./gen/kubevirt/hooks/info/api_info_pb.js";
import {
  Callbacks,
  OnDefineDomainParamsSchema,
  PreCloudInitIsoParamsSchema,
  ShutdownParamsSchema,
} from "./gen/kubevirt/hooks/v1alpha3/api_v1alpha3_pb.js";
import { DomainHookService, MutateDomainRequestSchema, SidecarContextSchema } from "./gen/kubevirt/hooks/plugins/v1alpha1/api_pb.js";
import { QEMU_NAMESPACE_URI } from "./domain-xml.js";
import { HOOKS_VERSION, ON_DEFINE_DOMAIN, SHUTDOWN, startHookServer } from "./hook-server.js";
import type { HookServer } from "./hook-server.js";
import { defineDomain } from "./sidecar.js";
import { parseSidecarArgs } from "./sidecar-options.js";

const fixture = (name: string): Buffer => readFileSync(new URL(`./testdata/${name}`, import.meta.url));
const encoder = new TextEncoder();

let dir: string;
let server: HookServer;
let shutdowns = 0;
const clients: Client[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kvmi-hooks-"));
  const parsed = parseSidecarArgs(["--allow-command", "KVMI_VM_READ_PHYSICAL", "--hook-priority", "7"]);
  if (parsed.action !== "run") throw new Error("bad test options");
  const options = parsed.options;
  expect(options.warnings).toEqual([expect.stringMatching(/--hook-priority is ignored: KubeVirt sorts hook points within one sidecar/)]);
  server = await startHookServer({
    socketPath: join(dir, "kvmi-bridge.sock"),
    name: "kvmi-bridge",
    api: "hook-sidecar",
    logger: silentLogger,
    onDefineDomain: (call) => defineDomain(options, call),
    onShutdown: () => void shutdowns++,
  });
});

afterEach(() => {
  for (const client of clients.splice(0)) client.close();
});

afterAll(async () => {
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

type Unary = <I extends DescMessage, O extends DescMessage>(method: string, request: MessageShape<I>) => Promise<MessageShape<O>>;

/** A client the way virt-launcher dials: `unix:` + the socket path, insecure. */
function dial(service: typeof Info | typeof Callbacks | typeof DomainHookService, socketPath = server.socketPath): Unary {
  const Ctor = makeGenericClientConstructor(createServiceDefinition(service as typeof Info) as never, service.typeName);
  const client = new Ctor(`unix:${socketPath}`, credentials.createInsecure()) as Client & Record<string, (...args: unknown[]) => void>;
  clients.push(client);
  return (method, request) =>
    new Promise((resolve, reject) => {
      client[method]!(request, { deadline: Date.now() + 5_000 }, (error: ServiceError | null, response: never) => (error ? reject(error) : resolve(response)));
    });
}

describe("virt-launcher's conversation", () => {
  it("Info announces the v1alpha3 OnDefineDomain and Shutdown hook points (virt-launcher calls only those listed)", async () => {
    const info = await dial(Info)("info", create(InfoParamsSchema, {}));
    expect(info).toMatchObject({ name: "kvmi-bridge", versions: [HOOKS_VERSION], hookPoints: [{ name: ON_DEFINE_DOMAIN, priority: 0 }, { name: SHUTDOWN, priority: 0 }] });
    expect(HOOKS_VERSION).toBe("v1alpha3");
  });

  it("OnDefineDomain returns the domain with the introspection arguments for this sidecar's container", async () => {
    const callbacks = dial(Callbacks);
    const domainXML = fixture("kubevirt-domain.xml");
    const result = await callbacks("onDefineDomain", create(OnDefineDomainParamsSchema, { domainXML, vmi: fixture("vmi.json") }));
    const xml = new TextDecoder().decode((result as unknown as { domainXML: Uint8Array }).domainXML);
    const dirInCompute = "/var/run/kubevirt-hooks/hook-sidecar-1/kvmi"; // our entry is the second in vmi.json
    expect(xml.startsWith(`<domain type="kvm" xmlns:qemu="${QEMU_NAMESPACE_URI}">`)).toBe(true);
    expect(xml).toContain(`<qemu:arg value="socket,id=kvmi-bridge-chardev,path=${dirInCompute}/kvmi.sock,reconnect=1"></qemu:arg>`);
    expect(xml).toContain(`<qemu:arg value="secret,id=kvmi-bridge-secret,file=${dirInCompute}/cookie"></qemu:arg>`);
    expect(xml).toContain(
      '<qemu:arg value="introspection,id=kvmi-bridge,chardev=kvmi-bridge-chardev,key=kvmi-bridge-secret,command=6,handshake_timeout=10,unhook_timeout=60,async_unhook=on"></qemu:arg>',
    );
    // Everything virt-launcher sent is still there, byte for byte, before the new block.
    const original = domainXML.toString("utf8");
    expect(xml.slice(0, original.lastIndexOf("\n</domain>"))).toBe(original.slice(0, original.lastIndexOf("\n</domain>")));

    // virt-launcher may define the domain again (restart in the same pod): same answer.
    const again = await callbacks("onDefineDomain", create(OnDefineDomainParamsSchema, { domainXML: encoder.encode(xml), vmi: fixture("vmi.json") }));
    expect(new TextDecoder().decode((again as unknown as { domainXML: Uint8Array }).domainXML)).toBe(xml);
  });

  it("PreCloudInitIso hands the cloud-init data back unchanged", async () => {
    const cloudInitData = encoder.encode('{"dataSource":"NoCloud","userData":"#cloud-config\\n"}');
    const result = await dial(Callbacks)("preCloudInitIso", create(PreCloudInitIsoParamsSchema, { cloudInitData, vmi: fixture("vmi.json") }));
    expect(Buffer.from((result as unknown as { cloudInitData: Uint8Array }).cloudInitData).equals(Buffer.from(cloudInitData))).toBe(true);
  });

  it("Shutdown is answered, then the sidecar is told once", async () => {
    const callbacks = dial(Callbacks);
    await callbacks("shutdown", create(ShutdownParamsSchema, {}));
    await callbacks("shutdown", create(ShutdownParamsSchema, {}));
    await new Promise((resolve) => setImmediate(resolve));
    expect(shutdowns).toBe(1);
  });
});

describe("refusals", () => {
  it("INVALID_ARGUMENT for a malformed domain XML", async () => {
    const call = dial(Callbacks)("onDefineDomain", create(OnDefineDomainParamsSchema, { domainXML: encoder.encode("<domain type='kvm'><name>x</domain>"), vmi: fixture("vmi.json") }));
    await expect(call).rejects.toMatchObject({ code: status.INVALID_ARGUMENT, details: expect.stringMatching(/^the domain XML is malformed: <\/domain>/) });
  });

  it("INVALID_ARGUMENT for bytes that are not UTF-8", async () => {
    const call = dial(Callbacks)("onDefineDomain", create(OnDefineDomainParamsSchema, { domainXML: new Uint8Array([0x3c, 0xff, 0xfe]) }));
    await expect(call).rejects.toMatchObject({ code: status.INVALID_ARGUMENT, details: "the domain XML is not UTF-8" });
  });

  it("FAILED_PRECONDITION when the container name cannot be derived from the VMI", async () => {
    const call = dial(Callbacks)("onDefineDomain", create(OnDefineDomainParamsSchema, { domainXML: fixture("kubevirt-domain.xml"), vmi: encoder.encode("{}") }));
    await expect(call).rejects.toMatchObject({ code: status.FAILED_PRECONDITION, details: expect.stringMatching(/container name.*hookSidecars annotation/) });
  });

  it("FAILED_PRECONDITION when the domain already has another introspection object", async () => {
    const domainXML = encoder.encode(
      `<domain type="kvm" xmlns:qemu="${QEMU_NAMESPACE_URI}"><qemu:commandline><qemu:arg value="-object"/><qemu:arg value="introspection,id=theirs,chardev=c"/></qemu:commandline></domain>`,
    );
    const call = dial(Callbacks)("onDefineDomain", create(OnDefineDomainParamsSchema, { domainXML, vmi: fixture("vmi.json") }));
    await expect(call).rejects.toMatchObject({ code: status.FAILED_PRECONDITION, details: expect.stringMatching(/already has a QEMU -object introspection \(id=theirs\)/) });
  });
});

describe("the Plugin API (KubeVirt v1.9+)", () => {
  it("MutateDomain rewrites the domain with paths that are the same in every container; no Info, no Callbacks", async () => {
    const parsed = parseSidecarArgs(["--plugin", "kvmi-bridge", "--plugin-dir", join(dir, "plugin")]);
    if (parsed.action !== "run") throw new Error(JSON.stringify(parsed));
    const invocations: string[] = [];
    const plugin = await startHookServer({
      socketPath: join(dir, "plugin.sock"),
      name: "kvmi-bridge",
      api: "plugin",
      logger: silentLogger,
      onDefineDomain: (call) => {
        invocations.push(call.invocation);
        return defineDomain(parsed.options, call);
      },
      onShutdown: () => undefined,
    });
    try {
      const mutate = dial(DomainHookService, plugin.socketPath);
      const request = (context: string) =>
        create(MutateDomainRequestSchema, { domainType: "libvirt", domain: fixture("kubevirt-domain.xml"), vmi: encoder.encode("{}"), sidecarContext: create(SidecarContextSchema, { invocationContext: context }) });
      const result = await mutate("mutateDomain", request("Boot"));
      const xml = new TextDecoder().decode((result as unknown as { domain: Uint8Array }).domain);
      // No container name is needed: the plugin directory is mounted at the same path in both containers.
      expect(xml).toContain(`path=${join(dir, "plugin", "kvmi", "kvmi.sock")},reconnect=1`);
      await mutate("mutateDomain", request("MigrationTarget"));
      expect(invocations).toEqual(["Boot", "MigrationTarget"]);
      await expect(mutate("mutateDomain", create(MutateDomainRequestSchema, { domainType: "xen", domain: fixture("kubevirt-domain.xml") }))).rejects.toMatchObject({
        code: status.INVALID_ARGUMENT,
      });
      await expect(dial(Info, plugin.socketPath)("info", create(InfoParamsSchema, {}))).rejects.toMatchObject({ code: status.UNIMPLEMENTED });
    } finally {
      await plugin.close();
    }
  });
});
