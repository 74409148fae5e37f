// SPDX-License-Identifier: Apache-2.0
/**
 * The rules across options that loadConfig (load-config.ts) applies once every option has its
 * value: TLS material in pairs and readable, plaintext only on loopback, one secret source,
 * listeners on distinct endpoints. Apart from load-config.ts because they are about what the
 * options mean together, not about where values come from; like the rest of the configuration
 * they collect errors and warnings instead of throwing.
 */
import { X509Certificate, createPrivateKey } from "node:crypto";
import { readFileSync } from "node:fs";
import { isLoopback, isWildcardHost, parseGrpcListen, parseHostPort, parseKvmiListen } from "./address.js";
import type { ListenAddress } from "./address.js";
import { checkAuthOptions } from "./auth-options.js";
import type { BridgeConfig } from "./options.js";

/**
 * Checks the rules across options, only over options that parsed (`failed` holds the others);
 * `origin` names where each value came from, for the messages.
 */
export function crossCheck(
  c: Partial<BridgeConfig>,
  failed: ReadonlySet<string>,
  origin: Readonly<Record<string, string>>,
  now: Date,
  errors: string[],
  warnings: string[],
): void {
  const good = (...keys: Array<keyof BridgeConfig>): boolean => keys.every((key) => !failed.has(key));
  const name = (key: keyof BridgeConfig): string => origin[key] ?? key;

  // TLS material comes as a pair; a client CA needs a server certificate.
  if (good("tlsCert", "tlsKey")) {
    if (c.tlsCert !== undefined && c.tlsKey === undefined) errors.push(`${name("tlsCert")}: needs --tls-key as well`);
    if (c.tlsKey !== undefined && c.tlsCert === undefined) errors.push(`${name("tlsKey")}: needs --tls-cert as well`);
  }
  if (good("tlsCert", "tlsKey") && c.tlsCert !== undefined && c.tlsKey !== undefined) {
    checkKeyPair(c.tlsCert, c.tlsKey, name("tlsCert"), name("tlsKey"), now, errors, warnings);
  }
  // A CA bundle of peer certificates (clients', forwarders') needs a server certificate and PEM.
  for (const [key, whose] of [["tlsClientCa", "client"], ["forwardClientCa", "forwarder"]] as const) {
    const file = c[key];
    if (file === undefined) continue;
    if (good(key, "tlsCert") && c.tlsCert === undefined) errors.push(`${name(key)}: ${whose} certificates need TLS; give --tls-cert and --tls-key too`);
    if (!good(key)) continue;
    try {
      new X509Certificate(readFileSync(file));
    } catch {
      errors.push(`${name(key)}: "${file}" holds no PEM certificate`);
    }
  }
  if (good("forwardListen", "forwardClientCa", "tlsClientCa") && c.forwardClientCa === undefined && c.tlsClientCa !== undefined) {
    const tcp = (c.forwardListen ?? []).filter((item) => {
      const address = parseKvmiListen(item, "/");
      return address.ok && address.value.kind === "tcp";
    });
    if (tcp.length > 0) {
      warnings.push(`${name("forwardListen")}: forwarders on ${tcp.join(", ")} are checked against --tls-client-ca, so any gRPC client certificate can connect as a VM; give --forward-client-ca`);
    }
  }

  // Plaintext only where nobody else can listen in (guest memory travels over this socket).
  if (good("grpcListen", "tlsCert", "tlsKey", "allowInsecure") && c.grpcListen !== undefined) {
    const address = parseGrpcListen(c.grpcListen, "/");
    const tls = c.tlsCert !== undefined && c.tlsKey !== undefined;
    if (address.ok && !tls && !isLoopback(address.value) && c.allowInsecure !== true) {
      errors.push(
        `${name("grpcListen")}: ${c.grpcListen} is not a loopback address, and plaintext gRPC there would expose guest ` +
          `memory to the network. Give --tls-cert and --tls-key (plus --tls-client-ca for mTLS), listen on ` +
          `127.0.0.1:PORT or unix:PATH, or pass --allow-insecure if another layer protects the network`,
      );
    }
    if (tls && c.allowInsecure === true) warnings.push(`${name("allowInsecure")}: has no effect because TLS is configured`);
  }

  // A policy is required off loopback unless authorization is explicitly off (docs/authorization.md).
  if (good("authorization", "policyFile", "jwtJwksFile", "jwtIssuer", "jwtAudience", "grpcListen")) {
    const address = c.grpcListen === undefined ? undefined : parseGrpcListen(c.grpcListen, "/");
    checkAuthOptions(c, address?.ok === true ? isLoopback(address.value) : undefined, name, errors);
  }

  // One secret source.
  if (good("secret", "secretFile") && c.secret !== undefined && c.secretFile !== undefined) {
    errors.push(`${name("secretFile")}: give either a secret file or an inline secret (${name("secret")}), not both`);
  }
  if (good("secretFile") && c.secretFile !== undefined) {
    try {
      if (readFileSync(c.secretFile).length === 0) errors.push(`${name("secretFile")}: "${c.secretFile}" is empty`);
    } catch (error) {
      errors.push(`${name("secretFile")}: cannot read "${c.secretFile}" (${(error as NodeJS.ErrnoException).code})`);
    }
  }

  if (good("embedded", "embeddedVms", "maxVms") && c.embedded && c.embeddedVms! > c.maxVms!) {
    errors.push(`${name("embeddedVms")}: ${c.embeddedVms} emulated VMs exceed maxVms ${c.maxVms}`);
  }

  // Two listeners on one endpoint fail at bind time with EADDRINUSE; say which ones now.
  if (good("grpcListen", "metricsListen", "kvmiListen")) {
    const endpoints: Array<{ label: string; address: ListenAddress }> = [];
    const grpc = parseGrpcListen(c.grpcListen!, "/");
    if (grpc.ok) endpoints.push({ label: name("grpcListen"), address: grpc.value });
    if (c.metricsListen !== "off") {
      const metrics = parseHostPort(c.metricsListen!);
      if (metrics.ok) endpoints.push({ label: name("metricsListen"), address: metrics.value });
    }
    for (const item of c.kvmiListen!) {
      const kvmi = parseKvmiListen(item, "/");
      if (!kvmi.ok) continue;
      endpoints.push({ label: name("kvmiListen"), address: kvmi.value });
      if (kvmi.value.kind === "tcp" && !isLoopback(kvmi.value)) {
        warnings.push(`${name("kvmiListen")}: ${item} accepts KVMI from the network; only the cookie secret authenticates QEMU`);
      }
    }
    for (let i = 0; i < endpoints.length; i++) {
      for (let j = i + 1; j < endpoints.length; j++) {
        if (sameEndpoint(endpoints[i]!.address, endpoints[j]!.address)) {
          errors.push(`${endpoints[j]!.label}: uses the same address as ${endpoints[i]!.label}`);
        }
      }
    }
  }
}

