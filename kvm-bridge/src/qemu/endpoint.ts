// SPDX-License-Identifier: Apache-2.0
/** `unix:PATH` or `tcp:HOST:PORT`, the spelling of every kvmi-qemu socket option. */
import { connect, type Socket } from "node:net";
import { KvmiArgumentError, KvmiTimeoutError, KvmiTransportError } from "../errors.js";

export type SocketEndpoint = { readonly kind: "unix"; readonly path: string } | { readonly kind: "tcp"; readonly host: string; readonly port: number };

export function parseSocketEndpoint(text: string): SocketEndpoint {
  if (text.startsWith("unix:") && text.length > 5) return { kind: "unix", path: text.slice(5) };
  const tcp = /^tcp:(.+):(\d+)$/.exec(text);
  if (tcp) return { kind: "tcp", host: tcp[1]!.replace(/^\[(.*)\]$/, "$1"), port: Number(tcp[2]) };
  throw new KvmiArgumentError("endpoint", `"${text}" is not unix:PATH or tcp:HOST:PORT`);
}

export function formatSocketEndpoint(endpoint: SocketEndpoint): string {
  return endpoint.kind === "unix" ? `unix:${endpoint.path}` : `tcp:${endpoint.host}:${endpoint.port}`;
}

/** Opens a stream socket, failing after `timeoutMs` with a message naming the endpoint. */
export function openSocket(endpoint: SocketEndpoint, what: string, timeoutMs = 10_000): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = endpoint.kind === "unix" ? connect(endpoint.path) : connect(endpoint.port, endpoint.host);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new KvmiTimeoutError(`${what} at ${formatSocketEndpoint(endpoint)} did not accept within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.setNoDelay?.(true);
      resolve(socket);
    });
    socket.once("error", (error) => {
      clearTimeout(timer);
      reject(new KvmiTransportError(`cannot connect to ${what} at ${formatSocketEndpoint(endpoint)}: ${error.message}`, {}, { cause: error }));
    });
  });
}
