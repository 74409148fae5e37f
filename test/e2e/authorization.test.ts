// SPDX-License-Identifier: Apache-2.0
/**
 * issue 15, tried as an attacker on loopback with mTLS and a policy: a certificate of the CA gets
 * only what the policy grants; a second client cannot use the controller's session id; the
 * CONTROLLER_PRESENT error does not show it; ReleaseVm of someone else's controller needs admin;
 * bearer JWTs (Kubernetes ServiceAccount tokens) are identities; the audit trail records who wrote
 * guest memory; policy reloads apply to running sessions without dropping them.
 */
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { credentials, InterceptingCall } from "@grpc/grpc-js";
import type { Interceptor } from "@grpc/grpc-js";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import type { CryptoKey } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connect } from "@kvmi/clients";
import { main as kvmictlMain } from "@kvmi/clients/cli";
import { auditFileSet, verifyAuditFiles } from "@kvmi/service";
import { createTestPki } from "@kvmi/service/testing";
import type { TestKeyPair, TestPki } from "@kvmi/service/testing";
import { expectGrpcError, GrpcStatus, Role, startHarness, streamFailure, waitUntil } from "../support/bridge-harness.js";
import type { Harness, IntrospectionClient } from "../support/bridge-harness.js";
import type { Logger } from "@kvmi/kvm-bridge";

const ISSUER = "https://kubernetes.default.svc.cluster.local";
const SCANNER = "spiffe://example.org/ns/intro/sa/scanner";
const DEBUGGER = "spiffe://example.org/ns/intro/sa/debugger";

let pki: TestPki;
let dir: string;
let policyFile: string;
let auditFile: string;
let jwksFile: string;
let signingKey: CryptoKey;
let h: Harness;
const certs: Record<string, TestKeyPair> = {};

const policy = (debuggerVerbs: string): string => `
version: 1
grants:
  - identities: ["${SCANNER}", "system:serviceaccount:intro:*"]
    verbs: [read]
    vms: [{ labels: { kubevirt.io/namespace: tenant-a } }]
  - identities: ["system:serviceaccount:intro:watcher"]
    verbs: [observe]
    vms: [{ labels: { kubevirt.io/namespace: tenant-a } }]
  - identities: ["${DEBUGGER}"]
    verbs: [${debuggerVerbs}]
    vms: [{ name: "tenant-a_*" }]
  - identities: [thief.example.org]
    verbs: [control, release]
    vms: all
  - groups: [vmi-admins]
    verbs: [admin]
    vms: all
  - identities: ["kvmi-bridge test client"]
    verbs: [list]
    vms: all
`;

function mtls(pair: TestKeyPair) {
  return credentials.createSsl(readFileSync(pki.ca.cert), readFileSync(pair.key), readFileSync(pair.cert));
}

/** A client interceptor that sends `authorization: Bearer TOKEN` on every call. */
function bearer(token: string): Interceptor {
  return (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set("authorization", `Bearer ${token}`);
        next(metadata, listener);
      },
    });
}

function token(claims: Record<string, unknown>): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ iss: ISSUER, aud: ["kvmi-bridge"], iat: now, exp: now + 600, ...claims })
    .setProtectedHeader({ alg: "ES256", kid: "sa" })
    .sign(signingKey);
}

/** The bridge's log lines, as a logger that keeps them (for the access lines). */
const logLines: Array<Record<string, unknown>> = [];
function keepingLogger(bindings: Record<string, unknown>): Logger {
  const keep = (fields: Record<string, unknown>, msg?: string): void => void logLines.push({ ...bindings, ...fields, msg });
  return { trace: () => undefined, debug: () => undefined, info: keep, warn: keep, error: keep, child: (more) => keepingLogger({ ...bindings, ...more }) };
}

function auditRecords(): Array<Record<string, unknown>> {
  return readFileSync(auditFile, "utf8").trimEnd().split("\n").map((line) => JSON.parse(line) as Record<string, unknown>);
}

let scanner: IntrospectionClient;
let debuggerClient: IntrospectionClient;
let thief: IntrospectionClient;

