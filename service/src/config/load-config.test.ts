// SPDX-License-Identifier: Apache-2.0
// loadConfig: precedence, every error at once, redaction, the TLS rule, and the file formats.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestPki } from "../server/testdata/test-pki.js";
import type { TestPki } from "../server/testdata/test-pki.js";
import {
  applyConfigAction,
  ConfigError,
  envName,
  flagName,
  loadConfig,
  loadConfigOrThrow,
  OPTION_KEYS,
  redactedConfig,
  renderConfig,
  renderHelp,
} from "./index.js";
import type { BridgeConfig, LoadConfigInput, LoadConfigResult } from "./index.js";

let dir: string;
let pki: TestPki;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "kvmi-bridge-config-test-"));
  pki = createTestPki();
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  pki.dispose();
});

function file(name: string, content: string): string {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
}

function load(partial: Partial<LoadConfigInput> = {}): LoadConfigResult {
  return loadConfig({ argv: [], env: {}, cwd: dir, pid: 4242, ...partial });
}

function ok(partial: Partial<LoadConfigInput> = {}): BridgeConfig {
  const result = load(partial);
  if (result.action === "fail") throw new Error(`unexpected errors:\n${result.errors.join("\n")}`);
  if (result.action === "help") throw new Error("unexpected help");
  return result.config;
}

function errors(partial: Partial<LoadConfigInput> = {}): readonly string[] {
  const result = load(partial);
  if (result.action !== "fail") throw new Error(`expected errors, got ${result.action}`);
  return result.errors;
}

describe("names", () => {
  it("derives one name in three spellings", () => {
    expect(flagName("requestTimeoutMs")).toBe("request-timeout-ms");
    expect(envName("requestTimeoutMs")).toBe("KVMI_BRIDGE_REQUEST_TIMEOUT_MS");
    expect(envName("tlsClientCa")).toBe("KVMI_BRIDGE_TLS_CLIENT_CA");
  });
});

describe("defaults", () => {
  it("fills every option and freezes the result deeply", () => {
    const config = ok();
    expect(config).toMatchObject({
      grpcListen: "127.0.0.1:50051",
      kvmiListen: ["unix:/run/kvmi-bridge/kvmi.sock"],
      kvmiSocketMode: 0o660,
      metricsListen: "127.0.0.1:9464",
      allowInsecure: false,
      handshakeVariant: "auto",
      requestTimeoutMs: 10_000,
      eventTimeoutMs: 5_000,
      eventTimeouts: {},
      unhookDeadlineMs: 5_000,
      controllerGonePolicy: "release",
      logLevel: "info",
      embedded: false,
      embeddedVms: 2,
      embeddedVcpus: 2,
      embeddedMemoryMib: 64,
    });
    expect(config.tlsCert).toBeUndefined();
    expect(Object.keys(config).sort()).toEqual([...OPTION_KEYS].sort());
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.kvmiListen)).toBe(true);
    expect(Object.isFrozen(config.eventTimeouts)).toBe(true);
    expect(() => ((config as { requestTimeoutMs: number }).requestTimeoutMs = 1)).toThrow(TypeError);
  });

  it("puts the embedded KVMI socket in a per-process temp directory", () => {
    expect(ok({ argv: ["--embedded"], env: { TMPDIR: "/var/tmp" } }).kvmiListen).toEqual(["unix:/var/tmp/kvmi-bridge-4242/kvmi.sock"]);
    expect(ok({ argv: ["--embedded"] }).kvmiListen).toEqual(["unix:/tmp/kvmi-bridge-4242/kvmi.sock"]);
  });
});

