// SPDX-License-Identifier: Apache-2.0
/**
 * TEST-ONLY: virt-launcher's hook manager as KubeVirt v1.6–v1.9 and main run it
 * (pkg/hooks/manager.go), for tests that must see what a real virt-launcher sees:
 *
 * - collect: every 300 ms, list the hook volume's directories and the non-directories in each;
 *   a socket is remembered by its FILE NAME only (two sidecars with the same socket name: the
 *   second is never asked, and collection times out); dial with a 1 s timeout (a failed dial is
 *   "not ready yet", retried), Info with a 1 s deadline (an error aborts), keep the newest Callbacks
 *   version it lists; give up after the timeout;
 * - hook points per sidecar, in discovery order; within one sidecar sorted by priority then name
 *   (sortCallbacksPerHookPoint: never sidecars against each other);
 * - OnDefineDomain through every sidecar that listed it, each one's output the next one's input,
 *   one-minute deadline; Shutdown only to sidecars that listed it.
 *
 * Also a hook sidecar that drops `<qemu:commandline>`, as any sidecar does that decodes the domain
 * into KubeVirt's Go types and encodes it again (encoding/xml cannot read the prefixed element).
 */
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { credentials, makeGenericClientConstructor, Server, ServerCredentials } from "@grpc/grpc-js";
import type { Client, ServiceError } from "@grpc/grpc-js";
import { createServiceDefinition } from "../../rpc/service-definition.js";
import { HookPointSchema, Info, InfoParamsSchema, InfoResultSchema } from "../gen/kubevirt/hooks/info/api_info_pb.js";
import type { HookPoint, InfoResult } from "../gen/kubevirt/hooks/info/api_info_pb.js";
import { Callbacks, OnDefineDomainParamsSchema, OnDefineDomainResultSchema, ShutdownParamsSchema, ShutdownResultSchema } from "../gen/kubevirt/hooks/v1alpha3/api_v1alpha3_pb.js";

type Rpc = Client & Record<string, (...args: unknown[]) => void>;

function client(service: typeof Info | typeof Callbacks, socket: string): Rpc {
  const Ctor = makeGenericClientConstructor(createServiceDefinition(service as typeof Info) as never, service.typeName);
  return new Ctor(`unix:${socket}`, credentials.createInsecure()) as Rpc;
}

function unary<T>(rpc: Rpc, method: string, request: unknown, deadlineMs: number): Promise<T> {
  return new Promise((resolve, reject) =>
    rpc[method]!(request, { deadline: Date.now() + deadlineMs }, (error: ServiceError | null, response: T) => (error ? reject(error) : resolve(response))),
  );
}

function dialWithTimeout(rpc: Rpc, ms: number): Promise<boolean> {
  return new Promise((resolve) => rpc.waitForReady(Date.now() + ms, (error) => resolve(error === undefined || error === null)));
}

/** One sidecar virt-launcher found. */
export interface FoundSidecar {
  readonly socket: string;
  readonly name: string;
  readonly version: string;
  readonly hookPoints: readonly HookPoint[];
}

/** What virt-launcher's hook manager did, for assertions. */
export class VirtLauncherStandIn {
  readonly sidecars: FoundSidecar[] = [];
  readonly calls: Array<{ sidecar: string; hookPoint: string }> = [];

  constructor(private readonly hooksDir: string) {}

