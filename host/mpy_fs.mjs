// Copying host folders into the MicroPython (WebAssembly) interpreter's
// in-memory filesystem: shared by the script runner (mpy_node_runner.mjs) and
// the virtual board (vboard_node.mjs).

import fs from "node:fs";
import path from "node:path";

const SKIP_DIRS = new Set(["__pycache__", "node_modules"]);

// mkdir -p in the interpreter's filesystem.
export function mkdirs(FS, dir) {
  let cur = "";
  for (const part of dir.split("/").filter(Boolean)) {
    cur += "/" + part;
    try {
      FS.mkdir(cur);
    } catch {
      // EEXIST is fine; anything else shows up when a file is written.
    }
  }
}

// Copy the .py files under host path `src` (a folder, recursively, or one
// file) to `dest` in the interpreter. Returns the number of files copied;
// throws if `src` does not exist.
export function copyTree(FS, src, dest) {
  let st;
  try {
    st = fs.statSync(src);
  } catch {
    throw new Error(`--mount source not found: ${src}`);
  }
  if (st.isFile()) {
    mkdirs(FS, path.posix.dirname(dest));
    FS.writeFile(dest, fs.readFileSync(src));
    return 1;
  }
  mkdirs(FS, dest);
  let n = 0;
  for (const entry of fs.readdirSync(src, { withFileTypes: true })) {
    const from = path.join(src, entry.name);
    const to = path.posix.join(dest, entry.name);
    if (entry.isDirectory()) {
      if (!SKIP_DIRS.has(entry.name) && !entry.name.startsWith(".")) n += copyTree(FS, from, to);
    } else if (entry.name.endsWith(".py")) {
      FS.writeFile(to, fs.readFileSync(from));
      n += 1;
    }
  }
  return n;
}
