// SPDX-License-Identifier: Apache-2.0
/**
 * The QEMU <-> tool handshake that precedes KVMI on the same socket (kvmi-abi §2.2, §2.3): QEMU
 * sends `qemu_vmi_to_introspector` in one of three variants, the tool answers with the 24-byte
 * `qemu_vmi_from_introspector` carrying SHA-1 of the shared secret. Both directions live here so
 * that the bridge and the emulator's device manager share one codec.
 */
import { createHash } from "node:crypto";
import { KvmiArgumentError, KvmiProtocolError } from "../errors.js";
import { decodeBody, encodeBodyInto } from "./body.js";
import { decode, encode, viewOf } from "./codec.js";
import {
  QEMU_VMI_COOKIE_HASH_SIZE,
  QEMU_VMI_CPU_TYPE_X86_64,
  QEMU_VMI_NAME_SIZE,
  qemuVmiFromIntrospector,
  qemuVmiToIntrospector,
  qemuVmiToIntrospectorE820,
  qemuVmiToIntrospectorE820Body,
  qemuVmiToIntrospectorMaxGpa,
} from "./layouts/handshake.js";

/** Which `qemu_vmi_to_introspector` QEMU sent (kvmi-abi §2.3). */
export type HandshakeVariant = "base" | "max-gpa" | "e820";

/** Smallest `struct_size` a tool accepts: the offset of `name` (libkvmi's rule, kvmi-abi §2.3). */
export const HANDSHAKE_MIN_BYTES = 32;
/** Largest `struct_size` a tool accepts before declaring the peer hostile (libkvmi: 64 KiB). */
export const HANDSHAKE_MAX_BYTES = 64 * 1024;
/** Size of the tool's answer. */
export const HANDSHAKE_REPLY_BYTES = qemuVmiFromIntrospector.size;

/** One e820 entry as QEMU reports it. */
export interface E820Entry {
  readonly address: bigint;
  readonly length: bigint;
  readonly type: number;
}

/** What a tool learns about a VM from the handshake. */
export interface VmIdentity {
  readonly variant: HandshakeVariant;
  /** Canonical 8-4-4-4-12 lower-case UUID. */
  readonly uuid: string;
  /** VM name (`-name`), at most 63 characters. */
  readonly name: string;
  /** Start time in seconds since the epoch; changes on guest reset. */
  readonly startTime: bigint;
  /** Highest guest physical address + 1 (max-gpa variant only). */
  readonly maxGpa?: bigint;
  /** 0 = i386, 1 = x86_64, 255 = unknown (e820 variant only). */
  readonly cpuType?: number;
  /** e820 map (e820 variant only), sorted by address. */
  readonly e820?: readonly E820Entry[];
}

