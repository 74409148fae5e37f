// SPDX-License-Identifier: Apache-2.0
/**
 * TEST-ONLY PKI: creates a throw-away CA, a server certificate for localhost/127.0.0.1, a client
 * certificate from the same CA and a self-signed "rogue" client certificate in a fresh temporary
 * directory, with the `openssl` CLI. Nothing is checked in: keys exist only for one test run and
 * are deleted by `dispose()`. Used by the server and config tests.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A certificate and its unencrypted private key, as PEM file paths. */
export interface TestKeyPair {
  readonly cert: string;
  readonly key: string;
}

/** The generated files. */
export interface TestPki {
  readonly dir: string;
  readonly ca: TestKeyPair;
  /** Signed by `ca`; SAN DNS:localhost, IP:127.0.0.1, IP:::1; serverAuth. */
  readonly server: TestKeyPair;
  /** Signed by `ca`; clientAuth. */
  readonly client: TestKeyPair;
  /** Self-signed; a client the server must reject under mTLS. */
  readonly rogueClient: TestKeyPair;
  /**
   * Issues one more client certificate from `ca`, e.g. with a SPIFFE ID:
   * `issueClient("scanner", { cn: "scanner", san: "URI:spiffe://example.org/ns/x/sa/scanner" })`.
   * @param san an openssl subjectAltName value (`URI:…,DNS:…`), or none.
   */
  issueClient(name: string, names: { readonly cn: string; readonly san?: string }): TestKeyPair;
  /** Removes the directory. */
  dispose(): void;
}

function openssl(args: readonly string[], cwd: string): void {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

/**
 * Fails with an explicit message when the `openssl` CLI is missing (conventions §11: say what is
 * missing rather than skipping).
 */
export function requireOpenssl(): string {
  try {
    return execFileSync("openssl", ["version"], { encoding: "utf8" }).trim();
  } catch {
    throw new Error("TLS tests need the openssl CLI to generate test certificates: install openssl (e.g. apt-get install openssl) and re-run");
  }
}

/** Generates the test PKI (EC P-256, valid for two days). Takes ~100 ms. */
export function createTestPki(): TestPki {
  requireOpenssl();
  const dir = mkdtempSync(join(tmpdir(), "kvmi-bridge-test-pki-"));
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  const pair = (name: string): TestKeyPair => ({ cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) });
  const ca = pair("ca");
  const server = pair("server");
  const client = pair("client");
  const rogueClient = pair("rogue-client");

  openssl(["req", "-x509", ...ec, "-keyout", ca.key, "-out", ca.cert, "-days", "2", "-subj", "/CN=kvmi-bridge test CA (throw-away)",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"], dir);

  const issue = (target: TestKeyPair, subject: string, extensions: string, serial: string): void => {
    const csr = `${target.cert}.csr`;
    const ext = `${target.cert}.ext`;
    writeFileSync(ext, extensions);
    openssl(["req", "-new", ...ec, "-keyout", target.key, "-out", csr, "-subj", subject], dir);
    openssl(["x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial", serial, "-days", "2", "-out", target.cert, "-extfile", ext], dir);
  };
  issue(server, "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n", "1001");
  issue(client, "/CN=kvmi-bridge test client", "extendedKeyUsage=clientAuth\n", "1002");
  openssl(["req", "-x509", ...ec, "-keyout", rogueClient.key, "-out", rogueClient.cert, "-days", "2", "-subj", "/CN=rogue client",
    "-addext", "extendedKeyUsage=clientAuth"], dir);

  let serial = 2000;
  const issueClient = (name: string, names: { readonly cn: string; readonly san?: string }): TestKeyPair => {
    const target = pair(`client-${name}`);
    const san = names.san === undefined ? "" : `subjectAltName=${names.san}\n`;
    issue(target, `/CN=${names.cn}`, `${san}extendedKeyUsage=clientAuth\n`, String(serial++));
    return target;
  };
  return { dir, ca, server, client, rogueClient, issueClient, dispose: () => rmSync(dir, { recursive: true, force: true }) };
}
