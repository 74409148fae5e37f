// SPDX-License-Identifier: Apache-2.0
/**
 * Throw-away TLS material for the container tests, made with the openssl CLI in a temporary
 * directory: one CA for the server and the clients, a server certificate for the names the
 * manifests use, a client certificate for tools and one for the pod's own probe. Nothing is
 * checked in; `dispose()` deletes the keys.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** PEM file paths. */
export interface Pki {
  readonly dir: string;
  readonly caCert: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  readonly probeCert: string;
  readonly probeKey: string;
  dispose(): void;
}

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
  } catch (error) {
    const e = error as NodeJS.ErrnoException & { stderr?: Buffer };
    if (e.code === "ENOENT") throw new Error("the openssl CLI is missing: the TLS tests generate their certificates with it (apt-get install openssl)");
    throw new Error(`openssl ${args.join(" ")} failed: ${e.stderr?.toString() ?? e.message}`);
  }
}

/** Creates the CA and the server, client and probe certificates (EC P-256, one day). */
export function createPki(serverNames: readonly string[] = ["kvmi-bridge.kvmi-system.svc", "localhost"]): Pki {
  const dir = mkdtempSync(join(tmpdir(), "kvmi-pki-"));
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  openssl(["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=kvmi-bridge test CA"], dir);
  const issue = (name: string, subject: string, extensions: string): void => {
    openssl(["req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", subject], dir);
    writeFileSync(join(dir, `${name}.ext`), extensions);
    openssl(["x509", "-req", "-in", `${name}.csr`, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1", "-out", `${name}.crt`, "-extfile", `${name}.ext`], dir);
  };
  const san = [...serverNames.map((n) => `DNS:${n}`), "IP:127.0.0.1"].join(",");
  issue("server", "/CN=kvmi-bridge", `subjectAltName=${san}\nextendedKeyUsage=serverAuth\n`);
  issue("client", "/CN=introspection-tool", "extendedKeyUsage=clientAuth\n");
  issue("probe", "/CN=kvmi-bridge-probe", "extendedKeyUsage=clientAuth\n");
  // The files are mounted into containers running as another user.
  for (const file of readdirSync(dir)) chmodSync(join(dir, file), 0o644);
  chmodSync(dir, 0o755);
  const f = (name: string): string => join(dir, name);
  return {
    dir,
    caCert: f("ca.crt"),
    serverCert: f("server.crt"),
    serverKey: f("server.key"),
    clientCert: f("client.crt"),
    clientKey: f("client.key"),
    probeCert: f("probe.crt"),
    probeKey: f("probe.key"),
    dispose: () => rmSync(dir, { recursive: true, force: true }),
  };
}
