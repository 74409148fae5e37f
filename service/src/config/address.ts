// SPDX-License-Identifier: Apache-2.0
/**
 * Listen addresses of the bridge: `HOST:PORT`, `[IPv6]:PORT`, `unix:PATH` (gRPC) and
 * `unix:PATH` / `tcp:HOST:PORT` (KVMI). One parser for the config loader, the gRPC server and the
 * metrics server, so that a string accepted at start-up is a string every listener understands.
 *
 * @see https://github.com/grpc/grpc/blob/master/doc/naming.md (grpc-js target syntax, `unix:` scheme)
 */
import { isIPv4, isIPv6 } from "node:net";
import { isAbsolute, resolve } from "node:path";

/** A TCP endpoint. `host` is an IPv4 address, an IPv6 address without brackets, or a DNS name. */
export interface TcpAddress {
  readonly kind: "tcp";
  readonly host: string;
  /** 0..65535; 0 asks the OS for an ephemeral port. */
  readonly port: number;
}

/** A unix-domain socket endpoint with an absolute path. */
export interface UnixAddress {
  readonly kind: "unix";
  readonly path: string;
}

/** A parsed listen address. */
export type ListenAddress = TcpAddress | UnixAddress;

/** Result of a parse: the value, or a human-readable reason (no prefix, no trailing period). */
export type ParseResult<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: string };

/**
 * Longest unix socket path Linux accepts: `sizeof(sockaddr_un.sun_path)` is 108 bytes including
 * the terminating NUL.
 * @see https://man7.org/linux/man-pages/man7/unix.7.html
 */
export const UNIX_PATH_MAX_BYTES = 107;

const HOSTNAME_LABEL = /^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$/;

function ok<T>(value: T): ParseResult<T> {
  return { ok: true, value };
}

function fail<T>(error: string): ParseResult<T> {
  return { ok: false, error };
}

function isHostname(host: string): boolean {
  return host.length <= 253 && host.split(".").every((label) => HOSTNAME_LABEL.test(label));
}

function parsePort(text: string): ParseResult<number> {
  if (!/^\d{1,5}$/.test(text)) return fail(`port "${text}" is not a number in 0..65535`);
  const port = Number(text);
  return port <= 65535 ? ok(port) : fail(`port ${port} is out of range 0..65535`);
}

/**
 * Parses `HOST:PORT` where HOST is an IPv4 address, a DNS name or a bracketed IPv6 address
 * (`[::1]:50051`).
 */
export function parseHostPort(text: string): ParseResult<TcpAddress> {
  let host: string;
  let portText: string;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0 || text[close + 1] !== ":") return fail(`"${text}" is not [IPV6]:PORT`);
    host = text.slice(1, close);
    portText = text.slice(close + 2);
    if (!isIPv6(host)) return fail(`"${host}" is not an IPv6 address`);
  } else {
    const colon = text.lastIndexOf(":");
    if (colon < 0) return fail(`"${text}" has no port; expected HOST:PORT`);
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(":")) return fail(`"${text}" looks like an IPv6 address; write it in brackets: [${host}]:${portText}`);
    if (host === "") return fail(`"${text}" has no host; use 0.0.0.0:${portText} to listen on every interface`);
    if (!isIPv4(host) && !isHostname(host)) return fail(`"${host}" is neither an IPv4 address nor a host name`);
  }
  const port = parsePort(portText);
  if (!port.ok) return fail(port.error);
  return ok({ kind: "tcp", host, port: port.value });
}

function parseUnixPath(rawPath: string, baseDir: string): ParseResult<UnixAddress> {
  // grpc-js also accepts the URI form unix:///abs/path; normalise it to unix:/abs/path.
  const withoutAuthority = rawPath.startsWith("//") ? rawPath.slice(2) : rawPath;
  if (withoutAuthority === "") return fail("unix socket path is empty");
  const path = isAbsolute(withoutAuthority) ? withoutAuthority : resolve(baseDir, withoutAuthority);
  const bytes = Buffer.byteLength(path);
  if (bytes > UNIX_PATH_MAX_BYTES) {
    return fail(`unix socket path "${path}" is ${bytes} bytes; Linux allows at most ${UNIX_PATH_MAX_BYTES}`);
  }
  return ok({ kind: "unix", path });
}

/**
 * Parses a gRPC listen address: `HOST:PORT`, `[IPv6]:PORT` or `unix:PATH` (relative paths are
 * resolved against `baseDir`).
 */
export function parseGrpcListen(text: string, baseDir: string): ParseResult<ListenAddress> {
  if (text.startsWith("unix:")) return parseUnixPath(text.slice("unix:".length), baseDir);
  return parseHostPort(text);
}

/** Parses a KVMI listen address: `unix:PATH` or `tcp:HOST:PORT`. */
export function parseKvmiListen(text: string, baseDir: string): ParseResult<ListenAddress> {
  if (text.startsWith("unix:")) return parseUnixPath(text.slice("unix:".length), baseDir);
  if (text.startsWith("tcp:")) return parseHostPort(text.slice("tcp:".length));
  return fail(`"${text}" must start with unix: or tcp: (e.g. unix:/run/kvmi-bridge/kvmi.sock)`);
}

/** Formats a TCP address as `HOST:PORT`, bracketing IPv6 hosts (grpc-js and node:http syntax). */
export function formatHostPort(address: TcpAddress): string {
  return isIPv6(address.host) ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/** Formats a gRPC listen address the way grpc-js `bindAsync` expects it. */
export function formatGrpcListen(address: ListenAddress): string {
  return address.kind === "unix" ? `unix:${address.path}` : formatHostPort(address);
}

/** Formats a KVMI listen address (`unix:PATH` or `tcp:HOST:PORT`). */
export function formatKvmiListen(address: ListenAddress): string {
  return address.kind === "unix" ? `unix:${address.path}` : `tcp:${formatHostPort(address)}`;
}

/**
 * Tells whether only local processes can reach an address: unix sockets, `localhost`,
 * 127.0.0.0/8, ::1 and the IPv4-mapped `::ffff:127.x.y.z`. Other names count as remote even if
 * they resolve to loopback, because DNS can change after the check.
 */
export function isLoopback(address: ListenAddress): boolean {
  if (address.kind === "unix") return true;
  const host = address.host.toLowerCase();
  if (host === "localhost" || host.endsWith(".localhost")) return true;
  if (isIPv4(host)) return host.startsWith("127.");
  if (isIPv6(host)) {
    if (host === "::1" || host === "0:0:0:0:0:0:0:1") return true;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(host);
    return mapped !== null && mapped[1]!.startsWith("127.");
  }
  return false;
}

/** Tells whether a host means "every interface" (0.0.0.0, ::). */
export function isWildcardHost(host: string): boolean {
  return host === "0.0.0.0" || host === "::" || host === "0:0:0:0:0:0:0:0";
}
