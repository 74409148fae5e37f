// SPDX-License-Identifier: Apache-2.0
// Runtime stage of the Containerfile, run once as root while building the image:
//  - removes the package managers an official Node image ships (npm, npx, corepack, yarn): the
//    runtime image carries no build tools;
//  - adds the unprivileged user 65532 (`kvmi`) the bridge runs as, unless the base has it;
//  - creates the KVMI socket directory /run/kvmi-bridge (the image's volume) owned by that user;
//  - deletes itself.
// Written as a node script so that the stage needs no shell.
import { appendFileSync, chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";

const UID = 65532;
const NAME = "kvmi";

const toolPaths = [
  "/usr/local/lib/node_modules/npm",
  "/usr/local/lib/node_modules/corepack",
  "/usr/local/bin/npm",
  "/usr/local/bin/npx",
  "/usr/local/bin/corepack",
  "/usr/local/bin/yarn",
  "/usr/local/bin/yarnpkg",
  "/usr/local/bin/pnpm",
  "/usr/local/bin/pnpx",
  ...(existsSync("/opt") ? readdirSync("/opt").filter((name) => name.startsWith("yarn")).map((name) => `/opt/${name}`) : []),
];
for (const path of toolPaths) {
  if (existsSync(path)) console.log(`prepare-runtime: removing ${path}`);
  rmSync(path, { recursive: true, force: true });
}

const hasEntry = (file, id) => existsSync(file) && readFileSync(file, "utf8").split("\n").some((line) => line.split(":")[2] === String(id));
if (!hasEntry("/etc/group", UID)) appendFileSync("/etc/group", `${NAME}:x:${UID}:\n`);
if (!hasEntry("/etc/passwd", UID)) appendFileSync("/etc/passwd", `${NAME}:x:${UID}:${UID}:kvmi-bridge:/nonexistent:/usr/sbin/nologin\n`);

mkdirSync("/run/kvmi-bridge", { recursive: true });
chownSync("/run/kvmi-bridge", UID, UID);
chmodSync("/run/kvmi-bridge", 0o770);
mkdirSync("/tmp", { recursive: true });
chmodSync("/tmp", 0o1777);

rmSync(new URL(import.meta.url).pathname, { force: true });
