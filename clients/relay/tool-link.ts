// SPDX-License-Identifier: Apache-2.0
/**
 * The relay's side of the tool's socket, as QEMU and the kernel present it (docs/protocol/, kvmi-abi
 * lifecycle): connect to the tool's listening UNIX socket, send the handshake built from the remote
 * VM, check the tool's cookie hash, then frame the stream with the tool's dialect.
 */
import net from "node:net";
import type { Vm } from "@kvmi/clients";
import { checkHandshakeReply, encodeHandshake, HANDSHAKE_REPLY_BYTES } from "@kvmi/kvm-bridge/codec";
import type { HandshakeRequest } from "@kvmi/kvm-bridge/codec";

/** How long the tool gets to answer the handshake (QEMU waits a similar few seconds). */
export const HANDSHAKE_TIMEOUT_MS = 10_000;

/** The handshake QEMU would send for `vm`: the richest variant the bridge learned from the VM's own QEMU. */
export function handshakeOf(vm: Vm): HandshakeRequest {
  const startTime = vm.startTime === undefined ? 0n : vm.startTime.seconds;
  const common = { uuid: vm.uuid, name: vm.displayName || vm.uuid, startTime };
  if (vm.e820Entries.length > 0 && vm.e820Entries.length <= 8) {
    return {
      variant: "e820",
      ...common,
      e820: vm.e820Entries.map((e) => ({ address: e.address, length: e.length, type: e.type })),
    };
  }
  if (vm.maxGpa !== undefined) return { variant: "max-gpa", ...common, maxGpa: vm.maxGpa };
  return { variant: "base", ...common };
}

/**
 * Connects to the tool and runs the handshake. Resolves with the socket, paused, with nothing
 * read past the tool's 24-byte answer.
 * @throws Error naming the reason (socket error, timeout, refused cookie).
 */
export async function connectTool(path: string, vm: Vm, secret: Uint8Array | undefined): Promise<net.Socket> {
  const socket = net.createConnection({ path });
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    socket.write(encodeHandshake(handshakeOf(vm)));
    const answer = await readExactly(socket, HANDSHAKE_REPLY_BYTES);
    const refusal = checkHandshakeReply(answer, secret);
    if (refusal !== undefined) throw new Error(`the tool's handshake answer was refused: ${refusal}`);
    return socket;
  } catch (error) {
    socket.destroy();
    throw error;
  }
}

function readExactly(socket: net.Socket, bytes: number): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const done = (error?: Error, data?: Uint8Array): void => {
      clearTimeout(timer);
      socket.off("readable", attempt);
      socket.off("close", onClose);
      if (error !== undefined) reject(error);
      else resolve(data!);
    };
    const timer = setTimeout(() => done(new Error(`the tool did not answer the handshake in ${HANDSHAKE_TIMEOUT_MS} ms`)), HANDSHAKE_TIMEOUT_MS);
    const onClose = (): void => done(new Error("the tool closed the socket during the handshake"));
    const attempt = (): void => {
      const chunk = socket.read(bytes) as Buffer | null;
      if (chunk !== null) done(undefined, new Uint8Array(chunk));
    };
    socket.on("readable", attempt);
    socket.once("close", onClose);
    attempt();
  });
}