/** Formats 16 raw UUID bytes as text. */
export function formatUuid(raw: Uint8Array): string {
  const hex = Buffer.from(raw).toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Parses a textual UUID into its 16 raw bytes. */
export function parseUuid(text: string): Uint8Array {
  const hex = text.replaceAll("-", "");
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new KvmiProtocolError(`not a UUID: ${text}`);
  return new Uint8Array(Buffer.from(hex, "hex"));
}

function decodeName(raw: Uint8Array): string {
  // Force-terminate: QEMU writes at most 63 characters and a NUL, a hostile peer may not.
  const limit = Math.min(raw.length, QEMU_VMI_NAME_SIZE - 1);
  const end = raw.subarray(0, limit).indexOf(0);
  return Buffer.from(raw.subarray(0, end < 0 ? limit : end)).toString("utf8");
}

/**
 * Checks the leading `struct_size` of a handshake before reading the rest.
 * @throws KvmiProtocolError outside [32, 64 KiB].
 */
export function checkHandshakeSize(structSize: number): void {
  if (structSize < HANDSHAKE_MIN_BYTES || structSize > HANDSHAKE_MAX_BYTES) {
    throw new KvmiProtocolError(
      `handshake struct_size ${structSize} is outside [${HANDSHAKE_MIN_BYTES}, ${HANDSHAKE_MAX_BYTES}]`,
    );
  }
}

/**
 * Parses the whole `struct_size` bytes QEMU sent. Unknown trailing bytes are ignored, a short
 * struct is zero-extended (libkvmi keeps `min(struct_size, known size)`).
 *
 * The 104-byte size is shared by the max-gpa variant and an e820 variant with no entries; the
 * layouts cannot tell them apart, so `expect` settles it (default: max-gpa, what current QEMU sends).
 * @throws KvmiProtocolError when `struct_size` is out of range or disagrees with the bytes.
 */
export function parseHandshake(bytes: Uint8Array, expect: HandshakeVariant | "auto" = "auto"): VmIdentity {
  if (bytes.length < 4) throw new KvmiProtocolError("handshake shorter than its struct_size field");
  const structSize = viewOf(bytes).getUint32(0, true);
  checkHandshakeSize(structSize);
  if (structSize !== bytes.length) {
    throw new KvmiProtocolError(`handshake struct_size ${structSize} but ${bytes.length} bytes were read`);
  }
  const variant = expect === "auto" ? guessVariant(bytes) : expect;
  const fixedSize = variant === "base" ? qemuVmiToIntrospector.size : qemuVmiToIntrospectorMaxGpa.size;
  const padded = new Uint8Array(Math.max(fixedSize, bytes.length));
  padded.set(bytes);
  const base = decode(qemuVmiToIntrospector, padded);
  const identity = {
    variant,
    uuid: formatUuid(base.uuid),
    name: decodeName(base.name),
    startTime: base.start_time,
  };
  if (variant === "base") return identity;
  if (variant === "max-gpa") return { ...identity, maxGpa: decode(qemuVmiToIntrospectorMaxGpa, padded).max_gpa };
  const e820 = decodeBody(qemuVmiToIntrospectorE820Body, viewOf(padded), 0, padded.length).value as unknown as {
    cpu_type: number;
    e820_entries: E820Entry[];
  };
  return {
    ...identity,
    cpuType: e820.cpu_type,
    e820: e820.e820_entries.map(({ address, length, type }) => ({ address, length, type })),
  };
}

function guessVariant(bytes: Uint8Array): HandshakeVariant {
  const fixed = qemuVmiToIntrospectorE820.size;
  if (bytes.length <= qemuVmiToIntrospector.size) return "base";
  const entries = (bytes.length - fixed) / 24;
  if (bytes.length > fixed && Number.isInteger(entries) && bytes[fixed - 8] === entries) return "e820";
  return bytes.length >= qemuVmiToIntrospectorMaxGpa.size ? "max-gpa" : "base";
}

/** SHA-1 of the shared secret, the `cookie_hash` QEMU compares (no salt, kvmi-abi §2.2). */
export function cookieHash(secret: Uint8Array | undefined): Uint8Array {
  if (secret === undefined) return new Uint8Array(QEMU_VMI_COOKIE_HASH_SIZE);
  return new Uint8Array(createHash("sha1").update(secret).digest());
}

/** Encodes the tool's 24-byte answer. */
export function encodeHandshakeReply(secret: Uint8Array | undefined): Uint8Array {
  return encodeHandshakeReplyWithHash(cookieHash(secret));
}

/** Encodes the tool's answer from a cookie hash known already (a forwarded VM's own, kvmi-abi §2.2). */
export function encodeHandshakeReplyWithHash(hash: Uint8Array): Uint8Array {
  if (hash.length !== QEMU_VMI_COOKIE_HASH_SIZE) throw new KvmiArgumentError("cookie_hash", `a cookie hash has ${QEMU_VMI_COOKIE_HASH_SIZE} bytes, got ${hash.length}`);
  return encode(qemuVmiFromIntrospector, { struct_size: HANDSHAKE_REPLY_BYTES, cookie_hash: hash });
}

/** QEMU side: what it puts into `qemu_vmi_to_introspector`. */
export interface HandshakeRequest {
  readonly variant: HandshakeVariant;
  readonly uuid: string;
  readonly name: string;
  readonly startTime: bigint;
  readonly maxGpa?: bigint;
  readonly cpuType?: number;
  readonly e820?: readonly E820Entry[];
}

/** QEMU side: encodes the handshake it sends on connect (names truncated to 63 bytes + NUL). */
export function encodeHandshake(request: HandshakeRequest): Uint8Array {
  const name = new Uint8Array(QEMU_VMI_NAME_SIZE);
  name.set(Buffer.from(request.name, "utf8").subarray(0, QEMU_VMI_NAME_SIZE - 1));
  const common = { uuid: parseUuid(request.uuid), start_time: request.startTime, name };
  switch (request.variant) {
    case "base":
      return encode(qemuVmiToIntrospector, { struct_size: qemuVmiToIntrospector.size, ...common });
    case "max-gpa":
      return encode(qemuVmiToIntrospectorMaxGpa, {
        struct_size: qemuVmiToIntrospectorMaxGpa.size,
        ...common,
        max_gpa: request.maxGpa ?? 0n,
      });
    case "e820": {
      // QEMU sends at most 8 entries; with more, it sends none (kvmi-abi §2.3).
      const entries = request.e820 !== undefined && request.e820.length <= 8 ? request.e820 : [];
      const out = new Uint8Array(qemuVmiToIntrospectorE820.size + entries.length * 24);
      encodeBodyInto(
        qemuVmiToIntrospectorE820Body,
        {
          struct_size: out.length,
          ...common,
          cpu_type: request.cpuType ?? QEMU_VMI_CPU_TYPE_X86_64,
          arch: { e820_count: entries.length },
          e820_entries: entries.map((e) => ({ ...e })),
        },
        viewOf(out),
        0,
      );
      return out;
    }
  }
}

/**
 * QEMU side: validates the tool's answer (kvmi-abi §2.2 step 4): `struct_size >= 24`, and the
 * hash must match when a secret is configured. Returns a reason string on refusal.
 */
export function checkHandshakeReply(reply: Uint8Array, secret: Uint8Array | undefined): string | undefined {
  if (reply.length < HANDSHAKE_REPLY_BYTES) return `reply of ${reply.length} bytes is shorter than 24`;
  const decoded = decode(qemuVmiFromIntrospector, reply);
  if (decoded.struct_size < HANDSHAKE_REPLY_BYTES) return `reply struct_size ${decoded.struct_size} < 24`;
  if (secret === undefined) return undefined;
  return Buffer.from(decoded.cookie_hash).equals(Buffer.from(cookieHash(secret))) ? undefined : "cookie hash mismatch";
}