beforeAll(async () => {
  pki = createTestPki();
  dir = mkdtempSync(join(tmpdir(), "kvmi-authz-e2e-"));
  certs["scanner"] = pki.issueClient("scanner", { cn: "scanner", san: `URI:${SCANNER}` });
  certs["debugger"] = pki.issueClient("debugger", { cn: "debugger", san: `URI:${DEBUGGER}` });
  certs["thief"] = pki.issueClient("thief", { cn: "thief", san: "DNS:thief.example.org" });
  certs["stranger"] = pki.issueClient("stranger", { cn: "stranger" });
  const pair = await generateKeyPair("ES256");
  signingKey = pair.privateKey;
  jwksFile = join(dir, "jwks.json");
  writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(pair.publicKey)), kid: "sa", alg: "ES256" }] }));
  policyFile = join(dir, "policy.yaml");
  writeFileSync(policyFile, policy("control"));
  auditFile = join(dir, "audit.jsonl");
  h = await startHarness({
    vms: [{ name: "tenant-a_web" }, { name: "tenant-b_db" }],
    bridgeArgs: [
      ...["--tls-cert", pki.server.cert, "--tls-key", pki.server.key, "--tls-client-ca", pki.ca.cert],
      ...["--policy-file", policyFile, "--audit-file", auditFile],
      ...["--jwt-jwks-file", jwksFile, "--jwt-issuer", ISSUER, "--jwt-audience", "kvmi-bridge"],
    ],
    clientCredentials: mtls(pki.client),
    bridgeLogger: keepingLogger({}),
  });
  scanner = h.connect(mtls(certs["scanner"]!));
  debuggerClient = h.connect(mtls(certs["debugger"]!));
  thief = h.connect(mtls(certs["thief"]!));
});

