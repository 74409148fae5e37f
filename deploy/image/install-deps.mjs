// SPDX-License-Identifier: Apache-2.0
// Build stage of the Containerfile: production node_modules for the bridge's workspaces.
//
// When the build context already carries them (prepared on the host by `npm run image -- --deps host`,
// for builders whose containers cannot reach the npm registry), they are used as they are;
// otherwise `npm ci --omit=dev` installs them from the lock file. Install scripts are not run: no
// production dependency needs one (esbuild and ffi-rs ship their binaries as optional packages).
// Written as a node script so that the stage needs no shell.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";

const WORKSPACES = ["@kvmi/proto", "@kvmi/kvm-bridge", "@kvmi/service"];

if (existsSync("node_modules/.package-lock.json")) {
  console.log("install-deps: using the production node_modules from the build context");
} else {
  const args = ["ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund", ...WORKSPACES.flatMap((w) => ["--workspace", w])];
  console.log(`install-deps: npm ${args.join(" ")}`);
  const result = spawnSync("npm", args, { stdio: "inherit" });
  if (result.status !== 0) {
    console.error(`install-deps: npm ci failed (${result.error?.message ?? `exit ${result.status}`}); if this builder cannot reach the registry, build with --deps host`);
    process.exit(1);
  }
}
// The runtime stage copies node_modules as is: check that what the entry points load is there.
for (const required of ["tsx", "@grpc/grpc-js", "@bufbuild/protobuf", "ffi-rs", "@kvmi/service", "@kvmi/kvm-bridge", "@kvmi/proto"]) {
  if (!existsSync(`node_modules/${required}/package.json`)) {
    console.error(`install-deps: node_modules/${required} is missing`);
    process.exit(1);
  }
}
