// SPDX-License-Identifier: Apache-2.0
/**
 * One line that says what is wrong when kvmictl cannot talk to the bridge at all. grpc-js reports
 * every such failure as UNAVAILABLE "No connection established. Last error: … Resolution note:",
 * which names neither the cause nor the fix; the last error inside it does, once read:
 *
 * | last error                          | what it means                                           |
 * |-------------------------------------|---------------------------------------------------------|
 * | ECONNREFUSED host:443, no port given | `--target localhost` dials gRPC's default port 443     |
 * | ECONNREFUSED / ENOENT (unix:)        | nothing listens there: the bridge is not running        |
 * | SSL "wrong version number"           | TLS flags given, but the server speaks plaintext        |
 * | "Failed to connect" without TLS      | the server closed a plaintext HTTP/2 start: it wants TLS |
 * | "Protocol error"                     | an HTTP/1 server answered (e.g. the metrics port)        |
 */
import { UnavailableError } from "@kvmi/clients";

/** What kvmictl dialed. */
export interface DialedTarget {
  /** `--target` as given. */
  readonly target: string;
  /** Whether any `--tls-*` flag was given. */
  readonly tls: boolean;
}

/** The default gRPC port of kvmi-bridge (`--grpc-listen` 127.0.0.1:50051). */
const BRIDGE_PORT = 50051;

/** True when `target` names a host without a port (`localhost`, `dns:bridge`), so gRPC dials 443. */
export function lacksPort(target: string): boolean {
  if (target.startsWith("unix:")) return false;
  const host = target.replace(/^dns:(\/\/[^/]*\/)?/, "");
  if (host.startsWith("[")) return !/\]:\d+$/.test(host);
  return !/:\d+$/.test(host);
}

/**
 * The one-line explanation of a connection failure (without the `kvmictl:` prefix), or
 * `undefined` when `err` is not one.
 */
export function connectionHint(err: unknown, dialed: DialedTarget): string | undefined {
  if (!(err instanceof UnavailableError) || !/No connection established|Failed to connect|Connection dropped/.test(err.message)) return undefined;
  const m = err.message;
  const where = `the bridge at ${dialed.target}`;
  if (/ECONNREFUSED/.test(m) && lacksPort(dialed.target)) {
    return `--target ${dialed.target} has no port, so gRPC dialed port 443 and nothing answered; the bridge listens on ${BRIDGE_PORT} by default: --target ${dialed.target}:${BRIDGE_PORT}`;
  }
  if (/ECONNREFUSED/.test(m)) {
    return `cannot reach ${where}: connection refused. Is kvmi-bridge running (\`npm start\` serves 127.0.0.1:${BRIDGE_PORT})? Set --target or KVMI_BRIDGE_TARGET to its gRPC address`;
  }
  if (/ENOENT|ENOTSOCK/.test(m) && dialed.target.startsWith("unix:")) {
    return `cannot reach ${where}: no socket at ${dialed.target.slice(5)}. Is kvmi-bridge running with --grpc-listen ${dialed.target}?`;
  }
  if (/EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|ENOTFOUND|EAI_AGAIN/.test(m)) {
    const code = /E[A-Z_]+/.exec(m.replace(/^.*Last error: /, ""))?.[0] ?? "unreachable";
    return `cannot reach ${where} (${code}): check the host name and port of --target`;
  }
  if (/wrong version number|packet length too long|unknown protocol/i.test(m) && dialed.tls) {
    return `${where} does not speak TLS (it answered in plaintext): drop the --tls-* flags, or start the bridge with --tls-cert/--tls-key`;
  }
  if (/Protocol error/.test(m)) {
    return `${dialed.target} is not a gRPC server (it answered HTTP/1.x): is that the metrics port? kvmictl needs the bridge's gRPC address (--grpc-listen, ${BRIDGE_PORT} by default)`;
  }
  if (/Failed to connect|Connection dropped/.test(m) && !dialed.tls) {
    return `${where} closed the connection before gRPC started: it probably requires TLS; pass --tls-ca FILE (and --tls-cert/--tls-key for mTLS)`;
  }
  if (/certificate|self[- ]signed|altnames|SSL|TLS/i.test(m)) {
    const last = m.replace(/^No connection established\. Last error: (Error: )?/, "").replace(/\.? ?Resolution note:.*$/s, "").trim();
    return `TLS handshake with ${where} failed: ${last}. Check --tls-ca, --tls-cert/--tls-key and --tls-server-name`;
  }
  return undefined;
}
