// SPDX-License-Identifier: Apache-2.0
// BridgeConfig is derived from OPTIONS: one field per option, of the type its parser returns
// (checked by tsc through expectTypeOf), and nothing else.
import { describe, expect, expectTypeOf, it } from "vitest";
import { OPTION_KEYS, OPTIONS } from "./options.js";
import type { BridgeConfig, ControllerGonePolicy, EventName, HandshakeVariant, LogLevel } from "./options.js";
import { msPerName } from "./parsers.js";

describe("BridgeConfig", () => {
  it("has exactly the keys of OPTIONS, with the value types of their parsers", () => {
    expectTypeOf<keyof BridgeConfig>().toEqualTypeOf<keyof typeof OPTIONS>();
    expectTypeOf<BridgeConfig["grpcListen"]>().toEqualTypeOf<string>();
    expectTypeOf<BridgeConfig["kvmiListen"]>().toEqualTypeOf<readonly string[]>();
    expectTypeOf<BridgeConfig["tlsCert"]>().toEqualTypeOf<string | undefined>();
    expectTypeOf<BridgeConfig["allowInsecure"]>().toEqualTypeOf<boolean>();
    expectTypeOf<BridgeConfig["handshakeVariant"]>().toEqualTypeOf<HandshakeVariant>();
    expectTypeOf<BridgeConfig["controllerGonePolicy"]>().toEqualTypeOf<ControllerGonePolicy>();
    expectTypeOf<BridgeConfig["logLevel"]>().toEqualTypeOf<LogLevel>();
    expectTypeOf<BridgeConfig["eventTimeouts"]>().toEqualTypeOf<Readonly<Partial<Record<EventName, number>>>>();
    expectTypeOf<BridgeConfig["requestTimeoutMs"]>().toEqualTypeOf<number>();
    expect([...OPTION_KEYS]).toEqual(Object.keys(OPTIONS));
  });
});

describe("msPerName", () => {
  const parse = msPerName(["cr", "msr"] as const, "event");

  it("reads NAME=MS lists and mappings", () => {
    expect(parse("cr=10, msr=20", { baseDir: "/" })).toEqual({ ok: true, value: { cr: 10, msr: 20 } });
    expect(parse(["cr=1", "msr=2"], { baseDir: "/" })).toEqual({ ok: true, value: { cr: 1, msr: 2 } });
    expect(parse({ msr: 5 }, { baseDir: "/" })).toEqual({ ok: true, value: { msr: 5 } });
  });

  it("reports every unknown name and bad value at once", () => {
    const result = parse("pf=1,cr=x,msr", { baseDir: "/" });
    expect(result.ok).toBe(false);
    expect(!result.ok && result.error).toMatch(/"msr" is not EVENT=MS/);
    const both = parse({ pf: 1, cr: "x" }, { baseDir: "/" });
    expect(!both.ok && both.error).toMatch(/unknown event "pf" \(events: cr, msr\); cr: "x" is not a whole number of ms/);
  });
});
