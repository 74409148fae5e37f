// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from "vitest";
import { main } from "./main.js";

async function run(argv: string[]): Promise<{ code: number; stderr: string }> {
  let stderr = "";
  const code = await main(argv, { stderr: (t) => void (stderr += t), env: {} });
  return { code, stderr };
}

describe("kvmi-relay command line", () => {
  it("exits 2 with the usage when --vm or --tool is missing or --tool is not unix:", async () => {
    expect(await run(["--tool", "unix:/tmp/x"])).toMatchObject({ code: 2, stderr: expect.stringContaining("--vm is required") });
    expect(await run(["--vm", "demo-0"])).toMatchObject({ code: 2, stderr: expect.stringContaining("--tool unix:PATH") });
    expect(await run(["--vm", "demo-0", "--tool", "/tmp/x"])).toMatchObject({ code: 2 });
  });

  it("names the known dialects for an unknown --dialect", async () => {
    const { code, stderr } = await run(["--vm", "demo-0", "--tool", "unix:/tmp/x", "--dialect", "v10"]);
    expect(code).toBe(2);
    expect(stderr).toContain("kvmi-v7");
  });

  it("refuses --tls-cert without --tls-key, unknown flags and a bad deadline", async () => {
    expect((await run(["--vm", "a", "--tool", "unix:/x", "--tls-cert", "c.pem"])).stderr).toContain("go together");
    expect((await run(["--vm", "a", "--tool", "unix:/x", "--bogus"])).code).toBe(2);
    expect((await run(["--vm", "a", "--tool", "unix:/x", "--event-deadline-ms", "0"])).stderr).toContain("positive integer");
  });

  it("reports an unreadable --secret-file as a usage error", async () => {
    const { code, stderr } = await run(["--vm", "a", "--tool", "unix:/x", "--secret-file", "/nonexistent/secret"]);
    expect(code).toBe(2);
    expect(stderr).toContain("/nonexistent/secret");
  });
});
