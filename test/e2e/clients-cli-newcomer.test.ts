// SPDX-License-Identifier: Apache-2.0
// What a newcomer hit with kvmictl (issue 17 §3): one JSON convention for every --json output,
// one-line hints instead of grpc-js internals when the bridge cannot be reached, non-zero exits
// for an unmapped translation, and page-access refusing addresses it cannot mean.
import { readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import type { Server as HttpServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runKvmictl } from "../support/clients-harness.js";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { createThrowAwayPki, runNode, startClientsBridge, tsxArgs } from "../support/clients-harness.js";
import type { ClientsBridge, RunResult, ThrowAwayPki } from "../support/clients-harness.js";

let bridge: ClientsBridge;
let vm: EmulatedVm;
let pki: ThrowAwayPki;
let http: HttpServer;
let httpTarget: string;
let tlsServer: grpc.Server;
let tlsTarget: string;

beforeAll(async () => {
  bridge = await startClientsBridge({ vms: [{ name: "newcomer-vm", vcpus: 2 }] });
  [vm] = bridge.vms as [EmulatedVm];
  pki = createThrowAwayPki();
  // An HTTP/1 server stands for the bridge's metrics port, a gRPC server with TLS for a TLS bridge.
  http = createServer((_req, res) => res.end("# metrics\n"));
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  httpTarget = `127.0.0.1:${(http.address() as { port: number }).port}`;
  tlsServer = new grpc.Server();
  const credentials = grpc.ServerCredentials.createSsl(null, [{ cert_chain: readFileSync(pki.serverCert), private_key: readFileSync(pki.serverKey) }]);
  const port = await new Promise<number>((resolve, reject) => tlsServer.bindAsync("127.0.0.1:0", credentials, (e, p) => (e ? reject(e) : resolve(p))));
  tlsTarget = `localhost:${port}`;
}, 30_000);

afterAll(async () => {
  await bridge?.stop();
  http?.close();
  tlsServer?.forceShutdown();
  pki?.dispose();
});

/** Runs kvmictl's main() in-process against the test bridge (a later --target wins). */
async function kvmictl(...args: string[]): Promise<RunResult> {
  return runKvmictl(["--target", bridge.target, ...args]);
}

/** Every violation of the JSON convention (clients/README.md "JSON output") in `value`. */
function conventionViolations(value: unknown, path = "$"): string[] {
  if (Array.isArray(value)) return value.flatMap((v, i) => conventionViolations(v, `${path}[${i}]`));
  if (value !== null && typeof value === "object") {
    return Object.entries(value).flatMap(([k, v]) => [...(k.startsWith("$") ? [`${path}.${k}: protobuf bookkeeping`] : []), ...conventionViolations(v, `${path}.${k}`)]);
  }
  // Byte data (`data`, `previous`) is hex without 0x and may look like digits; anything else may not.
  if (typeof value === "string" && /^\d+$/.test(value) && !/\.(data|previous)$/.test(path)) return [`${path}: a number as a decimal string`];
  if (typeof value === "number" && (!Number.isFinite(value) || Math.abs(value) > Number.MAX_SAFE_INTEGER)) return [`${path}: a number JSON cannot carry exactly`];
  return [];
}

describe("--json", () => {
  it("follows one convention in every command: no $typeName, u64 values as 0x strings, counts as numbers", async () => {
    const dumpFile = join(tmpdir(), `kvmictl-newcomer-${process.pid}.img`);
    const runs = await Promise.all([
      kvmictl("--json", "vms", "list"),
      kvmictl("--json", "vms", "get", "newcomer-vm"),
      kvmictl("--json", "info", "newcomer-vm"),
      kvmictl("--json", "regs", "newcomer-vm", "0", "--msr", "0xc0000080"),
      kvmictl("--json", "read", "newcomer-vm", "0x1000", "32"),
      kvmictl("--json", "translate", "newcomer-vm", "0", "0xffffffff80000000"),
      kvmictl("--json", "dump", "newcomer-vm", "--out", dumpFile, "--length", "1M"),
      kvmictl("--json", "events", "watch", "newcomer-vm", "--controller", "--type", "cr", "--count", "2"),
    ]);
    for (const run of runs) {
      expect(run.code, run.stderr).toBe(0);
      for (const line of run.stdout.trim().startsWith("{\n") || run.stdout.trim().startsWith("[") ? [run.stdout] : run.stdout.trim().split("\n")) {
        expect(conventionViolations(JSON.parse(line)), line).toEqual([]);
      }
    }
    expect(runs[3]!.stdout).not.toContain("$typeName");
    const regs = JSON.parse(runs[3]!.stdout);
    expect(regs.regs.rip).toMatch(/^0x[0-9a-f]+$/);
    expect(regs.sregs.cs.selector).toBe(0x10);
    expect(regs.msrs).toEqual({ "0xc0000080": "0xd01" });
    const info = JSON.parse(runs[2]!.stdout);
    expect(info).toMatchObject({ memoryBytes: 64 * 1024 * 1024, maxGfn: "0x4000", vcpus: [{ tscHz: 2_400_000_000 }, {}] });
    const dump = JSON.parse(runs[6]!.stdout);
    expect(dump).toMatchObject({ start: "0x0", bytes: 1024 * 1024, dataBytes: expect.any(Number), holeBytes: expect.any(Number) });
    expect(dump.dataBytes + dump.holeBytes).toBe(dump.bytes);
    rmSync(dumpFile, { force: true });
  });
});

describe("connection failures", () => {
  it("explain in one line what is wrong", async () => {
    const [down, metrics, tlsToPlain, plainToTls, noPort] = await Promise.all([
      kvmictl("--target", "127.0.0.1:1", "--timeout", "5000", "vms", "list"),
      kvmictl("--target", httpTarget, "--timeout", "5000", "vms", "list"),
      kvmictl("--target", bridge.target.replace("127.0.0.1", "localhost"), "--tls-ca", pki.caCert, "--timeout", "5000", "vms", "list"),
      kvmictl("--target", tlsTarget, "--timeout", "5000", "vms", "list"),
      kvmictl("--target", "localhost", "--timeout", "5000", "vms", "list"),
    ]);
    for (const r of [down, metrics, tlsToPlain, plainToTls, noPort]) {
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^kvmictl: [^\n]+ \(UNAVAILABLE\)\n$/);
      expect(r.stderr).not.toMatch(/No connection established|Resolution note|ssl3_get_record/);
    }
    expect(down.stderr).toMatch(/cannot reach the bridge at 127\.0\.0\.1:1: connection refused\. Is kvmi-bridge running/);
    expect(metrics.stderr).toMatch(/is not a gRPC server \(it answered HTTP\/1\.x\): is that the metrics port\?/);
    expect(tlsToPlain.stderr).toMatch(/does not speak TLS .*drop the --tls-\* flags/);
    expect(plainToTls.stderr).toMatch(/closed the connection before gRPC started: it probably requires TLS; pass --tls-ca/);
    expect(noPort.stderr).toMatch(/--target localhost has no port, so gRPC dialed port 443 .* --target localhost:50051/);
  });
});

