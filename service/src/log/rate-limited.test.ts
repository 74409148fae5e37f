// SPDX-License-Identifier: Apache-2.0
// The rate-limited logger drops beyond the budget, counts, and writes one summary per window.
import { afterEach, describe, expect, it, vi } from "vitest";
import type { Logger } from "@kvmi/kvm-bridge";
import { createRateLimitedLogger, createRootLogger } from "./index.js";

interface Line {
  readonly level: string;
  readonly fields: Record<string, unknown>;
  readonly msg: string | undefined;
  readonly bindings: Record<string, unknown>;
}

function recorder(bindings: Record<string, unknown> = {}, lines: Line[] = []): Logger & { lines: Line[] } {
  const at = (level: string) => (fields: Record<string, unknown>, msg?: string) => void lines.push({ level, fields, msg, bindings });
  return {
    lines,
    trace: at("trace"),
    debug: at("debug"),
    info: at("info"),
    warn: at("warn"),
    error: at("error"),
    child: (more) => recorder({ ...bindings, ...more }, lines),
  };
}

afterEach(() => {
  vi.useRealTimers();
});

describe("createRateLimitedLogger", () => {
  it("lets `burst` lines through per window, then summarises what it dropped", () => {
    let now = 0;
    const target = recorder();
    const log = createRateLimitedLogger(target, { burst: 10, intervalMs: 5_000, now: () => now, autoFlush: false });
    for (let i = 0; i < 25; i++) log.warn({ vm: "vms/a", gpa: i }, "page fault not handled");
    expect(target.lines).toHaveLength(10);
    expect(log.suppressedTotal).toBe(15);

    now = 5_000;
    log.warn({ vm: "vms/a", gpa: 99 }, "page fault not handled");
    expect(target.lines.slice(10)).toEqual([
      { level: "warn", fields: { suppressed: 15, suppressedMsg: "page fault not handled" }, msg: "suppressed 15 messages", bindings: {} },
      { level: "warn", fields: { vm: "vms/a", gpa: 99 }, msg: "page fault not handled", bindings: {} },
    ]);
  });

  it("keeps separate budgets per message and level, and per keyFields", () => {
    const target = recorder();
    const log = createRateLimitedLogger(target, { burst: 1, autoFlush: false, keyFields: ["vm"] });
    log.warn({ vm: "a" }, "m1");
    log.warn({ vm: "a" }, "m1");
    log.warn({ vm: "b" }, "m1");
    log.warn({ vm: "a" }, "m2");
    log.error({ vm: "a" }, "m1");
    expect(target.lines.map((line) => `${line.level}:${line.msg}:${String(line.fields.vm)}`)).toEqual([
      "warn:m1:a",
      "warn:m1:b",
      "warn:m2:a",
      "error:m1:a",
    ]);
    log.flush();
    expect(target.lines.at(-1)).toMatchObject({ level: "warn", msg: "suppressed 1 messages", fields: { suppressed: 1, suppressedMsg: "m1" } });
  });

  it("shares budgets with children and summarises through the last dropping child", () => {
    const target = recorder();
    const log = createRateLimitedLogger(target, { burst: 2, autoFlush: false });
    const vm = log.child({ vm: "vms/a" });
    log.info({}, "event");
    vm.info({}, "event");
    vm.child({ vcpu: 3 }).info({}, "event");
    log.close();
    expect(target.lines).toHaveLength(3);
    expect(target.lines[1]!.bindings).toEqual({ vm: "vms/a" });
    expect(target.lines[2]).toMatchObject({ msg: "suppressed 1 messages", bindings: { vm: "vms/a", vcpu: 3 } });
  });

  it("writes the summary from a timer when the storm stops", () => {
    vi.useFakeTimers();
    const target = recorder();
    const log = createRateLimitedLogger(target, { burst: 1, intervalMs: 1_000 });
    for (let i = 0; i < 5; i++) log.error({}, "bad frame");
    expect(target.lines).toHaveLength(1);
    vi.advanceTimersByTime(1_000);
    expect(target.lines[1]).toMatchObject({ level: "error", msg: "suppressed 4 messages" });
    vi.advanceTimersByTime(10_000);
    expect(target.lines).toHaveLength(2);
    log.close();
  });

  it("bounds the number of keys, summarising the one it forgets", () => {
    const target = recorder();
    const log = createRateLimitedLogger(target, { burst: 1, maxKeys: 2, autoFlush: false });
    log.warn({}, "a");
    log.warn({}, "a");
    log.warn({}, "b");
    log.warn({}, "c"); // evicts "a"
    expect(target.lines.map((line) => line.msg)).toEqual(["a", "b", "suppressed 1 messages", "c"]);
  });

  it("neither writes nor counts lines below the logger's level", () => {
    const lines: string[] = [];
    const root = createRootLogger({ logLevel: "info" }, { destination: { write: (line: string) => void lines.push(line) } });
    const log = createRateLimitedLogger(root, { burst: 1, autoFlush: false });
    for (let i = 0; i < 5; i++) log.debug({}, "trace-ish");
    log.info({}, "x");
    log.info({}, "x");
    log.flush();
    expect(log.suppressedTotal).toBe(1);
    expect(lines.map((line) => (JSON.parse(line) as { msg: string }).msg)).toEqual(["x", "suppressed 1 messages"]);
  });

  it("rejects a zero budget", () => {
    expect(() => createRateLimitedLogger(recorder(), { burst: 0 })).toThrow(RangeError);
  });
});