describe("precedence: flags > env > file > defaults", () => {
  it("resolves requestTimeoutMs layer by layer", () => {
    const yaml = file("precedence.yaml", "requestTimeoutMs: 1000\n");
    const env = { KVMI_BRIDGE_REQUEST_TIMEOUT_MS: "2000" };
    const flag = ["--request-timeout-ms", "3000"];
    expect(ok({ argv: [...flag, "--config", yaml], env }).requestTimeoutMs).toBe(3000);
    expect(ok({ argv: ["--config", yaml], env }).requestTimeoutMs).toBe(2000);
    expect(ok({ argv: ["--config", yaml] }).requestTimeoutMs).toBe(1000);
    expect(ok().requestTimeoutMs).toBe(10_000);
  });

  it("picks per option, not per layer", () => {
    const yaml = file("mixed.yaml", "logLevel: debug\nmaxVms: 7\neventTimeoutMs: 900\n");
    const config = ok({
      argv: ["--config", yaml, "--max-vms=9"],
      env: { KVMI_BRIDGE_EVENT_TIMEOUT_MS: "800" },
    });
    expect([config.logLevel, config.maxVms, config.eventTimeoutMs]).toEqual(["debug", 9, 800]);
  });

  it("validates only the winning value, so a flag can override a broken file value", () => {
    const yaml = file("broken.yaml", "requestTimeoutMs: soon\n");
    expect(errors({ argv: ["--config", yaml] })).toEqual([`requestTimeoutMs in ${yaml}: "soon" is not a whole number of ms`]);
    expect(ok({ argv: ["--config", yaml, "--request-timeout-ms", "5"] }).requestTimeoutMs).toBe(5);
  });

  it("merges eventTimeouts per event across layers", () => {
    const yaml = file("events.yaml", "eventTimeouts:\n  cr: 1000\n  msr: 2000\n");
    const config = ok({
      argv: ["--config", yaml, "--event-timeouts", "cr=10", "--event-timeouts=pf=30"],
      env: { KVMI_BRIDGE_EVENT_TIMEOUTS: "msr=20,breakpoint=25" },
    });
    expect(config.eventTimeouts).toEqual({ cr: 10, msr: 20, breakpoint: 25, pf: 30 });
  });

  it("takes the config file from KVMI_BRIDGE_CONFIG, the flag winning", () => {
    const a = file("a.json", JSON.stringify({ maxVms: 11 }));
    const b = file("b.json", JSON.stringify({ maxVms: 12 }));
    expect(ok({ env: { KVMI_BRIDGE_CONFIG: a } }).maxVms).toBe(11);
    expect(ok({ env: { KVMI_BRIDGE_CONFIG: a }, argv: ["--config", b] }).maxVms).toBe(12);
  });

  it("treats empty environment variables as unset", () => {
    expect(ok({ env: { KVMI_BRIDGE_TLS_CERT: "", KVMI_BRIDGE_MAX_VMS: "" } }).maxVms).toBe(256);
  });
});