function sameEndpoint(a: ListenAddress, b: ListenAddress): boolean {
  if (a.kind === "unix") return b.kind === "unix" && a.path === b.path;
  if (b.kind === "unix") return false;
  if (a.port === 0 || a.port !== b.port) return false;
  return a.host === b.host || isWildcardHost(a.host) || isWildcardHost(b.host);
}

function checkKeyPair(certPath: string, keyPath: string, certLabel: string, keyLabel: string, now: Date, errors: string[], warnings: string[]): void {
  let cert: X509Certificate | undefined;
  try {
    cert = new X509Certificate(readFileSync(certPath));
  } catch {
    errors.push(`${certLabel}: "${certPath}" holds no PEM certificate`);
  }
  let key: ReturnType<typeof createPrivateKey> | undefined;
  try {
    key = createPrivateKey(readFileSync(keyPath));
  } catch (error) {
    const encrypted = /passphrase/i.test((error as Error).message);
    errors.push(`${keyLabel}: "${keyPath}" ${encrypted ? "is encrypted; give an unencrypted PEM key" : "holds no PEM private key"}`);
  }
  if (cert === undefined) return;
  if (key !== undefined && !cert.checkPrivateKey(key)) {
    errors.push(`${keyLabel}: "${keyPath}" does not belong to the certificate in "${certPath}"`);
  }
  if (new Date(cert.validTo).getTime() < now.getTime()) {
    errors.push(`${certLabel}: the certificate in "${certPath}" expired on ${new Date(cert.validTo).toISOString()}`);
  } else if (new Date(cert.validFrom).getTime() > now.getTime()) {
    warnings.push(`${certLabel}: the certificate in "${certPath}" is not valid before ${new Date(cert.validFrom).toISOString()}`);
  }
}
