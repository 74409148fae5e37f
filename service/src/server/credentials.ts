// SPDX-License-Identifier: Apache-2.0
/**
 * Server credentials from the TLS options of the config: plaintext, TLS, or mutual TLS when a
 * client CA is configured. The config loader already checked that the files exist, parse and
 * match, and that plaintext is only used where it is allowed.
 */
import { readFileSync } from "node:fs";
import { ServerCredentials } from "@grpc/grpc-js";
import type { BridgeConfig } from "../config/index.js";

/** The transport security of the gRPC listener. */
export type TlsMode = "plaintext" | "tls" | "mtls";

/** Credentials plus what they amount to, for the start-up log. */
export interface BridgeServerCredentials {
  readonly credentials: ServerCredentials;
  readonly mode: TlsMode;
}

/**
 * Builds grpc-js server credentials. Files are read now, once; rotating a certificate needs a
 * restart.
 *
 * @throws the `fs` error when a file vanished after validation, or grpc-js' error for bad PEM.
 */
export function createServerCredentials(config: Pick<BridgeConfig, "tlsCert" | "tlsKey" | "tlsClientCa">): BridgeServerCredentials {
  if (config.tlsCert === undefined || config.tlsKey === undefined) {
    return { credentials: ServerCredentials.createInsecure(), mode: "plaintext" };
  }
  const keyCertPair = { cert_chain: readFileSync(config.tlsCert), private_key: readFileSync(config.tlsKey) };
  const clientCa = config.tlsClientCa === undefined ? null : readFileSync(config.tlsClientCa);
  // checkClientCertificate = true makes grpc-js (node:tls requestCert + rejectUnauthorized) refuse
  // handshakes without a certificate signed by clientCa.
  return {
    credentials: ServerCredentials.createSsl(clientCa, [keyCertPair], clientCa !== null),
    mode: clientCa === null ? "tls" : "mtls",
  };
}