afterAll(async () => {
  await h?.stop();
  pki?.dispose();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

describe("a certificate of the CA gets only what the policy grants", () => {
  it("lists nothing and may do nothing with a certificate the policy does not name", async () => {
    const stranger = h.connect(mtls(certs["stranger"]!));
    expect((await stranger.unary("listVms", {})).vms).toEqual([]);
    expect((await h.client.unary("listVms", {})).vms).toHaveLength(2); // granted list, and only list
    const denied = await expectGrpcError(stranger.unary("getVmInfo", { vm: h.vmName(0) }), GrpcStatus.PERMISSION_DENIED);
    expect(denied.details).toMatchObject({ reason: "PERMISSION_DENIED", vm: h.vms[0]!.uuid, metadata: expect.objectContaining({ verb: "read" }) });
    await expectGrpcError(h.client.unary("getVmInfo", { vm: h.vmName(0) }), GrpcStatus.PERMISSION_DENIED);
    await expectGrpcError(stranger.unary("getVm", { name: h.vmName(0) }), GrpcStatus.PERMISSION_DENIED);
    const attach = stranger.openSession();
    await expect(attach.attach(h.vmName(0), Role.OBSERVER)).rejects.toMatchObject({ code: GrpcStatus.PERMISSION_DENIED });
  });

  it("lets the scanner read its namespace's VM and nothing else", async () => {
    expect((await scanner.unary("listVms", {})).vms.map((vm) => vm.name)).toEqual([h.vmName(0)]);
    expect((await scanner.unary("readPhysicalMemory", { vm: h.vmName(0), gpa: 0x5000n, size: 16 })).data).toHaveLength(16);
    const other = await expectGrpcError(scanner.unary("readPhysicalMemory", { vm: h.vmName(1), gpa: 0x5000n, size: 16 }), GrpcStatus.PERMISSION_DENIED);
    expect(other.details.metadata).toMatchObject({ verb: "read", vm: h.vms[1]!.uuid });
    const write = await expectGrpcError(scanner.unary("writePhysicalMemory", { vm: h.vmName(0), gpa: 0x6000n, data: Uint8Array.of(0xcc) }), GrpcStatus.PERMISSION_DENIED);
    expect(write.details.metadata).toMatchObject({ verb: "control" });
    const dump = await scanner.dumpMemory({ vm: h.vmName(1), length: 4096n });
    expect(dump.status.code).toBe(GrpcStatus.PERMISSION_DENIED);
    const watch = scanner.watchVms();
    const first = await watch.queue.take(() => true, "the first WatchVms change");
    expect(first.change?.vm?.name).toBe(h.vmName(0));
    watch.cancel();
    expect(watch.queue.drain().filter((r) => r.change?.vm?.name === h.vmName(1))).toEqual([]);
  });

  it("accepts a Kubernetes ServiceAccount token and refuses an expired one", async () => {
    const sa = h.connect(mtls(pki.client), { interceptors: [bearer(await token({ sub: "system:serviceaccount:intro:scanner" }))] });
    expect((await sa.unary("listVms", {})).vms.map((vm) => vm.name)).toEqual([h.vmName(0)]);
    const expired = h.connect(mtls(pki.client), {
      interceptors: [bearer(await token({ sub: "system:serviceaccount:intro:scanner", exp: Math.floor(Date.now() / 1000) - 3600 }))],
    });
    const refused = await expectGrpcError(expired.unary("listVms", {}), GrpcStatus.UNAUTHENTICATED);
    expect(refused.message).toMatch(/exp/);
  });
});

describe("the access log names the caller", () => {
  it("gives every access line the identity and how it was authenticated: mTLS, JWT, and none for a refused token", async () => {
    const accessLines = (method: string): Array<Record<string, unknown>> =>
      logLines.filter((l) => l["msg"] === "rpc finished" && l["method"] === `/kvmi.v1.IntrospectionService/${method}`);
    const before = { getVmInfo: accessLines("GetVmInfo").length, getVersion: accessLines("GetVersion").length };
    await scanner.unary("getVmInfo", { vm: h.vmName(0) });
    await expectGrpcError(h.connect(mtls(certs["stranger"]!)).unary("getVmInfo", { vm: h.vmName(0) }), GrpcStatus.PERMISSION_DENIED);
    const sa = h.connect(mtls(pki.client), { interceptors: [bearer(await token({ sub: "system:serviceaccount:intro:scanner" }))] });
    await sa.unary("getVmInfo", { vm: h.vmName(0) });
    const forged = h.connect(mtls(pki.client), { interceptors: [bearer("not-a-jwt")] });
    await expectGrpcError(forged.unary("getVersion", {}), GrpcStatus.UNAUTHENTICATED);
    await waitUntil(() => accessLines("GetVmInfo").length >= before.getVmInfo + 3 && accessLines("GetVersion").length > before.getVersion, "the access lines");
    expect(accessLines("GetVmInfo").slice(before.getVmInfo).map((l) => [l["grpcCode"], l["identity"], l["auth"]])).toEqual([
      ["OK", SCANNER, "mtls"],
      // A denial names who was denied.
      ["PERMISSION_DENIED", "stranger", "mtls"],
      ["OK", "system:serviceaccount:intro:scanner", "jwt"],
    ]);
    // Refused before an identity was established: the line says so by naming none.
    const refused = accessLines("GetVersion").at(-1)!;
    expect(refused).toMatchObject({ grpcCode: "UNAUTHENTICATED" });
    expect(refused).not.toHaveProperty("identity");
    expect(refused["peer"]).toMatch(/127\.0\.0\.1|localhost|::1/);
  });
});

describe("the SDK and kvmictl send bearer tokens", () => {
  it("authenticates with bearerToken (SDK) and --token-file (kvmictl)", async () => {
    const tls = { ca: readFileSync(pki.ca.cert), cert: readFileSync(pki.client.cert), key: readFileSync(pki.client.key) };
    const sa = await token({ sub: "system:serviceaccount:intro:scanner" });
    const client = connect({ target: h.bridge.grpcTarget, tls, bearerToken: () => sa, retry: { maxAttempts: 1 } });
    try {
      expect((await client.listVms()).map((vm) => vm.name)).toEqual([h.vmName(0)]);
    } finally {
      client.close();
    }
    const tokenFile = join(dir, "token");
    writeFileSync(tokenFile, `${sa}\n`);
    let stdout = "";
    let stderr = "";
    const code = await kvmictlMain(
      ["--target", h.bridge.grpcTarget, "--tls-ca", pki.ca.cert, "--tls-cert", pki.client.cert, "--tls-key", pki.client.key, "--token-file", tokenFile, "--json", "vms", "list"],
      { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t), stderrIsTTY: false, signal: new AbortController().signal, env: {} },
    );
    expect(code, stderr).toBe(0);
    expect(stdout).toContain(h.vms[0]!.uuid);
    expect(stdout).not.toContain(h.vms[1]!.uuid);
  });
});

describe("a controller is bound to the identity that attached it", () => {
  it("refuses the controller's session id from another identity, and never shows it", async () => {
    const controller = await debuggerClient.attach(h.vmName(0), Role.CONTROLLER);
    await controller.ok({ case: "writePhysicalMemory", value: { vm: h.vmName(0), gpa: 0x6000n, data: Uint8Array.of(0x90, 0x90) } });

    const second = thief.openSession();
    await expect(second.attach(h.vmName(0), Role.CONTROLLER)).rejects.toMatchObject({ code: GrpcStatus.FAILED_PRECONDITION });
    const present = streamFailure(await second.closed());
    expect(present.details.reason).toBe("CONTROLLER_PRESENT");
    expect(JSON.stringify(present)).not.toContain(controller.id);

    const stolen = { sessionId: controller.id };
    const write = await expectGrpcError(thief.unary("writePhysicalMemory", { vm: h.vmName(0), gpa: 0x6000n, data: Uint8Array.of(0xcc) }, stolen), GrpcStatus.PERMISSION_DENIED);
    expect(write.details).toMatchObject({ reason: "PERMISSION_DENIED", vm: h.vms[0]!.uuid, metadata: expect.objectContaining({ verb: "control" }) });
    await expectGrpcError(thief.unary("pauseVcpu", { name: h.vcpuName(0, 0) }, stolen), GrpcStatus.PERMISSION_DENIED);
    const memory = await debuggerClient.unary("readPhysicalMemory", { vm: h.vmName(0), gpa: 0x6000n, size: 2 });
    expect([...memory.data]).toEqual([0x90, 0x90]);

    // The controller itself may use its id on unary calls.
    await debuggerClient.unary("writePhysicalMemory", { vm: h.vmName(0), gpa: 0x6002n, data: Uint8Array.of(0x41) }, stolen);
    controller.release();
    expect((await controller.closed()).code).toBe(GrpcStatus.OK);
  });

  it("asks admin to release a VM another identity controls; release suffices otherwise", async () => {
    const controller = await debuggerClient.attach(h.vmName(0), Role.CONTROLLER);
    const denied = await expectGrpcError(thief.unary("releaseVm", { name: h.vmName(0) }), GrpcStatus.PERMISSION_DENIED);
    expect(denied.details.metadata).toMatchObject({ verb: "admin", vm: h.vms[0]!.uuid });
    await expectGrpcError(scanner.unary("releaseVm", { name: h.vmName(1) }), GrpcStatus.PERMISSION_DENIED);
    const admin = h.connect(mtls(pki.client), { interceptors: [bearer(await token({ sub: "oncall", groups: ["vmi-admins"] }))] });
    await admin.unary("releaseVm", { name: h.vmName(0), gracePeriod: { seconds: 0n, nanos: 0 } });
    expect((await controller.closed()).code).not.toBe(GrpcStatus.PERMISSION_DENIED);
    await h.waitHooked(0, 2);
    // No controller now: release is enough.
    await thief.unary("releaseVm", { name: h.vmName(1), gracePeriod: { seconds: 0n, nanos: 0 } });
    await h.waitHooked(1, 2);
  });
});

describe("policy reload", () => {
  it("applies a new policy to a running session without dropping it, and keeps the old one when the new is invalid", async () => {
    const session = await debuggerClient.attach(h.vmName(0), Role.CONTROLLER);
    const write = { case: "writePhysicalMemory", value: { vm: h.vmName(0), gpa: 0x7000n, data: Uint8Array.of(1) } } as const;
    await session.ok(write);

    writeFileSync(policyFile, policy("read"));
    // The file watcher reloads it; SIGHUP (reloadPolicy) does the same at once.
    await waitUntil(async () => (await session.command(write)).result.case === "error", "the watcher to reload the policy", { timeoutMs: 10_000, intervalMs: 100 });
    expect(h.bridge.reloadPolicy()).toBe(true);
    const denied = await session.command(write);
    expect(denied.result.case === "error" && denied.result.value.code).toBe(GrpcStatus.PERMISSION_DENIED);

    writeFileSync(policyFile, "version: 1\ngrants: [{ verbs: [fly] }]\n");
    expect(h.bridge.reloadPolicy()).toBe(false);
    expect((await session.command(write)).result.case).toBe("error"); // the last good policy stays

    writeFileSync(policyFile, policy("control"));
    expect(h.bridge.reloadPolicy()).toBe(true);
    await session.ok(write); // the same stream, never dropped
    const reloads = auditRecords().filter((r) => r["action"] === "policy_reload");
    expect(reloads.some((r) => r["result"] === "invalid" && (r["errors"] as string[]).length >= 2)).toBe(true);
    session.release();
    await session.closed();
  });
});

describe("JWKS reload", () => {
  it("follows a key rotation of the JWKS file without dropping a session opened with the old key; a bad file keeps the keys", async () => {
    const oldToken = await token({ sub: "system:serviceaccount:intro:watcher" });
    const sa = h.connect(mtls(pki.client), { interceptors: [bearer(oldToken)] });
    const session = await sa.attach(h.vmName(0), Role.OBSERVER);
    const read = { case: "readPhysicalMemory", value: { vm: h.vmName(0), gpa: 0x5000n, size: 8 } } as const;
    await session.ok(read);

    const rotated = await generateKeyPair("ES256");
    const original = readFileSync(jwksFile, "utf8");
    try {
      writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(rotated.publicKey)), kid: "sa-next", alg: "ES256" }] }));
      await waitUntil(() => logLines.some((l) => l["msg"] === "JWKS reloaded"), "the watcher to reload the JWKS", { timeoutMs: 10_000, intervalMs: 50 });
      const now = Math.floor(Date.now() / 1000);
      const newToken = await new SignJWT({ iss: ISSUER, aud: ["kvmi-bridge"], iat: now, exp: now + 600, sub: "system:serviceaccount:intro:watcher" })
        .setProtectedHeader({ alg: "ES256", kid: "sa-next" })
        .sign(rotated.privateKey);
      expect((await h.connect(mtls(pki.client), { interceptors: [bearer(newToken)] }).unary("listVms", {})).vms).toHaveLength(1);
      await expectGrpcError(h.connect(mtls(pki.client), { interceptors: [bearer(oldToken)] }).unary("listVms", {}), GrpcStatus.UNAUTHENTICATED);
      // The session opened with the old key is the same stream, still served.
      await session.ok(read);

      writeFileSync(jwksFile, "{ not json");
      expect(h.bridge.reloadJwks()).toBe(false);
      expect(logLines.some((l) => l["msg"] === "JWKS reload failed; the previous keys stay in force" && /not readable JSON/.test(String(l["error"])))).toBe(true);
      expect((await h.connect(mtls(pki.client), { interceptors: [bearer(newToken)] }).unary("listVms", {})).vms).toHaveLength(1);
    } finally {
      writeFileSync(jwksFile, original);
      expect(h.bridge.reloadJwks()).toBe(true);
    }
    await session.ok(read);
    session.release();
    await session.closed();
  });
});

