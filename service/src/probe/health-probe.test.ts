// SPDX-License-Identifier: Apache-2.0
// `kvmi-bridge health` against real grpc-js servers with the standard health service: plaintext
// on 127.0.0.1:0 and a UNIX socket, TLS and mTLS (certificates from the server tests' throw-away
// PKI), NOT_SERVING, unknown services, unreachable targets and bad arguments.
import { mkdtempSync, rmSync } from "node:fs";
import { readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import { createTestPki } from "../server/testdata/test-pki.js";
import type { TestPki } from "../server/testdata/test-pki.js";
import { healthMain, parseHealthArgs } from "./health-probe.js";

const health = new HealthImplementation({ "": "SERVING", "kvmi.v1.IntrospectionService": "SERVING", "down.Service": "NOT_SERVING" });
const servers: Server[] = [];
let pki: TestPki;
let dir: string;

async function serve(address: string, creds = ServerCredentials.createInsecure()): Promise<number> {
  const server = new Server();
  health.addToServer(server);
  servers.push(server);
  return new Promise((resolve, reject) => server.bindAsync(address, creds, (error, port) => (error ? reject(error) : resolve(port))));
}

async function probe(argv: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string }> {
  const lines: string[] = [];
  const code = await healthMain(argv, env, { stdout: (t) => void lines.push(t), stderr: (t) => void lines.push(t) });
  return { code, out: lines.join("") };
}

beforeAll(() => {
  pki = createTestPki(); // Fails with a clear message when the openssl CLI is missing.
  dir = mkdtempSync(join(tmpdir(), "kvmi-health-"));
});

afterAll(() => {
  for (const server of servers) server.forceShutdown();
  pki?.dispose();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("plaintext", () => {
  it("exits 0 for SERVING, 1 for NOT_SERVING, unknown services and closed ports", async () => {
    const port = await serve("127.0.0.1:0");
    expect(await probe(["--target", `127.0.0.1:${port}`])).toEqual({ code: 0, out: `127.0.0.1:${port}: SERVING\n` });
    expect((await probe(["--target", `127.0.0.1:${port}`, "--service", "kvmi.v1.IntrospectionService"])).code).toBe(0);
    expect(await probe(["--target", `127.0.0.1:${port}`, "--service", "down.Service"])).toEqual({ code: 1, out: `127.0.0.1:${port}: NOT_SERVING\n` });
    expect(await probe(["--target", `127.0.0.1:${port}`, "--service", "no.Such"])).toMatchObject({ code: 1, out: expect.stringMatching(/unreachable: .*\(gRPC code 5\)/) });
    const closed = await probe(["--target", "127.0.0.1:1", "--timeout-ms", "1000"]);
    expect(closed).toMatchObject({ code: 1, out: expect.stringMatching(/^127\.0\.0\.1:1: unreachable: /) });
  });

  it("follows KVMI_BRIDGE_GRPC_LISTEN, with a wildcard host replaced by loopback", async () => {
    const port = await serve("127.0.0.1:0");
    expect(await probe([], { KVMI_BRIDGE_GRPC_LISTEN: `0.0.0.0:${port}` })).toEqual({ code: 0, out: `127.0.0.1:${port}: SERVING\n` });
    const socket = join(dir, "grpc.sock");
    await serve(`unix:${socket}`);
    expect(await probe([], { KVMI_BRIDGE_GRPC_LISTEN: `unix:${socket}` })).toEqual({ code: 0, out: `unix:${socket}: SERVING\n` });
    expect(parseHealthArgs([], {})).toMatchObject({ options: { target: "127.0.0.1:50051" } });
    expect(parseHealthArgs([], { KVMI_BRIDGE_GRPC_LISTEN: "[::]:6000" })).toMatchObject({ options: { target: "[::1]:6000" } });
    expect(parseHealthArgs([], { KVMI_BRIDGE_GRPC_LISTEN: "10.0.0.7:6000" })).toMatchObject({ options: { target: "10.0.0.7:6000" } });
  });
});

describe("TLS", () => {
  it("checks the server against --tls-ca, and presents a client certificate for mTLS", async () => {
    const keyPair = { cert_chain: readFileSync(pki.server.cert), private_key: readFileSync(pki.server.key) };
    const tlsPort = await serve("127.0.0.1:0", ServerCredentials.createSsl(null, [keyPair], false));
    const mtlsPort = await serve("127.0.0.1:0", ServerCredentials.createSsl(readFileSync(pki.ca.cert), [keyPair], true));
    const ca = ["--tls-ca", pki.ca.cert, "--tls-server-name", "localhost"];
    expect((await probe(["--target", `127.0.0.1:${tlsPort}`, ...ca])).code).toBe(0);
    expect((await probe(["--target", `127.0.0.1:${tlsPort}`])).code).toBe(1); // plaintext to a TLS port
    const client = ["--tls-cert", pki.client.cert, "--tls-key", pki.client.key];
    expect((await probe(["--target", `127.0.0.1:${mtlsPort}`, ...ca, ...client])).code).toBe(0);
    expect((await probe(["--target", `127.0.0.1:${mtlsPort}`, ...ca, "--timeout-ms", "1500"])).code).toBe(1);
    const rogue = ["--tls-cert", pki.rogueClient.cert, "--tls-key", pki.rogueClient.key, "--timeout-ms", "1500"];
    expect((await probe(["--target", `127.0.0.1:${mtlsPort}`, ...ca, ...rogue])).code).toBe(1);
  });
});

describe("arguments", () => {
  it.each([
    [["--bogus"], /Unknown option '--bogus'/],
    [["--timeout-ms", "0"], /--timeout-ms must be a positive whole number/],
    [["--tls-ca", "ca.pem", "--tls-cert", "c.pem"], /--tls-cert and --tls-key go together/],
    [["--tls-cert", "c.pem", "--tls-key", "k.pem"], /need --tls-ca/],
  ])("exits 2 for %j", async (argv, message) => {
    const result = await probe(argv);
    expect(result.code).toBe(2);
    expect(result.out).toMatch(message);
  });

  it("prints help", async () => {
    expect(await probe(["--help"])).toMatchObject({ code: 0, out: expect.stringMatching(/^Usage: kvmi-bridge health/) });
  });
});
