// SPDX-License-Identifier: Apache-2.0
/**
 * The forwarder's hello: what an in-pod KVMI forwarder writes first on its connection to the node
 * bridge (docs/kubevirt-forwarder.md). Two kinds:
 *
 * - `vm`: a QEMU connected to the forwarder; the raw KVMI stream (QEMU's handshake first, as on a
 *   direct connection) follows the hello on the same connection. Carries SHA-1 of the pod's cookie, which the
 *   bridge answers QEMU's handshake with, and the VMI's namespace/name.
 * - `expect`: the forwarder learned its VM (the hook call) before QEMU connects; the bridge lists it
 *   as awaiting a connection and reports it `not-connected` after `deadlineSeconds`. The bridge
 *   answers one line (`OK` or `ERR reason`) and closes.
 *
 * Framing: the 8 bytes `KVMIFWD1`, a big-endian u32 length (at most {@link MAX_HELLO_BYTES}), then
 * that many bytes of UTF-8 JSON. A fixed magic lets the bridge refuse at once a QEMU (or anything
 * else) dialing the forward port by mistake, instead of waiting for JSON that never comes.
 */

/** The first bytes of every hello. */
export const HELLO_MAGIC = Buffer.from("KVMIFWD1", "latin1");
/** Upper bound of the JSON part: a hello is a few hundred bytes; no peer makes the bridge buffer more. */
export const MAX_HELLO_BYTES = 4096;

/** The VMI a forwarded VM belongs to. */
export interface HelloOrigin {
  readonly namespace: string;
  readonly name: string;
  /** The virt-launcher pod; "" when unknown. */
  readonly pod: string;
}

/** A QEMU connection follows. */
export interface VmHello {
  readonly kind: "vm";
  /** Hex SHA-1 of the pod's cookie (40 characters); absent when QEMU runs without a key. */
  readonly cookieHash?: string;
  readonly origin?: HelloOrigin;
}

/** The VM is known; QEMU is expected within the deadline. */
export interface ExpectHello {
  readonly kind: "expect";
  /** The UUID QEMU will send (the domain's `<uuid>`), lowercase and hyphenated. */
  readonly uuid: string;
  /** The libvirt domain name (`<name>`, QEMU's `-name`). */
  readonly name: string;
  readonly origin?: HelloOrigin;
  readonly deadlineSeconds: number;
}

export type ForwardHello = VmHello | ExpectHello;

/** Encodes a hello. */
export function encodeHello(hello: ForwardHello): Buffer {
  const json = Buffer.from(JSON.stringify(hello), "utf8");
  if (json.length > MAX_HELLO_BYTES) throw new RangeError(`a forwarder hello is at most ${MAX_HELLO_BYTES} bytes, this one has ${json.length}`);
  const head = Buffer.alloc(12);
  HELLO_MAGIC.copy(head, 0);
  head.writeUInt32BE(json.length, 8);
  return Buffer.concat([head, json]);
}

/** A hello the bridge refuses; the message says what is wrong, for the forwarder's log. */
export class HelloError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "HelloError";
  }
}

/** Checks the 12-byte head; returns the JSON length. @throws HelloError */
export function parseHelloHead(head: Uint8Array): number {
  if (head.length !== 12 || !Buffer.from(head.subarray(0, 8)).equals(HELLO_MAGIC)) {
    throw new HelloError("not a forwarder hello (expected KVMIFWD1); QEMU connects to the KVMI socket, not the forward socket");
  }
  const length = Buffer.from(head).readUInt32BE(8);
  if (length === 0 || length > MAX_HELLO_BYTES) throw new HelloError(`hello length ${length} is outside 1..${MAX_HELLO_BYTES}`);
  return length;
}

// Kubernetes names: namespaces are RFC 1123 labels, VMI and pod names RFC 1123 subdomains.
const LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function origin(value: unknown): HelloOrigin | undefined {
  if (value === undefined) return undefined;
  const o = value as Partial<Record<keyof HelloOrigin, unknown>> | null;
  if (o === null || typeof o !== "object") throw new HelloError("origin must be an object");
  if (typeof o.namespace !== "string" || !LABEL.test(o.namespace)) throw new HelloError("origin.namespace is not a Kubernetes namespace name");
  if (typeof o.name !== "string" || !SUBDOMAIN.test(o.name)) throw new HelloError("origin.name is not a Kubernetes object name");
  const pod = o.pod ?? "";
  if (typeof pod !== "string" || (pod !== "" && !SUBDOMAIN.test(pod))) throw new HelloError("origin.pod is not a Kubernetes pod name");
  return { namespace: o.namespace, name: o.name, pod };
}

/** Parses and validates the JSON part. @throws HelloError */
export function parseHelloBody(body: Uint8Array): ForwardHello {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
  } catch {
    throw new HelloError("the hello is not UTF-8 JSON");
  }
  const v = value as Record<string, unknown> | null;
  if (v === null || typeof v !== "object") throw new HelloError("the hello is not a JSON object");
  const from = origin(v.origin);
  if (v.kind === "vm") {
    if (v.cookieHash !== undefined && (typeof v.cookieHash !== "string" || !/^[0-9a-f]{40}$/.test(v.cookieHash))) {
      throw new HelloError("cookieHash must be 40 lowercase hex digits (SHA-1)");
    }
    return { kind: "vm", ...(typeof v.cookieHash === "string" && { cookieHash: v.cookieHash }), ...(from && { origin: from }) };
  }
  if (v.kind === "expect") {
    if (typeof v.uuid !== "string" || !UUID.test(v.uuid)) throw new HelloError("uuid must be a lowercase hyphenated UUID");
    if (typeof v.name !== "string" || Buffer.byteLength(v.name) > 253) throw new HelloError("name must be a string of at most 253 bytes");
    const deadline = v.deadlineSeconds;
    if (typeof deadline !== "number" || !Number.isInteger(deadline) || deadline < 1 || deadline > 86_400) {
      throw new HelloError("deadlineSeconds must be a whole number in 1..86400");
    }
    return { kind: "expect", uuid: v.uuid, name: v.name, deadlineSeconds: deadline, ...(from && { origin: from }) };
  }
  throw new HelloError(`unknown hello kind ${JSON.stringify(v.kind)} (vm or expect)`);
}
