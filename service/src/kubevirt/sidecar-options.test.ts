// SPDX-License-Identifier: Apache-2.0
// The sidecar's options, its two views of the hook volume, the container name from the VMI, and
// the QEMU introspection arguments (kvmi-abi.md §2.1).
import { readFileSync } from "node:fs";
import { kvmiV7, v12, v9 } from "@kvmi/kvm-bridge/wire";
import { describe, expect, it } from "vitest";
import { INTROSPECTION_OWNED_ARGS, introspectionQemuArgs, resolveKvmiIds } from "./introspection-args.js";
import { HOOKS_DIR, computePaths, containerNameFromVmi, parseSidecarArgs, sidecarPaths } from "./sidecar-options.js";

const vmi = JSON.parse(readFileSync(new URL("./testdata/vmi.json", import.meta.url), "utf8")) as Record<string, unknown>;
const withSidecars = (list: unknown): unknown => ({ metadata: { annotations: { "hooks.kubevirt.io/hookSidecars": JSON.stringify(list) } } });

describe("parseSidecarArgs", () => {
  it("has KubeVirt's defaults and passes everything after -- to the bridge", () => {
    const parsed = parseSidecarArgs(["--", "--grpc-listen", "0.0.0.0:50051", "--allow-insecure"]);
    expect(parsed).toEqual({
      action: "run",
      options: {
        hooksDir: HOOKS_DIR,
        computeHooksDir: HOOKS_DIR,
        hookSocket: "kvmi-bridge.sock",
        socketSubdir: "kvmi",
        containerName: undefined,
        hookName: "kvmi-bridge",
        api: "hook-sidecar",
        pluginName: undefined,
        nodeBridge: undefined,
        nodeBridgeTls: { caFile: undefined, certFile: undefined, keyFile: undefined, serverName: undefined },
        connectDeadlineSeconds: 120,
        warnings: [],
        dialect: v9,
        commands: undefined,
        events: undefined,
        reconnectSeconds: 1,
        handshakeTimeoutSeconds: 10,
        unhookTimeoutSeconds: 60,
        asyncUnhook: true,
        bridgeArgs: ["--grpc-listen", "0.0.0.0:50051", "--allow-insecure"],
      },
    });
  });

  it("takes names and ids for the allow lists, repeated or comma-separated", () => {
    const parsed = parseSidecarArgs([
      "--container-name", "hook-sidecar-2",
      "--allow-command", "KVMI_VM_READ_PHYSICAL,vcpu_get_registers",
      "--allow-command", "4",
      "--allow-event", "pf,KVMI_EVENT_BREAKPOINT",
      "--async-unhook", "off",
      "--unhook-timeout-seconds", "30",
    ]);
    expect(parsed.action).toBe("run");
    if (parsed.action !== "run") return;
    expect(parsed.options.containerName).toBe("hook-sidecar-2");
    expect(parsed.options.commands).toEqual([6, 11, 4]);
    expect(parsed.options.events).toEqual([0, 9, 3]); // UNHOOK first, always
    expect(parsed.options.asyncUnhook).toBe(false);
    expect(parsed.options.unhookTimeoutSeconds).toBe(30);
  });

  it("reports every problem at once", () => {
    const parsed = parseSidecarArgs([
      "--container-name", "Hook_Sidecar",
      "--hooks-dir", "relative/dir",
      "--hook-socket", "../escape.sock",
      "--reconnect-seconds", "0",
      "--async-unhook", "maybe",
      "--allow-command", "KVMI_NOPE,99",
      "--allow-event", "bogus",
    ]);
    expect(parsed.action).toBe("fail");
    if (parsed.action !== "fail") return;
    expect(parsed.errors).toHaveLength(7);
    expect(parsed.errors.join("\n")).toMatch(/container-name "Hook_Sidecar"/);
    expect(parsed.errors.join("\n")).toMatch(/unknown KVMI commands "KVMI_NOPE", "99"/);
    expect(parsed.errors.join("\n")).toMatch(/unknown KVMI event "bogus"/);
  });

  it("points bridge flags given before -- to the separator, and answers --help", () => {
    const parsed = parseSidecarArgs(["--grpc-listen", "0.0.0.0:50051"]);
    expect(parsed).toMatchObject({ action: "fail", errors: [expect.stringMatching(/--grpc-listen.*after "--"/)] });
    expect(parseSidecarArgs(["--help"])).toMatchObject({ action: "help", help: expect.stringContaining("Usage: kvmi-kubevirt-sidecar") });
  });
});

