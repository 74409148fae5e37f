// SPDX-License-Identifier: Apache-2.0
/** The compact event-filter syntax (docs/event-filters.md): what each part becomes, and errors that name the bad part. */
import { EventAction, EventType, Register, ValueOperator } from "@kvmi/proto";
import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "./errors.js";
import { parseEventFilter } from "./filter-syntax.js";

describe("parseEventFilter", () => {
  it("parses rules with every condition form and action", () => {
    const filter = parseEventFilter(
      [
        "cr cr=4 old:all=0x100000 new&0x100000==0 changed=0x10000 vcpu=0,1 -> reply keep-old as smep",
        "hypercall nr=34 %rdi==24 %cr3>=0x1000 -> count",
        "msr msr=0xc0000082 new>0xffff800000000000 -> notify",
        "bp gpa=0x30000 rip=0xffffffff81000000 -> sample 100 retry",
        "pf gpa=0x1000-0x1fff,0x8000 gva=0-0xffffffffffffffff access=wx cr3=0x1000 -> count retry",
        "msr -> reply new=7",
        "pause -> deliver",
      ].join(" ; "),
      { summaryIntervalMs: 1500 },
    );
    expect(filter.summaryInterval).toMatchObject({ seconds: 1n, nanos: 500_000_000 });
    const [cr, hc, msr, bp, pf, msr2, pause] = filter.rules;
    expect(cr).toMatchObject({ name: "smep", event: EventType.CR, match: { vcpus: [0, 1] } });
    expect(cr!.match!.payload).toMatchObject({
      case: "cr",
      value: {
        crs: [4],
        oldValue: { operator: ValueOperator.ALL_BITS, value: 0x100000n },
        newValue: { operator: ValueOperator.EQUAL, value: 0n, mask: 0x100000n },
        changedBits: 0x10000n,
      },
    });
    expect(cr!.action!.kind).toMatchObject({ case: "reply", value: { action: EventAction.UNSPECIFIED, value: { case: "keepOldValue", value: true } } });
    expect(hc!.match).toMatchObject({
      payload: { case: "hypercall", value: { numbers: [34n] } },
      registers: [
        { register: Register.RDI, condition: { operator: ValueOperator.EQUAL, value: 24n } },
        { register: Register.CR3, condition: { operator: ValueOperator.GREATER_EQUAL, value: 0x1000n } },
      ],
    });
    expect(hc!.action!.kind.case).toBe("count");
    expect(msr!.match!.payload).toMatchObject({ case: "msr", value: { msrs: [0xc0000082], newValue: { operator: ValueOperator.GREATER } } });
    expect(msr!.action!.kind.case).toBe("notify");
    expect(bp!.match!.payload).toMatchObject({ case: "breakpoint", value: { gpas: [0x30000n], rips: [0xffffffff81000000n] } });
    expect(bp!.action!.kind).toMatchObject({ case: "sample", value: { every: 100, reply: { action: EventAction.RETRY } } });
    expect(pf!.match).toMatchObject({
      cr3: [0x1000n],
      payload: {
        case: "pageFault",
        value: { gpas: [{ first: 0x1000n, last: 0x1fffn }, { first: 0x8000n, last: 0x8000n }], gvas: [{ first: 0n, last: 0xffffffffffffffffn }], access: 6 },
      },
    });
    expect(msr2!.action!.kind).toMatchObject({ case: "reply", value: { value: { case: "newVal", value: 7n } } });
    expect(pause!.action!.kind.case).toBe("deliver");
  });

  it("an empty text is a filter without rules", () => {
    expect(parseEventFilter("  ;  ").rules).toEqual([]);
  });

  it.each([
    ["cr -> count; msr", 'rule 2 ("msr")', "missing"],
    ["crx -> count", '"crx" is not an event type', "msr"],
    ["cr foo=1 -> count", 'unknown condition "foo=1"', "vcpu="],
    ["pf cr=3 -> count", '"cr=3" applies to cr events only', ""],
    ["cr old=3 -> count", '"old=3" has no comparison', "=="],
    ["cr %rzz==1 -> count", '"%rzz" is not a register', "%rax"],
    ["msr msr=0xzz -> count", '"0xzz" in "msr=0xzz" is not a number', ""],
    ["pf gpa=0x2000-0x1000 -> count", 'range "0x2000-0x1000"', "ends before"],
    ["pf access=q -> count", "access is made of r, w and x", ""],
    ["cr -> drop", '"drop" is not an action', "deliver"],
    ["cr -> sample", '"sample" needs how many', ""],
    ["cr -> reply maybe", '"maybe" is not a reply', "keep-old"],
    ["cr -> deliver now", '"deliver" takes nothing', ""],
    ["cr -> count as x y", '"as NAME" must end the rule', ""],
  ])("%s fails naming the bad part", (text, part, hint) => {
    let error: unknown;
    try {
      parseEventFilter(text);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect((error as Error).message).toContain(part);
    expect((error as Error).message).toContain(hint);
    expect((error as InvalidArgumentError).reason).toBe("FILTER_SYNTAX");
  });
});
