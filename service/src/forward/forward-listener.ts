// SPDX-License-Identifier: Apache-2.0
/**
 * The node bridge's side of the forwarders: accepts their connections (a UNIX socket the DaemonSet
 * shares with VM pods, or TCP with the gRPC server's TLS settings across the pod network), reads
 * the hello (./hello.ts) and then either
 *
 * - runs the usual KVMI handshake on the rest of the stream, answering with the VM's own cookie
 *   hash and tagging the VM with its VMI namespace/name (`vm`), or
 * - lists an announced VM as awaiting its QEMU (`expect`), answering `OK` or `ERR …`.
 *
 * One forwarded connection is one QEMU connection: when it ends, the VM's KVMI session ends as if
 * QEMU had closed its socket, and the bridge undoes what it hooked (docs/kubevirt-forwarder.md).
 */
import { readFileSync } from "node:fs";
import { chmodSync, mkdirSync, rmSync } from "node:fs";
import { createServer as createNetServer } from "node:net";
import type { AddressInfo, Server, Socket } from "node:net";
import { dirname } from "node:path";
import { createServer as createTlsServer } from "node:tls";
import { acceptKvmiConnection, readExactly } from "@kvmi/kvm-bridge";
import type { AcceptedVm, KvmiListenerOptions, Logger, VmRecord, VmRegistry } from "@kvmi/kvm-bridge";
import type { ListenAddress } from "../config/index.js";
import { isLoopback } from "../config/index.js";
import { HelloError, parseHelloBody, parseHelloHead } from "./hello.js";

/** TLS of the forward listener on TCP: the gRPC server's certificate and client CA. */
export interface ForwardTls {
  readonly certFile: string;
  readonly keyFile: string;
  /** When set, forwarders must present a certificate this CA signed (mTLS). */
  readonly clientCaFile?: string;
}

/** Options of {@link startForwardListener}. */
export interface ForwardListenerOptions {
  readonly addresses: readonly ListenAddress[];
  /** Required for a TCP address that is not loopback, unless {@link allowInsecure}. */
  readonly tls?: ForwardTls;
  readonly allowInsecure: boolean;
  /** Mode of UNIX sockets (the forwarders in VM pods run as another uid: 0666 or a shared group). */
  readonly socketMode: number;
  /** Handshake settings shared with the QEMU listener (variant, timeouts, channel options). */
  readonly kvmi: Omit<KvmiListenerOptions, "endpoints" | "secret">;
  readonly registry: VmRegistry;
  /** Admits a forwarded VM, as the QEMU listener's callback does. */
  readonly onVm: (vm: AcceptedVm) => void;
  /** Called when an announced VM's QEMU misses its deadline. */
  readonly onMissed?: (record: VmRecord) => void;
  /** Open forwarder connections at most (forwarded VMs plus hellos in progress). */
  readonly maxConnections: number;
  /** A forwarder that connects and says nothing is dropped after this long. Default 10 s. */
  readonly helloTimeoutMs?: number;
  readonly logger: Logger;
}

/** A running forward listener. */
export interface ForwardListener {
  /** Bound addresses, `unix:PATH` or `tcp:HOST:PORT` with the real port. */
  readonly addresses: readonly string[];
  /** Stops accepting; forwarded VMs stay connected (the bridge's stop releases them). */
  close(): Promise<void>;
}

/** What `problem` says for a VM whose QEMU never reached the forwarder (docs/kubevirt-forwarder.md). */
export const NEVER_CONNECTED_PROBLEM =
  "QEMU did not connect to the KVMI forwarder before the deadline: the domain lost its <qemu:commandline> " +
  "introspection arguments (another hook sidecar or plugin rewrote the domain after ours), QEMU has no " +
  "introspection object, or the VM failed to start";

function helloPeer(socket: Socket, address: ListenAddress): string {
  return address.kind === "unix" ? `forwarder:unix:${address.path}` : `forwarder:tcp:${socket.remoteAddress}:${socket.remotePort}`;
}

/**
 * Binds every address; rejects naming the first that cannot be bound or that would take
 * forwarders in plaintext from the network.
 */