describe("what KubeVirt sets and the two APIs", () => {
  it("takes the container name from CONTAINER_NAME and puts it in the hook socket's file name", () => {
    // virt-launcher keys the sockets it found by file name only: two sidecars of this image must differ.
    const first = parseSidecarArgs([], { CONTAINER_NAME: "hook-sidecar-0" });
    const second = parseSidecarArgs([], { CONTAINER_NAME: "hook-sidecar-1" });
    if (first.action !== "run" || second.action !== "run") throw new Error("unexpected");
    expect([first.options.containerName, first.options.hookSocket]).toEqual(["hook-sidecar-0", "kvmi-bridge-hook-sidecar-0.sock"]);
    expect(second.options.hookSocket).toBe("kvmi-bridge-hook-sidecar-1.sock");
    expect(parseSidecarArgs(["--container-name", "hook-sidecar-3"], { CONTAINER_NAME: "hook-sidecar-1" })).toMatchObject({ options: { containerName: "hook-sidecar-3" } });
    expect(parseSidecarArgs([], { CONTAINER_NAME: "Bad_Name" })).toMatchObject({ action: "fail", errors: [expect.stringMatching(/^CONTAINER_NAME "Bad_Name"/)] });
  });

  it("node mode: unix, tls and tcp node bridges; TLS flags only with tls:", () => {
    expect(parseSidecarArgs(["--node-bridge", "unix:/var/run/kvmi-bridge/forward.sock"])).toMatchObject({ options: { nodeBridge: { kind: "unix", path: "/var/run/kvmi-bridge/forward.sock" } } });
    expect(parseSidecarArgs(["--node-bridge", "tls:kvmi-bridge-forward.kvmi-system.svc:7001", "--node-bridge-ca", "/etc/kvmi/ca.crt"])).toMatchObject({
      options: { nodeBridge: { kind: "tcp", host: "kvmi-bridge-forward.kvmi-system.svc", port: 7001, tls: true }, nodeBridgeTls: { caFile: "/etc/kvmi/ca.crt" } },
    });
    expect(parseSidecarArgs(["--node-bridge", "tcp:[fd00::1]:7001"])).toMatchObject({ options: { nodeBridge: { host: "fd00::1", tls: false } } });
    const bad = parseSidecarArgs(["--node-bridge", "tcp:host", "--node-bridge-ca", "x", "--node-bridge-cert", "c"]);
    expect(bad).toMatchObject({ action: "fail" });
    if (bad.action === "fail") expect(bad.errors.join("\n")).toMatch(/must be unix:PATH.*\n.*need --node-bridge tls:.*\n.*go together/s);
  });

  it("the Plugin API: the socket under /var/run/kubevirt-plugin/<plugin>/, ending in .sock", () => {
    const parsed = parseSidecarArgs(["--plugin", "kvmi-bridge"], { CONTAINER_NAME: "ignored" });
    if (parsed.action !== "run") throw new Error(JSON.stringify(parsed));
    expect(parsed.options).toMatchObject({ api: "plugin", pluginName: "kvmi-bridge", hooksDir: "/var/run/kubevirt-plugin/kvmi-bridge", hookSocket: "kvmi-bridge.sock" });
    expect(sidecarPaths(parsed.options).hookSocket).toBe("/var/run/kubevirt-plugin/kvmi-bridge/kvmi-bridge.sock");
    expect(computePaths(parsed.options, undefined)).toEqual({
      kvmiSocket: "/var/run/kubevirt-plugin/kvmi-bridge/kvmi/kvmi.sock",
      cookie: "/var/run/kubevirt-plugin/kvmi-bridge/kvmi/cookie",
    });
    expect(parseSidecarArgs(["--plugin", "kvmi-bridge", "--hook-socket", "hook"])).toMatchObject({ action: "fail", errors: [expect.stringMatching(/must end with .sock/)] });
    expect(parseSidecarArgs(["--plugin", "kvmi-bridge", "--hooks-dir", "/x"])).toMatchObject({ action: "fail", errors: [expect.stringMatching(/belong to the hook sidecar API/)] });
  });
});

