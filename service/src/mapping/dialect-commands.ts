// SPDX-License-Identifier: Apache-2.0
/**
 * kvmi.v1 RPCs of commands v9 does not have (docs/protocol/kvmi-v7.md; docs/decisions/0110): the
 * same shape as the v9 table in commands.ts, keyed by the dialect-neutral op instead of a v9 name,
 * and sent by op (`vm/dialect-translation.ts` sendOp). A VM whose dialect lacks the op fails with
 * FAILED_PRECONDITION, reason NOT_IN_DIALECT, before anything reaches its socket.
 *
 * Today: GET_PAGE_ACCESS (kvmi-v7 id 20), the read-back of SetPageAccess.
 */
import { create } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import { KVMI_V7_LAYOUTS, kvmiV7 } from "@kvmi/kvm-bridge/wire";
import type { CommandOp, OpReply, OpRequest } from "@kvmi/kvm-bridge/wire";
import { GetPageAccessRequestSchema, GetPageAccessResponseSchema, PageAccessEntrySchema } from "@kvmi/proto";
import { parseVmName } from "./resource-names.js";
import { mapFields } from "./wire-coverage.js";
import type { WireFieldMapping } from "./wire-coverage.js";

/** Largest EPT view index (`u16 view`). */
const VIEW_MAX = 0xffff;

/** What `toWire` produces, as in commands.ts. */
export interface DialectWireCommand<O extends CommandOp> {
  readonly vm: string;
  readonly vcpu?: number;
  readonly body: OpRequest<O>;
}

/** One command of a dialect other than v9, with its RPC. */
export interface DialectCommandMapping<O extends CommandOp = CommandOp, Req extends DescMessage = DescMessage, Res extends DescMessage = DescMessage> {
  readonly op: O;
  /** Kernel name in the dialect that has it (`KVMI_GET_PAGE_ACCESS`): metrics, audit, ErrorInfo. */
  readonly command: string;
  /** Method local name of the IntrospectionService RPC. */
  readonly method: string;
  readonly scope: "vm" | "vcpu";
  readonly requestSchema: Req;
  readonly responseSchema: Res;
  /** @throws KvmiArgumentError (INVALID_ARGUMENT) with the proto field name. */
  toWire(request: MessageShape<Req>): DialectWireCommand<O>;
  /** The response from the reply and the request body it answers. */
  fromWire(reply: OpReply<O>, body: OpRequest<O>): MessageInitShape<Res>;
  readonly wireFields: readonly WireFieldMapping[];
}

const kvmiV7Layout = (cName: string): string => KVMI_V7_LAYOUTS[cName]!.name;

/** GET_PAGE_ACCESS's gpa count is bounded by the message size, in the table of the dialect that has it. */
const MAX_GPAS = kvmiV7.commands.find((c) => c.op === "GET_PAGE_ACCESS")!.request.tail!.maxCount!;

const getPageAccess: DialectCommandMapping<"GET_PAGE_ACCESS", typeof GetPageAccessRequestSchema, typeof GetPageAccessResponseSchema> = {
  op: "GET_PAGE_ACCESS",
  command: "KVMI_GET_PAGE_ACCESS",
  method: "getPageAccess",
  scope: "vm",
  requestSchema: GetPageAccessRequestSchema,
  responseSchema: GetPageAccessResponseSchema,
  toWire: (r) => {
    const vm = parseVmName(r.vm, "vm");
    if (r.gpas.length === 0) throw new KvmiArgumentError("gpas", `gpas is required: list 1..${MAX_GPAS} guest physical addresses`);
    if (r.gpas.length > MAX_GPAS) {
      throw new KvmiArgumentError("gpas", `gpas lists ${r.gpas.length} addresses, at most ${MAX_GPAS} fit in one message; split the request`);
    }
    if (r.view > VIEW_MAX) throw new KvmiArgumentError("view", `view ${r.view} is not an EPT view index (0..${VIEW_MAX})`);
    return { vm, body: { view: r.view, gpa: [...r.gpas] } };
  },
  // One access byte per requested gpa, in order (docs/protocol/kvmi-v7.md); a short reply is the
  // kernel's business: missing bytes read as "unrestricted" would lie, so they are left out.
  fromWire: (reply, body) => ({
    entries: [...reply.access.slice(0, body.gpa.length)].map((access, i) =>
      create(PageAccessEntrySchema, { gpa: BigInt(body.gpa[i]!), access }),
    ),
  }),
  wireFields: [
    ...mapFields(kvmiV7Layout("kvmi_get_page_access"), GetPageAccessRequestSchema.name, { view: "view" }),
    { wire: "KVMI_GET_PAGE_ACCESS.request.gpa", proto: `${GetPageAccessRequestSchema.name}.gpas` },
    { wire: "KVMI_GET_PAGE_ACCESS.reply.access", proto: `${PageAccessEntrySchema.name}.access` },
  ],
};

/** Every command RPC whose command v9 lacks, by op. */
export const DIALECT_COMMAND_MAPPINGS = { GET_PAGE_ACCESS: getPageAccess } as const;

/** Any entry of {@link DIALECT_COMMAND_MAPPINGS}. */
export type AnyDialectCommandMapping = (typeof DIALECT_COMMAND_MAPPINGS)[keyof typeof DIALECT_COMMAND_MAPPINGS];

/** Wraps `fromWire` in `create()`. */
export function dialectResponseFromWire<O extends CommandOp, Req extends DescMessage, Res extends DescMessage>(
  mapping: DialectCommandMapping<O, Req, Res>,
  reply: OpReply<O>,
  body: OpRequest<O>,
): MessageShape<Res> {
  return create(mapping.responseSchema, mapping.fromWire(reply, body));
}
