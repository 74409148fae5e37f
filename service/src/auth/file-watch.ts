// SPDX-License-Identifier: Apache-2.0
/**
 * Watching a configuration file that may be replaced rather than written: the policy and the JWKS.
 * The directory is watched, not the file, so that a Kubernetes ConfigMap or Secret volume's
 * `..data` symlink swap and an editor's rename of a temporary file are seen; changes are debounced
 * (editors write in several steps), and a change that leaves the content as it was costs a read.
 */
import { watch } from "node:fs";
import type { FSWatcher } from "node:fs";
import { basename, dirname } from "node:path";
import type { Logger } from "@kvmi/kvm-bridge";

/** Options of {@link watchConfigFile}. */
export interface ConfigFileWatchOptions {
  readonly file: string;
  /** What the file is, for the log line when it cannot be watched (`policy`, `JWKS`). */
  readonly what: string;
  readonly logger: Logger;
  /** Called after a quiet period once the file (or its directory's symlinks) changed. */
  readonly onChange: () => void;
  /** Quiet period after a change, in ms; default 200. */
  readonly debounceMs?: number;
}

/** Starts watching; the returned function stops. Never keeps the process alive. */
export function watchConfigFile(options: ConfigFileWatchOptions): () => void {
  const name = basename(options.file);
  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dirname(options.file), { persistent: false }, (_event, changed) => {
      // ConfigMap and Secret volumes swap a `..data` symlink; editors rename temporary files: any
      // change in the directory may be ours.
      if (changed !== null && changed !== name && !changed.startsWith("..")) return;
      clearTimeout(timer);
      timer = setTimeout(options.onChange, options.debounceMs ?? 200);
      timer.unref();
    });
    watcher.on("error", (err) => options.logger.warn({ err, file: options.file }, `cannot watch the ${options.what} file; reload with SIGHUP`));
  } catch (err) {
    options.logger.warn({ err, file: options.file }, `cannot watch the ${options.what} file; reload with SIGHUP`);
  }
  return () => {
    clearTimeout(timer);
    watcher?.close();
  };
}