export async function startForwardListener(options: ForwardListenerOptions): Promise<ForwardListener> {
  const log = options.logger;
  const servers: Server[] = [];
  const addresses: string[] = [];
  const helloTimeoutMs = options.helloTimeoutMs ?? 10_000;

  const handle = async (socket: Socket, address: ListenAddress): Promise<void> => {
    const peer = helloPeer(socket, address);
    let hello;
    try {
      const length = parseHelloHead(await readExactly(socket, 12, helloTimeoutMs));
      hello = parseHelloBody(await readExactly(socket, length, helloTimeoutMs));
    } catch (error) {
      const reason = error instanceof HelloError ? error.message : `no hello: ${(error as Error).message}`;
      log.warn({ peer, reason }, "closing a forwarder connection");
      if (error instanceof HelloError && socket.writable) socket.end(`ERR ${reason}\n`);
      else socket.destroy();
      return;
    }
    if (hello.kind === "expect") {
      let record: VmRecord;
      try {
        record = options.registry.expect(
          {
            uuid: hello.uuid,
            name: hello.name,
            ...(hello.origin && { origin: hello.origin }),
            deadlineMs: hello.deadlineSeconds * 1000,
            problem: NEVER_CONNECTED_PROBLEM,
            peer,
          },
          options.onMissed,
        );
      } catch (error) {
        log.warn({ peer, reason: (error as Error).message }, "refusing a VM announcement");
        socket.end(`ERR ${(error as Error).message}\n`);
        return;
      }
      log.info({ vm: hello.uuid, origin: hello.origin, state: record.state, deadlineSeconds: hello.deadlineSeconds, peer }, "forwarder announced a VM");
      socket.end("OK\n");
      return;
    }
    if (socket.remoteAddress !== undefined) socket.setNoDelay(true);
    await acceptKvmiConnection(socket, options.kvmi, options.onVm, {
      peer,
      ...(hello.cookieHash !== undefined && { cookieHash: new Uint8Array(Buffer.from(hello.cookieHash, "hex")) }),
      ...(hello.origin && { origin: hello.origin }),
    });
  };

  try {
    for (const address of options.addresses) {
      const useTls = address.kind === "tcp" && options.tls !== undefined;
      if (address.kind === "tcp" && !useTls && !isLoopback(address) && !options.allowInsecure) {
        throw new Error(
          `forwardListen tcp:${address.host}:${address.port}: forwarders would connect in plaintext from the pod network; ` +
            "configure --tls-cert/--tls-key (and --tls-client-ca to authenticate them) or pass --allow-insecure",
        );
      }
      const onSocket = (socket: Socket): void => {
        socket.on("error", (err) => log.debug({ err: err.message }, "forwarder socket error"));
        void handle(socket, address);
      };
      const server: Server = useTls
        ? createTlsServer(
            {
              cert: readFileSync(options.tls!.certFile),
              key: readFileSync(options.tls!.keyFile),
              ...(options.tls!.clientCaFile !== undefined && { ca: readFileSync(options.tls!.clientCaFile), requestCert: true, rejectUnauthorized: true }),
            },
            onSocket,
          )
        : createNetServer({ pauseOnConnect: true }, onSocket);
      server.maxConnections = options.maxConnections;
      await listen(server, address, options.socketMode);
      servers.push(server);
      const bound = address.kind === "unix" ? `unix:${address.path}` : `tcp:${address.host}:${(server.address() as AddressInfo).port}`;
      addresses.push(bound);
      log.info({ address: bound, tls: useTls, mtls: useTls && options.tls!.clientCaFile !== undefined }, "listening for KVMI forwarders");
    }
  } catch (error) {
    for (const server of servers) server.close();
    throw error;
  }
  return {
    addresses,
    close: async () => {
      for (const server of servers) server.close();
      for (const address of options.addresses) if (address.kind === "unix") rmSync(address.path, { force: true });
    },
  };
}

function listen(server: Server, address: ListenAddress, mode: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const label = address.kind === "unix" ? `unix:${address.path}` : `tcp:${address.host}:${address.port}`;
    server.once("error", (err) => reject(new Error(`cannot listen for forwarders on ${label}: ${err.message}`, { cause: err })));
    if (address.kind === "unix") {
      mkdirSync(dirname(address.path), { recursive: true });
      rmSync(address.path, { force: true });
      server.listen(address.path, () => {
        chmodSync(address.path, mode);
        resolve();
      });
    } else {
      server.listen(address.port, address.host, () => resolve());
    }
  });
}
