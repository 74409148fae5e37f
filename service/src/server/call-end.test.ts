// SPDX-License-Identifier: Apache-2.0
import { Metadata } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { atCallEnd, endCall, trackCallEnd } from "./call-end.js";

describe("call ends", () => {
  it("runs what waits for a tracked call once, when it ends", () => {
    const metadata = new Metadata();
    trackCallEnd(metadata);
    const runs: string[] = [];
    atCallEnd(metadata, () => runs.push("lease"));
    atCallEnd(metadata, () => runs.push("bulk"));
    expect(runs).toEqual([]);
    endCall(metadata);
    expect(runs).toEqual(["lease", "bulk"]);
    endCall(metadata);
    expect(runs).toEqual(["lease", "bulk"]);
  });

  it("runs at once for a call that has ended or is not tracked (no interceptor)", () => {
    const ended = new Metadata();
    trackCallEnd(ended);
    endCall(ended);
    let runs = 0;
    atCallEnd(ended, () => runs++);
    atCallEnd(new Metadata(), () => runs++);
    expect(runs).toBe(2);
    expect(() => endCall(undefined)).not.toThrow();
  });

  it("keeps calls apart", () => {
    const a = new Metadata();
    const b = new Metadata();
    trackCallEnd(a);
    trackCallEnd(b);
    let ranA = false;
    let ranB = false;
    atCallEnd(a, () => (ranA = true));
    atCallEnd(b, () => (ranB = true));
    endCall(a);
    expect([ranA, ranB]).toEqual([true, false]);
  });
});