describe("paths", () => {
  it("puts the KVMI socket and cookie one directory below the hook socket, seen from both containers", () => {
    const parsed = parseSidecarArgs([]);
    if (parsed.action !== "run") throw new Error("unexpected");
    expect(sidecarPaths(parsed.options)).toEqual({
      hookSocket: "/var/run/kubevirt-hooks/kvmi-bridge.sock",
      kvmiDir: "/var/run/kubevirt-hooks/kvmi",
      kvmiSocket: "/var/run/kubevirt-hooks/kvmi/kvmi.sock",
      cookie: "/var/run/kubevirt-hooks/kvmi/cookie",
    });
    expect(computePaths(parsed.options, "hook-sidecar-1")).toEqual({
      kvmiSocket: "/var/run/kubevirt-hooks/hook-sidecar-1/kvmi/kvmi.sock",
      cookie: "/var/run/kubevirt-hooks/hook-sidecar-1/kvmi/cookie",
    });
  });
});

describe("containerNameFromVmi", () => {
  it("finds our entry in the hookSidecars annotation (index 1 → hook-sidecar-1)", () => {
    expect(containerNameFromVmi(vmi)).toEqual({ ok: true, name: "hook-sidecar-1" });
    expect(containerNameFromVmi(withSidecars([{ image: "x", args: ["/opt/kvmi-bridge/service/bin/kvmi-kubevirt-sidecar.mjs"] }]))).toEqual({
      ok: true,
      name: "hook-sidecar-0",
    });
  });

  it("explains what is missing or ambiguous", () => {
    expect(containerNameFromVmi(undefined)).toMatchObject({ ok: false, error: expect.stringMatching(/no hooks.kubevirt.io\/hookSidecars annotation/) });
    expect(containerNameFromVmi({ metadata: { annotations: { "hooks.kubevirt.io/hookSidecars": "{" } } })).toMatchObject({ ok: false, error: expect.stringMatching(/not JSON/) });
    expect(containerNameFromVmi(withSidecars({}))).toMatchObject({ ok: false, error: expect.stringMatching(/not a JSON list/) });
    expect(containerNameFromVmi(withSidecars([{ image: "x" }]))).toMatchObject({ ok: false, error: expect.stringMatching(/^no entry .*--container-name/) });
    const twice = { image: "x", command: ["kvmi-kubevirt-sidecar"] };
    expect(containerNameFromVmi(withSidecars([twice, twice]))).toMatchObject({ ok: false, error: expect.stringMatching(/^more than one entry/) });
  });
});