  /** collectSideCarSockets: resolves once `expected` sockets answered Info; rejects after `timeoutMs`. */
  async collect(expected: number, timeoutMs: number): Promise<readonly FoundSidecar[]> {
    const processed = new Set<string>();
    const deadline = Date.now() + timeoutMs;
    while (processed.size < expected) {
      for (const dir of readdirSync(this.hooksDir, { withFileTypes: true }).filter((e) => e.isDirectory())) {
        for (const entry of readdirSync(join(this.hooksDir, dir.name), { withFileTypes: true })) {
          if (entry.isDirectory() || processed.has(entry.name)) continue;
          const socket = join(this.hooksDir, dir.name, entry.name);
          const rpc = client(Info, socket);
          try {
            if (!(await dialWithTimeout(rpc, 1_000))) continue; // "Sidecar server might not be ready yet"
            const info = await unary<InfoResult>(rpc, "info", create(InfoParamsSchema, {}), 1_000);
            const version = ["v1alpha3", "v1alpha2", "v1alpha1"].find((v) => info.versions.includes(v));
            if (version === undefined) throw new Error(`Hook sidecar does not expose a supported version: ${info.versions.join(", ")}`);
            // sortCallbacksPerHookPoint: within this sidecar only.
            const hookPoints = [...info.hookPoints].sort((a, b) => (a.priority === b.priority ? a.name.localeCompare(b.name) : b.priority - a.priority));
            this.sidecars.push({ socket, name: info.name, version, hookPoints });
          } finally {
            rpc.close();
          }
          processed.add(entry.name);
        }
      }
      if (processed.size >= expected) break;
      if (Date.now() >= deadline) throw new Error("Failed to collect all expected sidecar hook sockets within given timeout");
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
    return this.sidecars;
  }

  private subscribed(hookPoint: string): FoundSidecar[] {
    return this.sidecars.filter((s) => s.hookPoints.some((p) => p.name === hookPoint));
  }

  /** OnDefineDomain through every subscribed sidecar in turn. */
  async onDefineDomain(domainXml: string, vmi: unknown): Promise<string> {
    let xml: Uint8Array = new TextEncoder().encode(domainXml);
    for (const sidecar of this.subscribed("OnDefineDomain")) {
      const rpc = client(Callbacks, sidecar.socket);
      try {
        if (!(await dialWithTimeout(rpc, 1_000))) throw new Error(`Failed to Dial hook socket: ${sidecar.socket}`);
        this.calls.push({ sidecar: sidecar.name, hookPoint: "OnDefineDomain" });
        const result = await unary<{ domainXML: Uint8Array }>(rpc, "onDefineDomain", create(OnDefineDomainParamsSchema, { domainXML: new Uint8Array(xml), vmi: new TextEncoder().encode(JSON.stringify(vmi)) }), 60_000);
        xml = result.domainXML;
      } finally {
        rpc.close();
      }
    }
    return new TextDecoder().decode(xml);
  }

  /** Shutdown, only to sidecars that listed it; the first failure is returned as virt-launcher does. */
  async shutdown(): Promise<void> {
    for (const sidecar of this.subscribed("Shutdown")) {
      const rpc = client(Callbacks, sidecar.socket);
      try {
        if (!(await dialWithTimeout(rpc, 1_000))) throw new Error(`Failed to run Shutdown: cannot dial ${sidecar.socket}`);
        this.calls.push({ sidecar: sidecar.name, hookPoint: "Shutdown" });
        await unary(rpc, "shutdown", create(ShutdownParamsSchema, {}), 60_000);
      } finally {
        rpc.close();
      }
    }
  }
}

/** Removes `<qemu:commandline>…</qemu:commandline>` (any prefix), as a Go-types round trip does. */
export function dropQemuCommandline(xml: string): string {
  return xml.replace(/\s*<([A-Za-z_][\w.-]*):commandline\b[^>]*>[\s\S]*?<\/\1:commandline>/g, "").replace(/\s*<[A-Za-z_][\w.-]*:commandline\b[^>]*\/>/g, "");
}

/** A hook sidecar that rewrites the domain with {@link dropQemuCommandline}; resolves to its stop function. */
export async function startStrippingSidecar(socket: string): Promise<() => Promise<void>> {
  const server = new Server();
  server.addService(createServiceDefinition(Info), {
    info: (_call: unknown, callback: (e: null, r: unknown) => void) =>
      callback(null, create(InfoResultSchema, { name: "go-types-roundtrip", versions: ["v1alpha3"], hookPoints: [create(HookPointSchema, { name: "OnDefineDomain", priority: 0 })] })),
  });
  server.addService(createServiceDefinition(Callbacks), {
    onDefineDomain: (call: { request: { domainXML: Uint8Array } }, callback: (e: null, r: unknown) => void) =>
      callback(null, create(OnDefineDomainResultSchema, { domainXML: new TextEncoder().encode(dropQemuCommandline(new TextDecoder().decode(call.request.domainXML))) })),
    preCloudInitIso: () => undefined,
    shutdown: (_call: unknown, callback: (e: null, r: unknown) => void) => callback(null, create(ShutdownResultSchema, {})),
  });
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${socket}`, ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())));
  return () => new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
}
