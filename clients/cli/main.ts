// SPDX-License-Identifier: Apache-2.0
/**
 * `kvmictl`: a thin command-line client of kvmi-bridge over the SDK. Exit codes: 0 success,
 * 1 an error from the bridge (one line with the status code and reason), 2 a usage error.
 */
import { readFileSync } from "node:fs";
import { Command, CommanderError, Option } from "commander";
import { isKvmiBridgeError } from "@kvmi/clients";
import { UsageError } from "./args.js";
import * as commands from "./commands.js";
import { completionScript } from "./completion.js";
import * as osCommands from "./os-commands.js";
import { createContext } from "./context.js";
import { dump } from "./dump-command.js";
import { connectionHint } from "./hints.js";
import { gdb } from "./gdb-command.js";
import * as vcpuCommands from "./vcpu-commands.js";
import type { CliContext, CliIo, GlobalOptions } from "./context.js";

export type { CliIo } from "./context.js";

/** Exit code of a successful run. */
export const EXIT_OK = 0;
/** Exit code of an error reported by the bridge (or the connection to it). */
export const EXIT_BRIDGE_ERROR = 1;
/** Exit code of a command-line mistake. */
export const EXIT_USAGE = 2;

/** kvmictl's version: the version of `@kvmi/clients`. */
export const VERSION = (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }).version;

/** The default bridge address (`KVMI_BRIDGE_TARGET` overrides it). */
export const DEFAULT_TARGET = "127.0.0.1:50051";

type Action = (ctx: CliContext, ...args: never[]) => Promise<number | void>;

