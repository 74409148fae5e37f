// SPDX-License-Identifier: Apache-2.0
// Lint and module boundaries (conventions §2). Boundaries are `no-restricted-imports` patterns per
// package: simpler than dependency-cruiser and enforced by the same `npm run lint`.
import tseslint from "typescript-eslint";

const crossPackageDeep = ["**/kvm-bridge/src/**", "**/service/src/**", "**/clients/sdk/**", "**/proto/gen/**"];

/** @param {string[]} patterns @param {string} message */
const forbid = (patterns, message) => ({ group: patterns, message });

export default tseslint.config(
  { ignores: ["**/node_modules/**", "proto/gen/**", "coverage/**", "**/*.mjs", "tmp/**", "service/src/kubevirt/gen/**"] },
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/no-non-null-assertion": "off",
      "no-console": "error",
    },
  },
  {
    files: ["kvm-bridge/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            forbid(["@grpc/*", "@bufbuild/*", "@kvmi/proto", "@kvmi/service", "@kvmi/clients", "pino", "prom-client"], "kvm-bridge knows nothing about gRPC, protobuf, logging or metrics libraries (conventions §2)."),
            forbid(["ffi-rs"], "ffi-rs is used only in kvm-bridge/src/ioctl/ (conventions §4)."),
            forbid(["**/proto/gen/**", "**/service/**", "**/clients/**"], "kvm-bridge must not reach into other packages."),
          ],
        },
      ],
    },
  },
  {
    files: ["kvm-bridge/src/ioctl/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        { patterns: [forbid(["@grpc/*", "@bufbuild/*", "@kvmi/*", "pino"], "kvm-bridge knows nothing about gRPC (conventions §2).")] },
      ],
    },
  },
  {
    files: ["service/**/*.ts"],
    ignores: ["service/src/main.ts", "service/src/embedded.ts", "service/**/*.test.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            forbid(["@kvmi/kvm-bridge/emulator"], "Only the composition root (main.ts, embedded.ts) and tests may use the emulator."),
            forbid([...crossPackageDeep, "@kvmi/clients"], "Import other packages through their public entry points only."),
          ],
        },
      ],
    },
  },
  {
    files: ["clients/**/*.ts"],
    ignores: ["clients/**/*.test.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          // The codec (tables, encoder/decoder, framer, handshake, errors) is the one part of
          // kvm-bridge a client may use, e.g. a relay for libkvmi tools (README, design notes).
          paths: [{ name: "@kvmi/kvm-bridge", message: "clients may import only @kvmi/kvm-bridge/codec of kvm-bridge (README, design notes)." }],
          patterns: [
            forbid(["@kvmi/service", ...crossPackageDeep.filter((p) => !p.includes("clients"))], "clients talk to the bridge only over gRPC (conventions §2)."),
            forbid(["@kvmi/kvm-bridge/*", "!@kvmi/kvm-bridge/codec"], "clients may import only @kvmi/kvm-bridge/codec of kvm-bridge (README, design notes)."),
          ],
        },
      ],
    },
  },
  {
    files: ["test/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        { patterns: [forbid(crossPackageDeep, "Tests use packages through their public entry points (@kvmi/kvm-bridge/wire, …), never deep src/ paths.")] },
      ],
    },
  },
);
