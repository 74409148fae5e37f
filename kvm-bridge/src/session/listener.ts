// SPDX-License-Identifier: Apache-2.0
/**
 * Accepts device-manager connections (kvmi-abi §2.1: the tool listens, QEMU connects) on UNIX
 * sockets and TCP, runs the handshake (§2.2, §2.3) and turns each hooked socket into a
 * {@link KvmiChannel}. One connection per VM; a failed handshake closes only that connection.
 */
import { chmodSync, mkdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import type { AddressInfo, Server, Socket } from "node:net";
import { dirname } from "node:path";
import { KvmiProtocolError, KvmiTransportError } from "../errors.js";
import type { Logger } from "../logger.js";
import { silentLogger } from "../logger.js";
import { viewOf } from "../wire/codec.js";
import type { Dialect } from "../wire/dialect.js";
import type { HandshakeVariant, VmIdentity } from "../wire/handshake.js";
import { checkHandshakeSize, encodeHandshakeReply, parseHandshake } from "../wire/handshake.js";
import { createKvmiChannel } from "./channel.js";
import type { KvmiChannel, KvmiChannelOptions } from "./channel.js";
import { readExactly } from "./read-exactly.js";

/** A place to listen for device managers. */
export type ListenEndpoint =
  | { readonly kind: "unix"; readonly path: string; /** File mode, default 0o660. */ readonly mode?: number }
  | { readonly kind: "tcp"; readonly host: string; readonly port: number };

/** A device manager that completed the handshake. */
export interface AcceptedVm {
  readonly identity: VmIdentity;
  readonly channel: KvmiChannel;
  /** `unix:PATH` or `tcp:HOST:PORT` of the peer, for logs. */
  readonly peer: string;
}

/** Options of {@link createKvmiListener}. */
export interface KvmiListenerOptions {
  readonly endpoints: readonly ListenEndpoint[];
  /** The KVMI dialect the kernels behind these endpoints speak (docs/protocol/). */
  readonly dialect: Dialect;
  /** The shared secret whose SHA-1 QEMU checks (kvmi-abi §2.2). */
  readonly secret?: Uint8Array;
  /** Which handshake to expect; `auto` guesses from the size (104 bytes reads as max-gpa). */
  readonly handshakeVariant?: HandshakeVariant | "auto";
  /** QEMU drops us after its own handshake_timeout (10 s); we give up on a silent peer as well. */
  readonly handshakeTimeoutMs?: number;
  readonly logger?: Logger;
  readonly channel?: Omit<KvmiChannelOptions, "vm" | "logger" | "dialect">;
}

/** A running listener. */
export interface KvmiListener {
  /** Bound addresses, `unix:PATH` or `tcp:HOST:PORT` (with the real port when 0 was asked). */
  readonly addresses: readonly string[];
  /** Stops accepting new device managers; hooked channels stay open. */
  close(): Promise<void>;
}

/**
 * Starts listening on every endpoint; `onVm` receives each VM after a successful handshake.
 * @throws KvmiTransportError when an endpoint cannot be bound (the error names it).
 */
export async function createKvmiListener(
  options: KvmiListenerOptions,
  onVm: (vm: AcceptedVm) => void,
): Promise<KvmiListener> {
  const log = options.logger ?? silentLogger;
  const servers: Server[] = [];
  const addresses: string[] = [];
  for (const endpoint of options.endpoints) {
    const server = createServer({ pauseOnConnect: true }, (socket) => {
      void accept(socket, options, log, onVm);
    });
    await listen(server, endpoint);
    servers.push(server);
    addresses.push(describe(server, endpoint));
    log.info({ address: addresses.at(-1) }, "listening for device managers");
  }
  return {
    addresses,
    close: async () => {
      // Stop accepting only: net.Server#close would wait for every hooked VM's socket to end.
      for (const server of servers) server.close();
      for (const endpoint of options.endpoints) if (endpoint.kind === "unix") rmSync(endpoint.path, { force: true });
    },
  };
}

function listen(server: Server, endpoint: ListenEndpoint): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", (err) =>
      reject(new KvmiTransportError(`cannot listen on ${label(endpoint)}: ${err.message}`, {}, { cause: err })),
    );
    if (endpoint.kind === "unix") {
      mkdirSync(dirname(endpoint.path), { recursive: true });
      // A stale socket file from a previous run would make bind fail with EADDRINUSE.
      rmSync(endpoint.path, { force: true });
      server.listen(endpoint.path, () => {
        chmodSync(endpoint.path, endpoint.mode ?? 0o660);
        resolve();
      });
    } else {
      server.listen(endpoint.port, endpoint.host, () => resolve());
    }
  });
}

function label(endpoint: ListenEndpoint): string {
  return endpoint.kind === "unix" ? `unix:${endpoint.path}` : `tcp:${endpoint.host}:${endpoint.port}`;
}

function describe(server: Server, endpoint: ListenEndpoint): string {
  if (endpoint.kind === "unix") return label(endpoint);
  const address = server.address() as AddressInfo;
  return `tcp:${endpoint.host}:${address.port}`;
}

async function accept(
  socket: Socket,
  options: KvmiListenerOptions,
  log: Logger,
  onVm: (vm: AcceptedVm) => void,
): Promise<void> {
  const peer = socket.remoteAddress !== undefined ? `tcp:${socket.remoteAddress}:${socket.remotePort}` : "unix";
  const timeoutMs = options.handshakeTimeoutMs ?? 10_000;
  let identity: VmIdentity;
  try {
    // libkvmi's robust parsing (kvmi-abi §2.3): size first, bounded, then exactly the rest.
    const head = await readExactly(socket, 4, timeoutMs);
    const structSize = viewOf(head).getUint32(0, true);
    checkHandshakeSize(structSize);
    const rest = await readExactly(socket, structSize - 4, timeoutMs);
    const whole = new Uint8Array(structSize);
    whole.set(head);
    whole.set(rest, 4);
    identity = parseHandshake(whole, options.handshakeVariant ?? "auto");
    socket.write(encodeHandshakeReply(options.secret));
  } catch (err) {
    const reason = err instanceof KvmiProtocolError ? err.message : `handshake failed: ${(err as Error).message}`;
    log.warn({ peer, reason }, "closing a device-manager connection");
    socket.destroy();
    return;
  }
  const channel = createKvmiChannel(socket, {
    ...options.channel,
    dialect: options.dialect,
    vm: identity.uuid,
    logger: log.child({ vm: identity.uuid }),
  });
  log.info({ vm: identity.uuid, name: identity.name, variant: identity.variant, peer, dialect: options.dialect.name }, "handshake complete");
  onVm({ identity, channel, peer });
}
