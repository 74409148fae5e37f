// SPDX-License-Identifier: Apache-2.0
// kvmictl's argument parsers, and how main() turns command-line mistakes into exit code 2 before
// any network call (the client connects lazily, so nothing here touches a socket).
import { describe, expect, it } from "vitest";
import { accessString, parseAccess, parseEventTypes, parseHexBytes, parseIndex, parseLength, parseNumberList, parseSize, parseU64, UsageError } from "./args.js";
import { describeError, EXIT_USAGE, main } from "./main.js";
import { InvalidArgumentError, UnavailableError } from "@kvmi/clients";

describe("parsers", () => {
  it("parses u64 values in decimal, hex, binary and octal", () => {
    expect(parseU64("4096", "x")).toBe(4096n);
    expect(parseU64("0xFFFF_FFFF_8000_0000", "x")).toBe(0xffffffff80000000n);
    expect(parseU64("0b101", "x")).toBe(5n);
    expect(parseU64("0o17", "x")).toBe(15n);
    expect(parseU64("0xffffffffffffffff", "x")).toBe((1n << 64n) - 1n);
    expect(() => parseU64("0x1_0000_0000_0000_0000", "gpa")).toThrow("gpa: 0x1_0000_0000_0000_0000 does not fit in 64 bits");
    expect(() => parseU64("-1", "gpa")).toThrow(UsageError);
    expect(() => parseU64("12z", "gpa")).toThrow('gpa: "12z" is not a number');
  });

  it("parses sizes with suffixes", () => {
    expect(parseSize("4k", "n")).toBe(4096n);
    expect(parseSize("64M", "n")).toBe(64n << 20n);
    expect(parseSize("1GiB", "n")).toBe(1n << 30n);
    expect(parseSize("0x1000", "n")).toBe(4096n);
    expect(() => parseSize("4q", "--length")).toThrow("--length");
    expect(parseLength("16", "len")).toBe(16);
    expect(() => parseLength("0", "len")).toThrow("out of range");
  });

  it("parses indexes and number lists", () => {
    expect(parseIndex("3", "vcpu")).toBe(3);
    expect(() => parseIndex("-1", "vcpu")).toThrow(UsageError);
    expect(() => parseIndex("1.5", "vcpu")).toThrow(UsageError);
    expect(parseNumberList("0,3, 4", "--cr")).toEqual([0, 3, 4]);
    expect(parseNumberList("0xc0000080,0x174", "--msr")).toEqual([0xc0000080, 0x174]);
    expect(() => parseNumberList("0x100000000", "--msr")).toThrow("32 bits");
  });

  it("parses hex bytes in several spellings", () => {
    expect([...parseHexBytes("cc", "hex")]).toEqual([0xcc]);
    expect([...parseHexBytes("0x90CC", "hex")]).toEqual([0x90, 0xcc]);
    expect([...parseHexBytes("de ad:be-ef", "hex")]).toEqual([0xde, 0xad, 0xbe, 0xef]);
    for (const bad of ["", "c", "zz", "0x"]) expect(() => parseHexBytes(bad, "hex")).toThrow(UsageError);
  });

  it("parses page access and prints it back", () => {
    expect(parseAccess("rwx")).toBe(7);
    expect(parseAccess("r-x")).toBe(5);
    expect(parseAccess("rx")).toBe(5);
    expect(parseAccess("r--")).toBe(1);
    expect(parseAccess("---")).toBe(0);
    expect(parseAccess("none")).toBe(0);
    expect(parseAccess("6")).toBe(6);
    for (const bad of ["rwz", "xwr", "rr", "8", "rwxr"]) expect(() => parseAccess(bad)).toThrow(UsageError);
    expect([0, 1, 5, 7].map(accessString)).toEqual(["---", "r--", "r-x", "rwx"]);
  });

  it("parses event types with aliases and rejects unknown ones", () => {
    expect(parseEventTypes("cr,breakpoint")).toEqual(["cr", "breakpoint"]);
    expect(parseEventTypes("pf,page-fault,PageFault,singlestep,pause,bp")).toEqual(["pageFault", "singleStep", "pauseVcpu", "breakpoint"]);
    expect(() => parseEventTypes("cr,unhook")).toThrow('unknown event "unhook"');
    expect(() => parseEventTypes(",")).toThrow(UsageError);
  });
});

describe("main", () => {
  async function run(...argv: string[]) {
    let stdout = "";
    let stderr = "";
    const code = await main(argv, {
      stdout: (t) => (stdout += t),
      stderr: (t) => (stderr += t),
      stderrIsTTY: false,
      signal: new AbortController().signal,
      env: { KVMI_BRIDGE_TARGET: "127.0.0.1:1" },
    });
    return { code, stdout, stderr };
  }

  it("shows help with exit 0 and usage errors with exit 2", async () => {
    const help = await run("--help");
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("Usage: kvmictl [options] [command]");
    expect(help.stdout).toContain("default: \"127.0.0.1:1\""); // KVMI_BRIDGE_TARGET
    expect((await run("read", "--help")).stdout).toContain("--cr3 <value>");
    expect((await run()).code).toBe(EXIT_USAGE);
    expect((await run("vms", "lst")).stderr).toContain("unknown command 'lst'");
    expect((await run("regs", "vm")).stderr).toContain("missing required argument 'vcpu'");
    expect((await run("dump", "vm")).stderr).toContain("required option '--out <file>' not specified");
  });

  it("rejects bad arguments before any network call", async () => {
    const cases: Array<[string[], string]> = [
      [["write", "vm", "0x1000", "cc"], "refusing to write 1 byte(s) of guest memory without --yes"],
      [["write", "vm", "nope", "cc", "--yes"], 'addr: "nope" is not a number'],
      [["read", "vm", "0x1000", "0"], "len: 0 is out of range"],
      [["read", "vm", "0x1000", "100M"], "use `kvmictl dump` for more"],
      [["events", "watch", "vm", "--controller"], "--controller needs --type"],
      [["events", "watch", "vm", "--type", "msr", "--controller"], "--type msr needs --msr"],
      [["events", "watch", "vm", "--type", "cr", "--cr", "2"], "--cr: 2 is not 0, 3 or 4"],
      [["pause", "vm", "0", "--duration", "60000"], "--duration: at most 55000 ms"],
      [["--tls-cert", "c.pem", "vms", "list"], "--tls-cert and --tls-key go together"],
      [["--tls-ca", "/nonexistent/ca.pem", "vms", "list"], "--tls-ca: cannot read /nonexistent/ca.pem (ENOENT)"],
      [["dump", "vm", "--out", "/tmp/x", "--start", "0x10"], "--start and --length must be multiples of 4096"],
    ];
    for (const [argv, message] of cases) {
      const result = await run(...argv);
      expect(result.code, argv.join(" ")).toBe(EXIT_USAGE);
      expect(result.stderr).toMatch(/^kvmictl: [^\n]+\n$/); // one line
      expect(result.stderr).toContain(message);
    }
  });

  it("describes SDK errors in one line with code and reason", () => {
    expect(describeError(new InvalidArgumentError({ code: 3, message: "bad size", reason: "KVMI_INVALID_ARGUMENT" }))).toBe(
      "kvmictl: bad size (INVALID_ARGUMENT, KVMI_INVALID_ARGUMENT)",
    );
    expect(describeError(new UnavailableError({ code: 14, message: "No connection established" }))).toBe("kvmictl: No connection established (UNAVAILABLE)");
    expect(describeError(new Error("plain"))).toBe("kvmictl: plain");
  });
});
