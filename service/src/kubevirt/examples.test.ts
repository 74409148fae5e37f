// SPDX-License-Identifier: Apache-2.0
// The hookSidecars annotations of deploy/kubevirt/examples are arguments this sidecar and the
// bridge accept, and name the container KubeVirt gives the sidecar.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { loadConfig } from "../config/index.js";
import { HOOK_SIDECARS_ANNOTATION, containerNameFromVmi, parseSidecarArgs } from "./sidecar-options.js";

const examples = ["vmi.yaml", "vm.yaml", "vmi-node-bridge.yaml"].map((name) => {
  const doc = parse(readFileSync(new URL(`../../../deploy/kubevirt/examples/${name}`, import.meta.url), "utf8")) as {
    kind: string;
    metadata: { annotations?: Record<string, string> };
    spec: { template?: { metadata: { annotations: Record<string, string> } } };
  };
  // A VirtualMachine's VMIs are made from its template, annotations included.
  const vmi = doc.kind === "VirtualMachine" ? { metadata: doc.spec.template!.metadata } : doc;
  return { name, vmi };
});

describe.each(examples)("deploy/kubevirt/examples/$name", ({ name, vmi }) => {
  const [sidecar] = JSON.parse(vmi.metadata.annotations![HOOK_SIDECARS_ANNOTATION]!) as Array<{ args: string[] }>;

  it("passes arguments the sidecar accepts, with the container name KubeVirt gives it", () => {
    // KubeVirt sets CONTAINER_NAME to hook-sidecar-<index>; the annotation agrees.
    const parsed = parseSidecarArgs(sidecar!.args, { CONTAINER_NAME: "hook-sidecar-0" });
    expect(parsed.action, JSON.stringify(parsed)).toBe("run");
    if (parsed.action !== "run") return;
    expect(parsed.options.containerName).toBe("hook-sidecar-0");
    expect(parsed.options.hookSocket).toBe("kvmi-bridge-hook-sidecar-0.sock");
    expect(containerNameFromVmi(vmi)).toEqual({ ok: true, name: parsed.options.containerName });
  });

  it("runs the bridge the example's mode asks for: in the pod with arguments it accepts, or the forwarder to the node's", () => {
    const parsed = parseSidecarArgs(sidecar!.args);
    if (parsed.action !== "run") throw new Error("unexpected");
    if (name === "vmi-node-bridge.yaml") {
      expect(parsed.options.nodeBridge).toEqual({ kind: "tcp", host: "kvmi-bridge-forward.kvmi-system.svc", port: 7001, tls: false });
      expect(parsed.options.bridgeArgs).toEqual([]);
      return;
    }
    expect(parsed.options.nodeBridge).toBeUndefined();
    const result = loadConfig({ argv: [...parsed.options.bridgeArgs, "--kvmi-listen", "unix:/tmp/kvmi.sock"], env: {}, cwd: "/" });
    expect(result.action, JSON.stringify(result)).toBe("run");
    if (result.action === "run") expect(result.config).toMatchObject({ grpcListen: "0.0.0.0:50051", allowInsecure: true, metricsListen: "0.0.0.0:9464" });
  });
});