/** Builds the command tree; actions report their exit code through `setExit`. */
export function buildProgram(io: CliIo, setExit: (code: number) => void): Command {
  const program = new Command("kvmictl")
    .description("Remote KVM introspection through kvmi-bridge (kvmi.v1 gRPC)")
    .addOption(new Option("--target <address>", "bridge gRPC address: host:port or unix:/path").default(io.env["KVMI_BRIDGE_TARGET"] ?? DEFAULT_TARGET))
    .option("--tls-ca <file>", "PEM CA certificate of the bridge (enables TLS)")
    .option("--tls-cert <file>", "PEM client certificate (mTLS)")
    .option("--tls-key <file>", "PEM private key of --tls-cert")
    .option("--tls-server-name <name>", "host name to verify in the bridge's certificate")
    .option("--token-file <file>", "bearer JWT sent as authorization metadata, e.g. /var/run/secrets/tokens/kvmi-bridge")
    .option("--timeout <ms>", "deadline of each call in ms", "30000")
    .option("--json", "machine-readable output (u64 values as 0x… strings, counts as numbers)")
    .version(VERSION, "-V, --version", "print kvmictl's version")
    .showSuggestionAfterError()
    .exitOverride()
    .configureOutput({ writeOut: io.stdout, writeErr: io.stderr });

  const run =
    (action: Action) =>
    async (...args: unknown[]): Promise<void> => {
      const command = args.at(-1) as Command;
      const ctx = createContext(command.optsWithGlobals<GlobalOptions>(), io);
      try {
        const code = await action(ctx, ...(args.slice(0, -1) as never[]));
        setExit(typeof code === "number" ? code : EXIT_OK);
      } finally {
        ctx.client.close();
      }
    };

  const vms = program.command("vms").description("list, get and watch the VMs the bridge serves");
  vms.command("list").description("list the VMs").action(run(commands.vmsList));
  vms.command("get <vm>").description("show one VM (UUID, vms/UUID or display name)").action(run(commands.vmsGet));
  vms
    .command("watch [vm]")
    .description("print registry changes until Ctrl-C")
    .option("--count <n>", "exit after n changes")
    .action(run(commands.vmsWatch));

  vms
    .command("release <vm>")
    .description("release a VM: the controller is told, hooks are undone, the KVMI socket closes (QEMU reconnects)")
    .option("--grace <ms>", "how long the controller gets to release first (default 10000, at most 300000)")
    .action(run(commands.vmsRelease));

  program.command("info <vm>").description("summary of a VM: KVMI version, memory, vCPUs").action(run(commands.info));
  const regs = program.command("regs").description("read (regs VM VCPU) or set (regs set VM VCPU reg=value…) a vCPU's registers");
  regs
    .command("get <vm> <vcpu>", { isDefault: true })
    .description("registers of a vCPU: general, segments, CRs, EFER, mode (`regs VM VCPU` for short)")
    .option("--msr <list>", "also read these MSRs, e.g. 0xc0000080,0xc0000082")
    .action(run(commands.regs));
  regs
    .command("set <vm> <vcpu> <assignments...>")
    .description("set general registers, e.g. rax=1 rip=0xffffffff81000000 (pauses the vCPU, sets them in the reply)")
    .action(run(vcpuCommands.regsSet));
  program.command("cpuid <vm> <vcpu> <leaf> [subleaf]").description("CPUID as the guest sees it").action(run(vcpuCommands.cpuid));
  program.command("xcr <vm> <vcpu> [index]").description("an extended control register (XCR0 by default)").action(run(vcpuCommands.xcr));
  program.command("xsave <vm> <vcpu>").description("the vCPU's XSAVE area as a hex dump").action(run(vcpuCommands.xsave));
  program.command("mtrr <vm> <vcpu> <gpa>").description("the MTRR memory type of a guest physical address").action(run(vcpuCommands.mtrr));
  program
    .command("inject <vm> <vcpu> <vector>")
    .description("inject an exception (e.g. 14 for #PF) and report the TRAP event that confirms it")
    .option("--error-code <n>", "error code, for vectors that push one")
    .option("--address <gva>", "CR2 for #PF")
    .option("--wait <ms>", "how long to wait for the TRAP event (default 10000)")
    .action(run(vcpuCommands.inject));
  program
    .command("step <vm> <vcpu>")
    .description("pause a vCPU and single-step it, printing RIP after each instruction")
    .option("--count <n>", "instructions to step (default 1)")
    .action(run(vcpuCommands.step));
  program
    .command("break <vm> <addr>")
    .description("INT3 breakpoint at a guest virtual (or --physical) address: print each hit, step over it, restore on exit")
    .option("--physical", "addr is a guest physical address")
    .option("--vcpu <n>", "translate addr with this vCPU's paging (default 0)")
    .option("--count <n>", "exit after n hits (default 1)")
    .option("--duration <ms>", "give up after this many ms (exit 1 if fewer hits)")
    .action(run(vcpuCommands.breakpoint));
  program
    .command("read <vm> <addr> <len>")
    .description("hex dump of guest memory (physical unless --virtual, --vcpu or --cr3)")
    .option("--virtual", "addr is a guest virtual address (translated with vCPU 0 unless --vcpu or --cr3)")
    .option("--vcpu <n>", "translate with this vCPU's paging (implies --virtual)")
    .option("--cr3 <value>", "translate by walking the page tables at this CR3 (implies --virtual)")
    .option("--pid <pid>", "addr is a virtual address of this guest process (found through --profile)")
    .option("--profile <file>", "guest profile (ISF JSON) for --pid; default $KVMI_PROFILE or the emulator's workload")
    .action(run(commands.read));
  const profileOption = (): Option => new Option("--profile <file>", "guest profile (ISF JSON); default $KVMI_PROFILE or the emulator's workload");
  program.command("ps <vm>").description("the guest's processes, from its task list (needs a profile)").addOption(profileOption()).action(run(osCommands.ps));
  program.command("modules <vm>").description("the guest kernel's loaded modules (needs a profile)").addOption(profileOption()).action(run(osCommands.modules));
  program.command("sym <name-or-address>").description("symbol → address, or address → symbol+offset, from a profile").addOption(profileOption()).action(run(osCommands.sym));
  program
    .command("dump <vm>")
    .description("write guest physical memory to a file: raw sparse image, ELF core or LiME")
    .requiredOption("--out <file>", "output file")
    .option("--format <format>", "raw (byte offset = gpa - start), elf (ELF64 core, gdb -c) or lime", "raw")
    .option("--start <gpa>", "first guest physical address (multiple of 4096)")
    .option("--length <bytes>", "bytes to dump (multiple of 4096; default: all memory), e.g. 64M")
    .option("--chunk-size <bytes>", "bytes per streamed chunk (4k..2M)")
    .option("--progress", "progress lines on stderr also when it is not a terminal")
    .option("--resume", "continue an interrupted dump to the same --out (same options)")
    .action(run(dump));
  program
    .command("write <vm> <addr> <hex>")
    .description("write bytes to guest memory, physical unless --virtual/--vcpu/--cr3 (attaches as controller)")
    .option("--yes", "really write guest memory")
    .option("--virtual", "addr is a guest virtual address (translated with vCPU 0 unless --vcpu or --cr3)")
    .option("--vcpu <n>", "translate with this vCPU's paging (implies --virtual)")
    .option("--cr3 <value>", "translate by walking the page tables at this CR3 (implies --virtual)")
    .option("--hold", "keep the controller session until Ctrl-C, then let the bridge undo the write")
    .action(run(commands.write));
  program.command("translate <vm> <vcpu> <gva>").description("translate a guest virtual address with a vCPU's paging").action(run(commands.translate));
  const events = program.command("events").description("watch vCPU events");
  events
    .command("watch <vm>")
    .description("print events as JSON lines (as observer unless --controller) and the unhook notice")
    .option("--type <list>", "event types, e.g. cr,breakpoint,pf,msr,hypercall,singlestep")
    .option("--vcpu <n>", "only this vCPU")
    .option("--controller", "attach as controller: enable --type on the vCPUs and answer CONTINUE")
    .option("--cr <list>", "control registers for --type cr with --controller (default 3)")
    .option("--msr <list>", "MSR indexes for --type msr with --controller")
    .option("--filter <rules>", 'with --controller: rules the bridge applies before sending, e.g. "cr cr=3 -> notify; hypercall -> count" (docs/event-filters.md)')
    .option("--summary-interval <ms>", "with --filter: print the rules' counters every ms (100..3600000)")
    .option("--count <n>", "exit after n lines")
    .option("--duration <ms>", "exit after this many ms")
    .action(run(commands.eventsWatch));
  program
    .command("pause <vm> <vcpu>")
    .description("pause a vCPU and keep it stopped until Ctrl-C or --duration")
    .option("--duration <ms>", "resume after this many ms (at most 55000)")
    .action(run(commands.pause));
  program
    .command("page-access <vm> <gpa> [rwx]")
    .description("restrict the EPT access of a guest page (rwx, r-x, r--, none or 0..7); without rwx, show it (kvmi-v7 VMs)")
    .option("--hold", "keep the controller session until Ctrl-C, then let the bridge undo the restriction")
    .action(run(commands.pageAccess));
  program
    .command("gdb <vm>")
    .description("serve the GDB remote protocol for a VM (vCPUs as threads); gdb -ex 'target remote HOST:PORT'")
    .option("--listen <host:port>", "TCP address to listen on", "127.0.0.1:1234")
    .option("--once", "exit when the first gdb session ends")
    .option("--event-deadline <ms>", "how long a stopped vCPU may wait for the gateway (10..60000)")
    .action(run(gdb));
  program
    .command("completion [shell]")
    .description("print a shell completion script: source <(kvmictl completion bash)")
    .action((shell: string | undefined) => {
      if (shell !== undefined && shell !== "bash") throw new UsageError(`completion: only bash is supported (got "${shell}")`);
      io.stdout(completionScript(program));
    });
  return program;
}

