// SPDX-License-Identifier: Apache-2.0
// The identity, policy and audit options: a policy is required off loopback unless authorization
// is explicitly off, JWT options come together, and --print-config shows them.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig, redactedConfig } from "./index.js";
import type { LoadConfigInput } from "./index.js";

let dir: string;
let policy: string;
let jwks: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "kvmi-auth-options-"));
  policy = join(dir, "policy.yaml");
  writeFileSync(policy, "version: 1\ngrants: []\n");
  jwks = join(dir, "jwks.json");
  writeFileSync(jwks, '{"keys":[]}');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function errors(argv: string[], env: LoadConfigInput["env"] = {}): readonly string[] {
  const result = loadConfig({ argv, env, cwd: dir, pid: 1 });
  return result.action === "fail" ? result.errors : [];
}

const OFF_LOOPBACK = ["--grpc-listen", "0.0.0.0:50051", "--allow-insecure"];

describe("authorization options", () => {
  it("requires a policy off loopback and says how to proceed", () => {
    const list = errors(OFF_LOOPBACK);
    expect(list).toHaveLength(1);
    expect(list[0]).toMatch(/^--grpc-listen: gRPC listens off loopback, so a policy is required/);
    expect(list[0]).toContain("--authorization none");
    expect(errors([...OFF_LOOPBACK, "--policy-file", policy])).toEqual([]);
    expect(errors([...OFF_LOOPBACK, "--authorization", "none"])).toEqual([]);
    expect(errors([...OFF_LOOPBACK], { KVMI_BRIDGE_AUTHORIZATION: "none" })).toEqual([]);
  });

  it("needs no policy on loopback or a unix socket", () => {
    expect(errors([])).toEqual([]);
    expect(errors(["--grpc-listen", "unix:grpc.sock"])).toEqual([]);
  });

  it("refuses a policy together with --authorization none, and unknown modes", () => {
    expect(errors(["--authorization", "none", "--policy-file", policy])).toEqual([
      "--policy-file: --authorization none disables the policy; drop one of the two",
    ]);
    expect(errors(["--authorization", "some"])[0]).toMatch(/^--authorization: "some" is not one of policy\|none/);
  });

  it("wants issuer and audience with a JWKS file, and the file with them", () => {
    expect(errors(["--jwt-jwks-file", jwks])).toEqual([
      "--jwt-jwks-file: bearer JWTs need at least one accepted issuer (--jwt-issuer)",
      "--jwt-jwks-file: bearer JWTs need at least one accepted audience (--jwt-audience)",
    ]);
    expect(errors(["--jwt-audience", "kvmi-bridge"])).toEqual(["--jwt-audience: needs --jwt-jwks-file, the keys to verify tokens with"]);
    expect(errors(["--jwt-jwks-file", jwks, "--jwt-issuer", "https://k8s", "--jwt-audience", "a,b"])).toEqual([]);
  });

  it("checks the audit file's directory and prints every option", () => {
    expect(errors(["--audit-file", join(dir, "missing-dir", "audit.jsonl")])[0]).toMatch(/^--audit-file: directory ".*missing-dir" is not writable/);
    const result = loadConfig({
      argv: ["--policy-file", policy, "--audit-file", "audit.jsonl", "--audit-stdout", "--jwt-jwks-file", jwks, "--jwt-issuer", "https://k8s", "--jwt-audience", "kvmi-bridge"],
      env: {},
      cwd: dir,
    });
    if (result.action !== "run") throw new Error(`unexpected ${result.action}`);
    expect(redactedConfig(result.config)).toMatchObject({
      authorization: "policy",
      policyFile: policy,
      auditFile: join(dir, "audit.jsonl"),
      auditStdout: true,
      auditMaxBytes: 64 * 1024 * 1024,
      auditMaxFiles: 5,
      jwtJwksFile: jwks,
      jwtIssuer: ["https://k8s"],
      jwtAudience: ["kvmi-bridge"],
      jwtGroupsClaim: "groups",
    });
  });
});
