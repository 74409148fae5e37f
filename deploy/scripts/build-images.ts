// SPDX-License-Identifier: Apache-2.0
/**
 * Builds the kvmi-bridge image (`npm run image`, `npm run image:local`).
 *
 * 1. Stages a pruned build context in a temporary directory: the package manifests, the lock
 *    file, `proto/` (index, generated code, binary codec), `kvm-bridge/` and `service/` (bin and src without
 *    tests or test data) and `deploy/image/`. Nothing else of the repository (node_modules, .git,
 *    tests) reaches the builder.
 * 2. With `--deps host`, installs the production dependencies into the staged context on this
 *    machine (`npm ci --omit=dev`), for builders whose containers cannot reach the npm registry;
 *    with `--deps build` (the default for the official base) the build stage runs `npm ci`.
 * 3. With `--base local`, builds a base image from this machine's own Node runtime: the `node`
 *    binary and the shared libraries it and the native addons load, imported with `docker import`
 *    (for CI, which cannot pull images). Otherwise the base is an official Node image.
 * 4. `docker build` of deploy/image/Containerfile, labelled with a hash of everything that went
 *    in; `--if-stale` skips the build when the tagged image carries the same hash.
 *
 * Usable as a library by the integration tests (`ensureImage`), which build once and reuse.
 */
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

/** The tag `npm run image` produces. */
export const DEFAULT_TAG = "kvmi-bridge:dev";
/** The Containerfile's default base. */
export const OFFICIAL_BASE = "docker.io/library/node:20-bookworm-slim";
/** Repository of the base built from this machine's Node runtime. */
export const LOCAL_BASE_REPO = "kvmi-bridge/node-base";
/** Label holding the hash of the image inputs. */
export const SOURCE_LABEL = "io.kvmi-bridge.source-sha256";
/** Label holding the hash of the local base's files. */
export const BASE_LABEL = "io.kvmi-bridge.base-sha256";
/** The repository root (this file is deploy/scripts/build-images.ts). */
export const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));

/** Options of {@link buildImage}. */
export interface BuildImageOptions {
  readonly root?: string;
  readonly tag?: string;
  /** `local` (a base from this machine's Node runtime) or an image reference. */
  readonly base?: string;
  /** Where production dependencies are installed; default `host` for a local base, else `build`. */
  readonly deps?: "host" | "build";
  /** Skip the build when the tagged image was built from the same inputs. */
  readonly ifStale?: boolean;
  readonly log?: (line: string) => void;
}

/** What {@link buildImage} did. */
export interface BuildImageResult {
  readonly tag: string;
  readonly base: string;
  readonly sourceHash: string;
  /** False when `ifStale` found the image up to date. */
  readonly built: boolean;
  /** The image size as the engine reports it. */
  readonly sizeBytes: number;
}