describe("every error at once", () => {
  it("lists three bad values as three messages, each named as the user spelled it", () => {
    const yaml = file("three.yaml", "handshakeVariant: fancy\n");
    const list = errors({
      argv: ["--config", yaml, "--request-timeout-ms", "abc"],
      env: { KVMI_BRIDGE_LOG_LEVEL: "loud" },
    });
    expect(list).toHaveLength(3);
    expect(list).toEqual(
      expect.arrayContaining([
        `handshakeVariant in ${yaml}: "fancy" is not one of auto|base|max-gpa|e820`,
        `--request-timeout-ms: "abc" is not a whole number of ms`,
        `KVMI_BRIDGE_LOG_LEVEL: "loud" is not one of trace|debug|info|warn|error`,
      ]),
    );
  });

  it("reports argv, file-key, range, address and file problems together", () => {
    const yaml = file("many.yaml", "requestTimeotMs: 5\nkvmiSocketMode: 0660\n");
    const list = errors({
      argv: ["--config", yaml, "--bogus", "stray", "--max-vms", "0", "--grpc-listen", "::1:50051", "--secret-file", "nope.txt",
        "--kvmi-listen", "vsock:3", "--metrics-listen", "127.0.0.1:99999"],
    });
    expect(list).toEqual([
      "--bogus: unknown option",
      'unexpected argument "stray" (options start with --; see --help)',
      `requestTimeotMs in ${yaml}: unknown option (did you mean requestTimeoutMs?)`,
      '--grpc-listen: "::1:50051" looks like an IPv6 address; write it in brackets: [::1]:50051',
      '--kvmi-listen: "vsock:3" must start with unix: or tcp: (e.g. unix:/run/kvmi-bridge/kvmi.sock)',
      `kvmiSocketMode in ${yaml}: 660 is a number; write the mode as a quoted octal string, e.g. "0660"`,
      "--metrics-listen: port 99999 is out of range 0..65535 (or \"off\" to disable metrics)",
      `--secret-file: file "${join(dir, "nope.txt")}" does not exist`,
      "--max-vms: 0 is out of range 1..65535",
    ]);
  });

  it("suggests the closest flag and rejects repeated scalars", () => {
    expect(errors({ argv: ["--request-timeout=5"] })).toEqual(["--request-timeout: unknown option (did you mean --request-timeout-ms?)"]);
    expect(errors({ argv: ["--max-vms", "1", "--max-vms", "2"] })).toEqual(["--max-vms: given more than once (as --max-vms)"]);
    expect(errors({ argv: ["--log-level"] })).toEqual(["--log-level: needs a value"]);
  });

  it("throws a ConfigError carrying every message from loadConfigOrThrow", () => {
    let thrown: unknown;
    try {
      loadConfigOrThrow({ argv: ["--max-vms", "x", "--log-level", "y"], env: {}, cwd: dir });
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(ConfigError);
    expect((thrown as ConfigError).errors).toHaveLength(2);
    expect((thrown as ConfigError).message).toContain("2 errors");
  });
});

describe("environment", () => {
  it("warns about unknown KVMI_BRIDGE_ variables but ignores Kubernetes service links", () => {
    const result = load({
      env: {
        KVMI_BRIDGE_REQEST_TIMEOUT_MS: "1",
        KVMI_BRIDGE_SERVICE_HOST: "10.0.0.1",
        KVMI_BRIDGE_PORT: "tcp://10.0.0.1:50051",
        KVMI_BRIDGE_PORT_50051_TCP_ADDR: "10.0.0.1",
        HOME: "/root",
      },
    });
    expect(result.action).toBe("run");
    expect("warnings" in result && result.warnings).toEqual([
      "KVMI_BRIDGE_REQEST_TIMEOUT_MS: not a kvmi-bridge option, ignored (did you mean KVMI_BRIDGE_REQUEST_TIMEOUT_MS?)",
    ]);
  });

  it("parses booleans, lists and modes from strings", () => {
    const config = ok({
      env: {
        KVMI_BRIDGE_EMBEDDED: "yes",
        KVMI_BRIDGE_KVMI_LISTEN: "unix:/run/a.sock, tcp:127.0.0.1:7000",
        KVMI_BRIDGE_KVMI_SOCKET_MODE: "600",
      },
    });
    expect(config.embedded).toBe(true);
    expect(config.kvmiListen).toEqual(["unix:/run/a.sock", "tcp:127.0.0.1:7000"]);
    expect(config.kvmiSocketMode).toBe(0o600);
  });
});

describe("flags", () => {
  it("accepts switches, --no- switches, --switch=false and repeated lists", () => {
    expect(ok({ argv: ["--embedded"] }).embedded).toBe(true);
    expect(ok({ argv: ["--no-embedded"], env: { KVMI_BRIDGE_EMBEDDED: "true" } }).embedded).toBe(false);
    expect(ok({ argv: ["--embedded=false"] }).embedded).toBe(false);
    expect(ok({ argv: ["--kvmi-listen", "unix:a.sock", "--kvmi-listen=unix:/run/b.sock,tcp:[::1]:9"] }).kvmiListen).toEqual([
      `unix:${join(dir, "a.sock")}`,
      "unix:/run/b.sock",
      "tcp:[::1]:9",
    ]);
  });

  it("returns help for --help and -h, even next to errors", () => {
    const result = load({ argv: ["--max-vms", "x", "-h"] });
    expect(result.action).toBe("help");
  });
});

describe("--help", () => {
  it("lists every option in all three spellings with its default", () => {
    const help = renderHelp();
    for (const key of OPTION_KEYS) {
      expect(help).toContain(`--${flagName(key)}`);
      expect(help).toContain(envName(key));
      expect(help).toContain(`file: ${key}`);
    }
    expect(help).toContain("--[no-]allow-insecure");
    expect(help).toContain("default: 10000; env: KVMI_BRIDGE_REQUEST_TIMEOUT_MS");
    expect(help).toContain("--print-config");
    expect(help).toContain("--config <file>");
  });
});

describe("--print-config", () => {
  it("prints the effective config with secrets redacted", () => {
    const secret = "hunter2-cookie";
    const result = load({ argv: ["--print-config", "--max-vms", "3"], env: { KVMI_BRIDGE_SECRET: secret } });
    expect(result.action).toBe("print-config");
    let out = "";
    const outcome = applyConfigAction(result, { stdout: (text) => (out += text), stderr: () => undefined });
    expect(outcome).toEqual({ exitCode: 0 });
    expect(out).not.toContain(secret);
    const printed = JSON.parse(out) as Record<string, unknown>;
    expect(printed.secret).toBe("[REDACTED]");
    expect(printed.maxVms).toBe(3);
    expect(printed.kvmiSocketMode).toBe("0660");
    expect(printed.tlsCert).toBeNull();
  });

  it("prints a config that loads back to the same config", () => {
    const config = ok({ argv: ["--event-timeouts", "cr=7", "--kvmi-socket-mode", "0600", "--metrics-listen", "off"] });
    const saved = file("printed.json", renderConfig(config));
    expect(ok({ argv: ["--config", saved] })).toEqual(config);
  });

  it("never echoes a secret in an error", () => {
    const secretFile = file("cookie.txt", "s3cr3t\n");
    const list = errors({ argv: ["--secret-file", secretFile], env: { KVMI_BRIDGE_SECRET: "inline-s3cr3t" } });
    expect(list).toHaveLength(1);
    expect(list[0]).toContain("not both");
    expect(list.join("\n")).not.toContain("inline-s3cr3t");
    expect(redactedConfig(ok({ env: { KVMI_BRIDGE_SECRET: "inline-s3cr3t" } })).secret).toBe("[REDACTED]");
  });

  it("prints every error and exits 2 on invalid input", () => {
    let err = "";
    const outcome = applyConfigAction(load({ argv: ["--max-vms", "x", "--log-level", "y"] }), {
      stdout: () => undefined,
      stderr: (text) => (err += text),
    });
    expect(outcome).toEqual({ exitCode: 2 });
    expect(err).toContain("invalid configuration (2 errors)");
    expect(err).toContain("--max-vms");
    expect(err).toContain("--log-level");
  });
});

describe("TLS rule", () => {
  it("refuses plaintext on a non-loopback address and says how to fix it", () => {
    // --authorization none: the policy rule off loopback is auth-options.test.ts's subject.
    const list = errors({ argv: ["--grpc-listen", "0.0.0.0:50051", "--authorization", "none"] });
    expect(list).toHaveLength(1);
    expect(list[0]).toMatch(/^--grpc-listen: 0\.0\.0\.0:50051 is not a loopback address/);
    expect(list[0]).toContain("--tls-cert and --tls-key");
    expect(list[0]).toContain("--allow-insecure");
    expect(errors({ env: { KVMI_BRIDGE_GRPC_LISTEN: "10.1.2.3:50051" } })[0]).toMatch(/^KVMI_BRIDGE_GRPC_LISTEN: /);
    expect(errors({ argv: ["--grpc-listen", "node-1.example:50051", "--authorization", "none"] })).toHaveLength(1);
  });

  it("allows plaintext on loopback and unix sockets", () => {
    for (const listen of ["127.0.0.1:1", "127.9.9.9:1", "[::1]:1", "localhost:1", "unix:/run/kvmi-bridge/grpc.sock", "unix:grpc.sock"]) {
      expect(ok({ argv: ["--grpc-listen", listen] }).grpcListen, listen).toMatch(/^(127|\[::1\]|localhost|unix:\/)/);
    }
  });

  it("allows a non-loopback address with TLS, mTLS, or --allow-insecure", () => {
    const tls = ["--grpc-listen", "0.0.0.0:50051", "--tls-cert", pki.server.cert, "--tls-key", pki.server.key, "--authorization", "none"];
    expect(ok({ argv: tls }).tlsCert).toBe(pki.server.cert);
    expect(ok({ argv: [...tls, "--tls-client-ca", pki.ca.cert] }).tlsClientCa).toBe(pki.ca.cert);
    expect(ok({ argv: ["--grpc-listen", "0.0.0.0:50051", "--allow-insecure", "--authorization", "none"] }).allowInsecure).toBe(true);
    const warned = load({ argv: [...tls, "--allow-insecure"] });
    expect("warnings" in warned && warned.warnings).toEqual(["--allow-insecure: has no effect because TLS is configured"]);
  });

  it("keeps the forwarders' CA apart from the clients' CA: --forward-client-ca, and a warning when TCP forwarders share --tls-client-ca", () => {
    const tls = ["--tls-cert", pki.server.cert, "--tls-key", pki.server.key, "--tls-client-ca", pki.ca.cert];
    const shared = load({ argv: [...tls, "--forward-listen", "tcp:127.0.0.1:7000"] });
    expect("warnings" in shared && shared.warnings).toEqual([
      "--forward-listen: forwarders on tcp:127.0.0.1:7000 are checked against --tls-client-ca, so any gRPC client certificate can connect as a VM; give --forward-client-ca",
    ]);
    const apart = load({ argv: [...tls, "--forward-listen", "tcp:127.0.0.1:7000", "--forward-client-ca", pki.rogueClient.cert] });
    expect("warnings" in apart && apart.warnings).toEqual([]);
    expect(ok({ argv: [...tls, "--forward-listen", "unix:/run/kvmi-bridge/forward.sock"] }).forwardClientCa).toBeUndefined();
    expect(envName("forwardClientCa")).toBe("KVMI_BRIDGE_FORWARD_CLIENT_CA");
    expect(errors({ argv: ["--forward-client-ca", pki.ca.cert] })).toEqual([
      "--forward-client-ca: forwarder certificates need TLS; give --tls-cert and --tls-key too",
    ]);
    expect(errors({ argv: [...tls, "--forward-client-ca", pki.server.key] })).toEqual([`--forward-client-ca: "${pki.server.key}" holds no PEM certificate`]);
  });

  it("checks that TLS files come in pairs, parse, match and are in date", () => {
    expect(errors({ argv: ["--tls-cert", pki.server.cert] })).toEqual(["--tls-cert: needs --tls-key as well"]);
    expect(errors({ argv: ["--tls-client-ca", pki.ca.cert] })).toEqual([
      "--tls-client-ca: client certificates need TLS; give --tls-cert and --tls-key too",
    ]);
    expect(errors({ argv: ["--tls-cert", pki.server.cert, "--tls-key", pki.client.key] })).toEqual([
      `--tls-key: "${pki.client.key}" does not belong to the certificate in "${pki.server.cert}"`,
    ]);
    expect(errors({ argv: ["--tls-cert", pki.server.key, "--tls-key", pki.server.key] })).toEqual([
      `--tls-cert: "${pki.server.key}" holds no PEM certificate`,
    ]);
    const later = new Date(Date.now() + 10 * 24 * 3600 * 1000);
    expect(errors({ argv: ["--tls-cert", pki.server.cert, "--tls-key", pki.server.key], now: later })[0]).toMatch(/expired on/);
  });
});

describe("files and addresses", () => {
  it("reads YAML and JSON, resolving relative paths against the file's directory", () => {
    const secret = file("qemu-secret", "cookie");
    const yaml = file("paths.yml", "secretFile: qemu-secret\nkvmiListen:\n  - unix:sockets/kvmi.sock\nkvmiSocketMode: '0640'\n");
    const config = ok({ argv: ["--config", yaml] });
    expect(config.secretFile).toBe(secret);
    expect(config.kvmiListen).toEqual([`unix:${join(dir, "sockets/kvmi.sock")}`]);
    expect(config.kvmiSocketMode).toBe(0o640);
    const json = file("paths.json", JSON.stringify({ embedded: true, embeddedVms: 4, metricsListen: "[::]:9464" }));
    expect(ok({ argv: ["--config", json] })).toMatchObject({ embedded: true, embeddedVms: 4, metricsListen: "[::]:9464" });
  });

  it("reports unreadable, malformed and non-mapping files", () => {
    expect(errors({ argv: ["--config", "missing.yaml"] })).toEqual([`--config: cannot read "${join(dir, "missing.yaml")}" (no such file)`]);
    expect(errors({ env: { KVMI_BRIDGE_CONFIG: "missing.yaml" } })).toEqual([
      `KVMI_BRIDGE_CONFIG: cannot read "${join(dir, "missing.yaml")}" (no such file)`,
    ]);
    expect(errors({ argv: ["--config", file("bad.json", "{")] })[0]).toMatch(/is not valid JSON/);
    expect(errors({ argv: ["--config", file("bad.yaml", "a: [")] })[0]).toMatch(/is not valid YAML/);
    expect(errors({ argv: ["--config", file("list.yaml", "- 1\n")] })[0]).toMatch(/must hold a mapping/);
    expect(errors({ argv: ["--config", file("conf.toml", "")] })[0]).toMatch(/must end in \.yaml, \.yml or \.json/);
  });

  it("rejects unix paths longer than sun_path, listeners on one endpoint, and too many emulated VMs", () => {
    const long = `unix:/${"x".repeat(120)}`;
    expect(errors({ argv: ["--kvmi-listen", long] })[0]).toMatch(/Linux allows at most 107/);
    expect(errors({ argv: ["--metrics-listen", "127.0.0.1:50051"] })).toEqual(["--metrics-listen: uses the same address as grpcListen (default)"]);
    expect(errors({ argv: ["--kvmi-listen", "tcp:0.0.0.0:9464"] })[0]).toMatch(/same address as metricsListen/);
    expect(errors({ argv: ["--embedded", "--embedded-vms", "5", "--max-vms", "4"] })).toEqual([
      "--embedded-vms: 5 emulated VMs exceed maxVms 4",
    ]);
  });

  it("rejects bad event names and deadlines in eventTimeouts", () => {
    expect(errors({ argv: ["--event-timeouts", "cr=1,bogus=2,msr=0"] })).toEqual([
      "--event-timeouts: unknown event \"bogus\" (events: pause_vcpu, hypercall, breakpoint, cr, trap, xsetbv, descriptor, msr, pf, singlestep); msr: 0 is out of range 1..2147483647 ms",
    ]);
    expect(errors({ argv: ["--event-timeouts", "cr"] })).toEqual(['--event-timeouts: "cr" is not EVENT=MS (e.g. cr=1000)']);
  });
});