describe("the examples", () => {
  it("explain a connection failure in one line too", async () => {
    const result = await runNode([...tsxArgs("clients/examples/ps.ts"), "--target", "127.0.0.1:1", "--vm", "newcomer-vm"]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^error: cannot reach the bridge at 127\.0\.0\.1:1: connection refused\. Is kvmi-bridge running[^\n]*\n$/);
  });
});

describe("exit codes", () => {
  it("translate of an unmapped address exits 1, like read of a hole", async () => {
    const [mapped, unmapped, unmappedJson] = await Promise.all([
      kvmictl("translate", "newcomer-vm", "0", "0xffffffff80000000"),
      kvmictl("translate", "newcomer-vm", "0", "0x100000000000"),
      kvmictl("--json", "translate", "newcomer-vm", "0", "0x100000000000"),
    ]);
    expect(mapped.code).toBe(0);
    expect(unmapped.code).toBe(1);
    expect(unmapped.stdout).toBe("0x0000100000000000 -> not mapped\n");
    expect(unmappedJson.code).toBe(1);
    expect(JSON.parse(unmappedJson.stdout)).toMatchObject({ mapped: false });
  });

  it("page-access refuses an unaligned address and one beyond the guest's memory, changing nothing", async () => {
    const before = vm.guest.memory.getPageAccess(7n);
    const [unaligned, beyond] = await Promise.all([kvmictl("page-access", "newcomer-vm", "0x7123", "r-x"), kvmictl("page-access", "newcomer-vm", "0x40000000", "r-x")]);
    expect(unaligned.code).toBe(2);
    expect(unaligned.stderr).toBe("kvmictl: gpa: 0x7123 is not page-aligned: give the page's first address, 0x7000\n");
    expect(beyond.code).toBe(2);
    expect(beyond.stderr).toBe("kvmictl: gpa: 0x40000000 is beyond the guest's memory (its last page is 0x4000000)\n");
    expect(vm.guest.memory.getPageAccess(7n)).toBe(before);
    await bridge.waitForVm(vm.uuid, (v) => !v.controllerAttached);
  });
});