describe("audit", () => {
  it("records who wrote guest memory, with a digest and never the bytes, in an intact chain", async () => {
    const data = Uint8Array.of(0xde, 0xad, 0xbe, 0xef);
    const session = await debuggerClient.attach(h.vmName(0), Role.CONTROLLER);
    await session.ok({ case: "writePhysicalMemory", value: { vm: h.vmName(0), gpa: 0x8000n, data } });
    session.release();
    await session.closed();
    const records = auditRecords();
    const written = records.find((r) => r["action"] === "command" && (r["args"] as { gpa?: string }).gpa === "0x8000");
    expect(written).toMatchObject({
      identity: DEBUGGER,
      source: "spiffe",
      command: "KVMI_VM_WRITE_PHYSICAL",
      vm: h.vms[0]!.uuid,
      args: { data: { bytes: 4, sha256: createHash("sha256").update(data).digest("hex") } },
      result: "ok",
    });
    expect(written!["peer"]).toMatch(/127\.0\.0\.1/);
    expect(records.some((r) => r["action"] === "attach" && r["identity"] === DEBUGGER && r["role"] === "controller")).toBe(true);
    expect(records.some((r) => r["action"] === "denied" && r["identity"] === SCANNER && r["verb"] === "control" && r["call"] === "writePhysicalMemory")).toBe(true);
    // The stolen session id: the attempt is recorded with the thief's identity and its refusal.
    expect(records.some((r) => r["action"] === "command" && r["identity"] === "thief.example.org" && r["result"] === "PERMISSION_DENIED")).toBe(true);
    expect(records.some((r) => r["action"] === "release_vm" && r["identity"] === "oncall" && r["result"] === "ok")).toBe(true);
    expect(readFileSync(auditFile, "utf8")).not.toMatch(/deadbeef|"222,173,190,239"/i);
    expect(verifyAuditFiles(auditFileSet(auditFile))).toMatchObject({ ok: true, firstSeq: 0 });
  });
});