/** Runs docker and returns its output; throws with the command and stderr when it fails. */
export function docker(args: readonly string[], options: { input?: string; quiet?: boolean } = {}): string {
  const r = spawnSync("docker", args, { encoding: "utf8", input: options.input, maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw new Error(`docker ${args[0]}: ${r.error.message} (is the docker CLI installed?)`);
  if (r.status !== 0) throw new Error(`docker ${args.join(" ")} failed (exit ${r.status}):\n${r.stderr.trim()}`);
  return r.stdout;
}

/** Why no Docker engine can be used, or undefined when one answers. */
export function dockerProblem(): string | undefined {
  const r = spawnSync("docker", ["info", "--format", "{{.ServerVersion}}"], { encoding: "utf8", timeout: 20_000 });
  if (r.error) return `the docker CLI cannot be run (${r.error.message})`;
  if (r.status !== 0) return `no Docker engine answers (docker info: ${r.stderr.trim().split("\n").at(-1) ?? `exit ${r.status}`})`;
  return undefined;
}

/** A label of a local image, or undefined when the image or the label does not exist. */
export function imageLabel(ref: string, label: string): string | undefined {
  const r = spawnSync("docker", ["image", "inspect", "--format", `{{ index .Config.Labels "${label}" }}`, ref], { encoding: "utf8" });
  const value = r.status === 0 ? r.stdout.trim() : "";
  return value === "" || value === "<no value>" ? undefined : value;
}

function imageId(ref: string): string | undefined {
  const r = spawnSync("docker", ["image", "inspect", "--format", "{{.Id}}", ref], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

const SOURCE_DIRS = ["kvm-bridge/bin", "kvm-bridge/src", "service/bin", "service/src", "proto/gen", "proto/binary"];
const SINGLE_FILES = [
  "package.json",
  "package-lock.json",
  "proto/package.json",
  "proto/index.ts",
  // The shared decoder of google.rpc.Status details (`@kvmi/proto/status-details`), which the
  // service's status mapping imports.
  "proto/status-details.ts",
  "kvm-bridge/package.json",
  "service/package.json",
  "clients/package.json",
  "deploy/image/Containerfile",
  "deploy/image/install-deps.mjs",
  "deploy/image/prepare-runtime.mjs",
];

/** The repository files the image is built from, relative to `root`, sorted. */
export function contextFiles(root: string = REPO_ROOT): string[] {
  const files = [...SINGLE_FILES];
  for (const dir of SOURCE_DIRS) {
    for (const entry of readdirSync(join(root, dir), { recursive: true, withFileTypes: true })) {
      if (!entry.isFile()) continue;
      const path = relative(root, join(entry.parentPath, entry.name)).split(sep).join("/");
      if (path.endsWith(".test.ts") || path.split("/").includes("testdata") || path.split("/").includes("node_modules")) continue;
      files.push(path);
    }
  }
  return files.sort();
}

function sha256(parts: Iterable<string | Buffer>): string {
  const hash = createHash("sha256");
  for (const part of parts) {
    hash.update(part);
    hash.update("\u0000");
  }
  return hash.digest("hex");
}

/** The shared libraries `ldd` lists for `files` (resolved paths and the ELF interpreter). */
function sharedLibraries(files: readonly string[]): string[] {
  const libs = new Set<string>();
  for (const file of files) {
    const r = spawnSync("ldd", [file], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`ldd ${file} failed: ${r.stderr || r.stdout}`);
    for (const line of r.stdout.split("\n")) {
      const resolved = /=>\s*(\/\S+)/.exec(line)?.[1] ?? /^\s*(\/\S+)\s+\(/.exec(line)?.[1];
      if (resolved) libs.add(resolved);
    }
  }
  return [...libs].sort();
}

/** Native addons (`*.node`) under a node_modules directory. */
function nativeAddons(nodeModules: string): string[] {
  if (!existsSync(nodeModules)) return [];
  return readdirSync(nodeModules, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && e.name.endsWith(".node"))
    .map((e) => join(e.parentPath, e.name));
}

/**
 * Builds (or reuses) the base image made of this machine's Node runtime: `node` at
 * /usr/local/bin/node, the shared libraries it and every native addon of `node_modules` load,
 * /etc/passwd and /etc/group with root, and a world-writable /tmp. No shell, no package manager.
 *
 * @returns the image reference.
 */
export function ensureLocalBase(root: string, log: (line: string) => void): string {
  const node = realpathSync(process.execPath);
  const libs = sharedLibraries([node, ...nativeAddons(join(root, "node_modules"))]);
  const passwd = "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
  const group = "root:x:0:\nnogroup:x:65534:\n";
  const identity = sha256([readFileSync(node), ...libs.flatMap((lib) => [lib, readFileSync(lib)]), passwd, group]);
  const ref = `${LOCAL_BASE_REPO}:node-${process.versions.node}`;
  if (imageLabel(ref, BASE_LABEL) === identity) {
    log(`local base ${ref} is up to date`);
    return ref;
  }
  log(`building the local base ${ref} from ${node} and ${libs.length} shared libraries`);
  const rootfs = mkdtempSync(join(tmpdir(), "kvmi-node-base-"));
  try {
    mkdirSync(join(rootfs, "usr/local/bin"), { recursive: true });
    copyFileSync(node, join(rootfs, "usr/local/bin/node"));
    chmodSync(join(rootfs, "usr/local/bin/node"), 0o755);
    for (const lib of libs) {
      mkdirSync(join(rootfs, dirname(lib)), { recursive: true });
      copyFileSync(realpathSync(lib), join(rootfs, lib));
      chmodSync(join(rootfs, lib), 0o755);
    }
    mkdirSync(join(rootfs, "etc"), { recursive: true });
    writeFileSync(join(rootfs, "etc/passwd"), passwd);
    writeFileSync(join(rootfs, "etc/group"), group);
    mkdirSync(join(rootfs, "tmp"));
    chmodSync(join(rootfs, "tmp"), 0o1777);
    const tarball = `${rootfs}.tar`;
    const tar = spawnSync("tar", ["-C", rootfs, "--numeric-owner", "--owner=0", "--group=0", "-cf", tarball, "."], { encoding: "utf8" });
    if (tar.status !== 0) throw new Error(`tar failed: ${tar.error?.message ?? tar.stderr}`);
    try {
      docker([
        "import",
        "--change", "ENV PATH=/usr/local/bin:/usr/bin:/bin",
        "--change", `ENV NODE_VERSION=${process.versions.node}`,
        "--change", `LABEL ${BASE_LABEL}=${identity}`,
        "--change", 'CMD ["node"]',
        tarball,
        ref,
      ]);
    } finally {
      rmSync(tarball, { force: true });
    }
  } finally {
    rmSync(rootfs, { recursive: true, force: true });
  }
  return ref;
}

/** Runs a command with its output going to `log` line by line; rejects on a non-zero exit. */
function run(command: string, args: readonly string[], options: { cwd?: string; env?: NodeJS.ProcessEnv }, log: (line: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: options.cwd, env: options.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
    const tail: string[] = [];
    const forward = (chunk: Buffer): void => {
      for (const line of chunk.toString("utf8").split("\n")) {
        if (line.trim() === "") continue;
        log(line);
        tail.push(line);
        if (tail.length > 40) tail.shift();
      }
    };
    child.stdout.on("data", forward);
    child.stderr.on("data", forward);
    child.on("error", (error) => reject(new Error(`${command}: ${error.message}`)));
    child.on("close", (code) => (code === 0 ? resolve() : reject(new Error(`${command} ${args.join(" ")} failed (exit ${code}):\n${tail.join("\n")}`))));
  });
}

/** Builds the image, or reuses it with `ifStale` when its inputs did not change. */
export async function buildImage(options: BuildImageOptions = {}): Promise<BuildImageResult> {
  const root = options.root ?? REPO_ROOT;
  const tag = options.tag ?? DEFAULT_TAG;
  const log = options.log ?? ((line: string) => void process.stderr.write(`${line}\n`));
  const local = (options.base ?? OFFICIAL_BASE) === "local";
  const deps = options.deps ?? (local ? "host" : "build");
  const problem = dockerProblem();
  if (problem !== undefined) throw new Error(`cannot build ${tag}: ${problem}`);

  const base = local ? ensureLocalBase(root, log) : (options.base ?? OFFICIAL_BASE);
  const files = contextFiles(root);
  const sourceHash = sha256([
    `base=${base}@${imageId(base) ?? "not-pulled"}`,
    `deps=${deps}`,
    ...files.flatMap((file) => [file, readFileSync(join(root, file))]),
  ]);
  const size = (): number => Number(docker(["image", "inspect", "--format", "{{.Size}}", tag]).trim());
  if (options.ifStale && imageLabel(tag, SOURCE_LABEL) === sourceHash) {
    log(`${tag} is up to date (${SOURCE_LABEL}=${sourceHash.slice(0, 12)})`);
    return { tag, base, sourceHash, built: false, sizeBytes: size() };
  }

  const stage = mkdtempSync(join(tmpdir(), "kvmi-image-context-"));
  try {
    for (const file of files) {
      mkdirSync(dirname(join(stage, file)), { recursive: true });
      cpSync(join(root, file), join(stage, file));
    }
    if (deps === "host") {
      log("installing production dependencies on this machine (npm ci --omit=dev)");
      const workspaces = ["@kvmi/proto", "@kvmi/kvm-bridge", "@kvmi/service"].flatMap((w) => ["--workspace", w]);
      await run("npm", ["ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline", ...workspaces], { cwd: stage }, log);
    }
    log(`docker build ${tag} from ${base} (${files.length} files, deps: ${deps})`);
    await run(
      "docker",
      [
        "build",
        "--file", join(stage, "deploy/image/Containerfile"),
        "--build-arg", `BASE_IMAGE=${base}`,
        "--label", `${SOURCE_LABEL}=${sourceHash}`,
        "--tag", tag,
        stage,
      ],
      {},
      log,
    );
  } finally {
    rmSync(stage, { recursive: true, force: true });
    // The classic builder leaves the build stage behind as an untagged image, and a rebuild leaves
    // the previous image untagged: remove both (only untagged images carrying our labels).
    for (const label of ["io.kvmi-bridge.stage=build", SOURCE_LABEL]) {
      spawnSync("docker", ["image", "prune", "--force", "--filter", `label=${label}`], { encoding: "utf8" });
    }
  }
  return { tag, base, sourceHash, built: true, sizeBytes: size() };
}

const HELP = `Usage: npm run image [-- options]     (tsx deploy/scripts/build-images.ts)

Builds the kvmi-bridge image from deploy/image/Containerfile with a pruned build context.

Options:
  --tag REF          image tag (default ${DEFAULT_TAG})
  --base REF|local   base image: an official Node image (default ${OFFICIAL_BASE}), or "local"
                     to assemble one from this machine's Node runtime (no registry needed)
  --deps host|build  install production dependencies on this machine, or in the build stage
                     (default: host for --base local, build otherwise)
  --if-stale         do nothing when the tagged image was built from the same inputs
  -h, --help         print this help
`;

/** The command line. */
export async function main(argv: readonly string[]): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args: [...argv],
      options: {
        tag: { type: "string" },
        base: { type: "string" },
        deps: { type: "string" },
        "if-stale": { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (error) {
    process.stderr.write(`build-images: ${(error as Error).message}\n${HELP}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (values.deps !== undefined && values.deps !== "host" && values.deps !== "build") {
    process.stderr.write(`build-images: --deps must be host or build, got "${values.deps}"\n`);
    return 2;
  }
  try {
    const result = await buildImage({
      ...(values.tag !== undefined && { tag: values.tag }),
      ...(values.base !== undefined && { base: values.base }),
      ...(values.deps !== undefined && { deps: values.deps as "host" | "build" }),
      ifStale: values["if-stale"] ?? false,
    });
    process.stdout.write(`${result.tag} ${result.built ? "built" : "reused"} from ${result.base}: ${(result.sizeBytes / 1e6).toFixed(1)} MB\n`);
    return 0;
  } catch (error) {
    process.stderr.write(`build-images: ${(error as Error).message}\n`);
    return 1;
  }
}

if (process.argv[1] !== undefined && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(process.argv.slice(2));
}