describe("introspection arguments", () => {
  it("names the chardev with reconnect, the secret and the introspection object with its options", () => {
    const pairs = introspectionQemuArgs({
      socketPath: "/h/hook-sidecar-0/kvmi/kvmi.sock",
      secretFile: "/h/hook-sidecar-0/kvmi/cookie",
      reconnectSeconds: 2,
      commands: [6, 11],
      events: [0, 9],
      handshakeTimeoutSeconds: 10,
      unhookTimeoutSeconds: 30,
      asyncUnhook: false,
    });
    expect(pairs).toEqual([
      { option: "-chardev", value: "socket,id=kvmi-bridge-chardev,path=/h/hook-sidecar-0/kvmi/kvmi.sock,reconnect=2" },
      { option: "-object", value: "secret,id=kvmi-bridge-secret,file=/h/hook-sidecar-0/kvmi/cookie" },
      {
        option: "-object",
        value:
          "introspection,id=kvmi-bridge,chardev=kvmi-bridge-chardev,key=kvmi-bridge-secret,command=6,command=11,event=0,event=9,handshake_timeout=10,unhook_timeout=30,async_unhook=off",
      },
    ]);
    expect(INTROSPECTION_OWNED_ARGS.map((o) => o.id)).toEqual(["kvmi-bridge-chardev", "kvmi-bridge-secret", "kvmi-bridge"]);
  });

  it("leaves the allow lists and the key out when not given (QEMU then allows everything)", () => {
    expect(introspectionQemuArgs({ socketPath: "/s", reconnectSeconds: 1 })).toEqual([
      { option: "-chardev", value: "socket,id=kvmi-bridge-chardev,path=/s,reconnect=1" },
      { option: "-object", value: "introspection,id=kvmi-bridge,chardev=kvmi-bridge-chardev" },
    ]);
  });

  it("resolves names and ids against the v9 tables", () => {
    expect(resolveKvmiIds("command", ["KVMI_GET_VERSION", "vm_read_physical", "25", "6"])).toEqual({ ok: true, ids: [1, 6, 25] });
    expect(resolveKvmiIds("event", [])).toEqual({ ok: true, ids: [0] });
    expect(resolveKvmiIds("event", ["KVMI_EVENT_SINGLESTEP", "hypercall", "unhook"])).toEqual({ ok: true, ids: [0, 10, 2] });
    expect(resolveKvmiIds("command", ["0", "26"])).toMatchObject({ ok: false, error: expect.stringMatching(/unknown KVMI commands "0", "26"/) });
  });

  it("resolves against the VM's own dialect, accepting another dialect's name for the same message", () => {
    // kvmi-v7 (docs/protocol/kvmi-v7.md): READ_PHYSICAL 17, GET_PAGE_ACCESS 20, GET_VERSION 2; UNHOOK 0, CPUID 13, PF 6, CR 1.
    expect(resolveKvmiIds("command", ["KVMI_VM_READ_PHYSICAL", "get_page_access", "KVMI_GET_VERSION"], kvmiV7)).toEqual({ ok: true, ids: [17, 20, 2] });
    expect(resolveKvmiIds("event", ["KVMI_EVENT_CPUID", "pf", "KVMI_VCPU_EVENT_CR"], kvmiV7)).toEqual({ ok: true, ids: [0, 13, 6, 1] });
    // v12 (docs/protocol/v12.md): VM_READ_PHYSICAL 12, VCPU_GET_REGISTERS 7; VM_EVENT_UNHOOK 0, VCPU_EVENT_PF 17.
    expect(resolveKvmiIds("command", ["vm_read_physical", "KVMI_VCPU_GET_REGISTERS", "7"], v12)).toEqual({ ok: true, ids: [12, 7] });
    expect(resolveKvmiIds("event", ["pf", "unhook"], v12)).toEqual({ ok: true, ids: [0, 17] });
  });

  it("says when a message exists in another dialect but not in the VM's", () => {
    expect(resolveKvmiIds("command", ["KVMI_VM_GET_MAX_GFN", "nonsense"], v12)).toEqual({
      ok: false,
      error: expect.stringMatching(/^"KVMI_VM_GET_MAX_GFN" is not in KVMI v12; unknown KVMI command "nonsense" \(v12 commands: KVMI_GET_VERSION, /),
    });
    expect(resolveKvmiIds("event", ["cpuid"], v9)).toMatchObject({ ok: false, error: '"cpuid" is not in KVMI v9' });
  });
});

describe("the sidecar's --kvmi-dialect", () => {
  it("defaults to v9, or to kvmi-bridge's --kvmi-dialect after \"--\"", () => {
    expect(parseSidecarArgs(["--allow-event", "pf"])).toMatchObject({ action: "run", options: { dialect: { name: "v9" }, events: [0, 9] } });
    const parsed = parseSidecarArgs(["--allow-event", "pf", "--", "--kvmi-dialect", "v12"]);
    expect(parsed).toMatchObject({ action: "run", options: { dialect: { name: "v12" }, events: [0, 17] } });
  });

  it("sends the allow lists in the chosen dialect's ids", () => {
    const parsed = parseSidecarArgs(["--kvmi-dialect", "kvmi-v7", "--allow-command", "read_physical,KVMI_VM_WRITE_PHYSICAL", "--", "--grpc-listen", "0.0.0.0:1"]);
    expect(parsed).toMatchObject({ action: "run", options: { dialect: { name: "kvmi-v7" }, commands: [17, 18] } });
  });

  it("refuses an unknown dialect and one that contradicts the bridge's", () => {
    expect(parseSidecarArgs(["--kvmi-dialect", "v10"])).toMatchObject({ action: "fail", errors: [expect.stringMatching(/must be one of v9, v12, kvmi-v7, got "v10"/)] });
    expect(parseSidecarArgs(["--kvmi-dialect", "v9", "--", "--kvmi-dialect=v12"])).toMatchObject({
      action: "fail",
      errors: [expect.stringMatching(/--kvmi-dialect v9 differs from kvmi-bridge's --kvmi-dialect v12/)],
    });
  });
});