/** One line describing an error for stderr; `dialed` adds what a connection failure means. */
export function describeError(err: unknown, dialed?: { readonly target: string; readonly tls: boolean }): string {
  const hint = dialed === undefined ? undefined : connectionHint(err, dialed);
  if (hint !== undefined && isKvmiBridgeError(err)) return `kvmictl: ${hint} (${err.codeName})`;
  if (isKvmiBridgeError(err)) {
    const reason = err.reason !== undefined && err.reason !== err.codeName ? `, ${err.reason}` : "";
    return `kvmictl: ${err.message} (${err.codeName}${reason})`;
  }
  return `kvmictl: ${err instanceof Error ? err.message : String(err)}`;
}

/** Runs kvmictl with `argv` (without the node and script names); resolves with the exit code. */
export async function main(argv: readonly string[], io: CliIo): Promise<number> {
  let exitCode = EXIT_OK;
  const program = buildProgram(io, (code) => (exitCode = code));
  const dialed = (): { target: string; tls: boolean } => {
    const o = program.opts<GlobalOptions>();
    return { target: o.target, tls: o.tlsCa !== undefined || o.tlsCert !== undefined || o.tlsKey !== undefined || o.tlsServerName !== undefined };
  };
  try {
    await program.parseAsync([...argv], { from: "user" });
    return exitCode;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version are not errors; everything else commander reports is a usage mistake.
      return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    }
    if (err instanceof UsageError) {
      io.stderr(`kvmictl: ${err.message}\n`);
      return EXIT_USAGE;
    }
    io.stderr(`${describeError(err, dialed())}\n`);
    return EXIT_BRIDGE_ERROR;
  }
}
