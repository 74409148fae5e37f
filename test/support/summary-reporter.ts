// SPDX-License-Identifier: Apache-2.0
// Prints one plain closing line, "Tests: N passed, N failed, N skipped", after vitest's own summary,
// so that CI systems that read a runner's last line understand the result without ANSI parsing.
import type { Reporter, TestModule } from "vitest/node";

export default class SummaryReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<unknown>): void {
    let passed = 0;
    let failed = unhandledErrors.length;
    let skipped = 0;
    for (const module of testModules) {
      const tests = [...module.children.allTests()];
      const states = tests.map((test) => test.result().state);
      // A file that failed without a failing test failed in a hook or at import (e.g. beforeAll found
      // no Docker engine): the tests it did not run count as failed, not skipped, and a file with
      // no tests at all counts once.
      const suiteFailed = module.state() === "failed" && !states.includes("failed");
      if (suiteFailed && tests.length === 0) failed++;
      for (const state of states) {
        if (state === "passed") passed++;
        else if (state === "failed" || suiteFailed) failed++;
        else skipped++;
      }
    }
    process.stdout.write(`\nTests: ${passed} passed, ${failed} failed, ${skipped} skipped\n`);
  }
}
