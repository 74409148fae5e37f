// SPDX-License-Identifier: Apache-2.0
// The root logger: JSON lines, stable keys, levels, error serialization, redaction, and the
// kvm-bridge Logger seam.
import { describe, expect, it } from "vitest";
import type { Logger } from "@kvmi/kvm-bridge";
import { KvmiRemoteError } from "@kvmi/kvm-bridge";
import { createRootLogger, writeAccessLog } from "./index.js";

function capture(level: "trace" | "debug" | "info" | "warn" | "error" = "info") {
  const lines: Array<Record<string, unknown>> = [];
  const logger = createRootLogger({ logLevel: level }, { destination: { write: (line: string) => void lines.push(JSON.parse(line)) } });
  return { logger, lines };
}

describe("createRootLogger", () => {
  it("writes one JSON object per line with a level label, ISO time and the service name", () => {
    const { logger, lines } = capture();
    logger.info({ vm: "vms/a" }, "hooked");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: "info", service: "kvmi-bridge", vm: "vms/a", msg: "hooked", pid: process.pid });
    expect(new Date(lines[0]!.time as string).toISOString()).toBe(lines[0]!.time);
  });

  it("adds child bindings and honours the configured level", () => {
    const { logger, lines } = capture("info");
    const vcpu = logger.child({ component: "kvmi", vm: "vms/a" }).child({ vcpu: 1 });
    vcpu.debug({ seq: 7 }, "per command");
    vcpu.warn({ seq: 8, msgId: 3 }, "slow reply");
    expect(lines).toEqual([expect.objectContaining({ level: "warn", component: "kvmi", vm: "vms/a", vcpu: 1, seq: 8, msgId: 3 })]);
  });

  it("serializes err with its own fields and cause", () => {
    const { logger, lines } = capture();
    const cause = Object.assign(new Error("socket reset"), { code: "ECONNRESET" });
    logger.error({ err: new Error("session lost", { cause }) }, "detach");
    const err = lines[0]!.err as Record<string, unknown>;
    expect(err).toMatchObject({ type: "Error", message: "session lost", cause: { message: "socket reset", code: "ECONNRESET" } });
    expect(typeof err.stack).toBe("string");
  });

  it("redacts secrets at the top level, one level down and in the logged config", () => {
    const { logger, lines } = capture();
    logger.info({ secret: "a", handshake: { cookie: "b" }, config: { secret: "c", maxVms: 2 }, metadata: { authorization: "Bearer d" } }, "x");
    const text = JSON.stringify(lines[0]);
    for (const leaked of ['"a"', '"b"', '"c"', "Bearer d"]) expect(text).not.toContain(leaked);
    expect(lines[0]).toMatchObject({ secret: "[REDACTED]", handshake: { cookie: "[REDACTED]" }, config: { secret: "[REDACTED]", maxVms: 2 } });
  });

  it("can be injected where kvm-bridge expects its Logger", () => {
    const { logger, lines } = capture();
    const seam: Logger = logger;
    seam.child({ component: "session" }).warn({ errno: 22, err: new KvmiRemoteError(22, { command: "KVMI_GET_VERSION" }) }, "command failed");
    expect(lines[0]).toMatchObject({ component: "session", errno: 22, err: { type: "KvmiRemoteError", code: "KVMI_REMOTE_ERROR", errno: 22 } });
  });
});

describe("writeAccessLog", () => {
  it("writes method, status name, duration, peer and caller; server faults at warn", () => {
    const { logger, lines } = capture();
    writeAccessLog(logger, { method: "/kvmi.v1.IntrospectionService/GetVm", code: 5, durationMs: 1.23456, peer: "127.0.0.1:1", identity: "spiffe://example.org/a", auth: "mtls" });
    writeAccessLog(logger, { method: "/kvmi.v1.IntrospectionService/GetVm", code: 13, durationMs: 2 });
    expect(lines[0]).toMatchObject({ level: "info", method: "/kvmi.v1.IntrospectionService/GetVm", grpcCode: "NOT_FOUND", durationMs: 1.235, peer: "127.0.0.1:1", identity: "spiffe://example.org/a", auth: "mtls", msg: "rpc finished" });
    expect(lines[1]).toMatchObject({ level: "warn", grpcCode: "INTERNAL" });
    expect(lines[1]).not.toHaveProperty("identity");
  });
});
