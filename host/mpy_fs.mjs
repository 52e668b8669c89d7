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

// Copy the .py files (every file with `all`: .mpy too) under host path `src`
// (a folder, recursively, or one file) to `dest` in the interpreter. Returns
// the number of files copied; throws if `src` does not exist.
export function copyTree(FS, src, dest, all = false) {
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
      if (!SKIP_DIRS.has(entry.name) && !entry.name.startsWith(".")) {
        n += copyTree(FS, from, to, all);
      }
    } else if (all ? !entry.name.startsWith(".") : entry.name.endsWith(".py")) {
      FS.writeFile(to, fs.readFileSync(from));
      n += 1;
    }
  }
  return n;
}

// Byte-wise output from MicroPython, written to `stream` a line at a time
// (or every 64 KB): put(bytes) as the interpreter's stdout, flush() at the end.
export function lineWriter(stream) {
  let buf = [];
  const flush = () => {
    if (buf.length) {
      stream.write(Buffer.from(buf));
      buf = [];
    }
  };
  const put = (bytes) => {
    for (const c of bytes) {
      buf.push(c);
      if (c === 10 || buf.length >= 65536) flush();
    }
  };
  return { put, flush };
}

// Flush both writers and exit with `status` once stdout and stderr have
// drained, even if the interpreter left timers behind (asyncio tasks).
export function exitWhenDrained(status, out, err) {
  out.flush();
  err.flush();
  let pending = 2;
  const done = () => {
    if (--pending === 0) process.exit(status);
  };
  process.stdout.write("", done);
  process.stderr.write("", done);
}

// --- the virtual board's flash kept in a host folder (`sim board --state-dir`) ---
//
// The flash is everything under "/" in the interpreter's filesystem except
// the folders Emscripten creates for itself (`system`: tmp, home, dev, proc).
// Layout on the host: the same tree, ordinary files. Names starting with "."
// are not the board's (a write in progress is ".NAME.partial").

const PARTIAL = ".partial";

function flashPath(system, p) {
  const parts = p.split("/").filter(Boolean);
  return parts.length > 0 && !system.has(parts[0]) ? parts : null;
}

// Copy the host folder `dir` (every file, binary) onto the interpreter's "/".
// Returns the number of files loaded.
export function loadFlash(FS, dir, system) {
  let n = 0;
  const walk = (hostDir, dest) => {
    for (const entry of fs.readdirSync(hostDir, { withFileTypes: true })) {
      if (entry.name.startsWith(".")) continue;
      if (dest === "" && system.has(entry.name)) continue;
      const from = path.join(hostDir, entry.name);
      const to = dest + "/" + entry.name;
      if (entry.isDirectory()) {
        mkdirs(FS, to);
        walk(from, to);
      } else if (entry.isFile()) {
        FS.writeFile(to, fs.readFileSync(from));
        n += 1;
      }
    }
  };
  walk(dir, "");
  return n;
}

// Keeps `dir` equal to the flash: every completed change is written through
// at once (a file when it is closed after writing, a rename, a removal, a new
// or removed folder), each as one atomic step on the host (write aside, then
// rename), so whatever kills the board afterwards, the folder holds what was
// written, as a board's LittleFS does: a file still open for writing keeps
// its previous contents until it is closed.
export class FlashMirror {
  constructor(FS, dir, system) {
    this.FS = FS;
    this.dir = dir;
    this.system = system;
    this.errors = 0;
  }

  host(parts) {
    return path.join(this.dir, ...parts);
  }

  saveFile(p) {
    const parts = flashPath(this.system, p);
    if (!parts) return;
    const dest = this.host(parts);
    const partial = path.join(path.dirname(dest), "." + path.basename(dest) + PARTIAL);
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    fs.writeFileSync(partial, this.FS.readFile(p));
    fs.renameSync(partial, dest);
  }

  // `p` still names `node` (a file removed while open is not brought back).
  stillThere(p, node) {
    try {
      return this.FS.lookupPath(p).node === node;
    } catch {
      return false;
    }
  }

  // Wrap the FS calls the interpreter's file operations end in.
  install() {
    const FS = this.FS;
    const orig = {
      close: FS.close,
      rename: FS.rename,
      unlink: FS.unlink,
      mkdir: FS.mkdir,
      rmdir: FS.rmdir,
    };
    const guard = (what, fn) => {
      try {
        fn();
      } catch (e) {
        this.errors += 1;
        process.stderr.write(`vboard: state dir: ${what} failed: ${e.message}\n`);
      }
    };
    FS.close = (stream) => {
      const node = stream.node;
      let p = null;
      if ((stream.flags & 3) !== 0 && node && FS.isFile(node.mode)) p = FS.getPath(node);
      const ret = orig.close.call(FS, stream);
      if (p !== null && this.stillThere(p, node)) guard(`saving ${p}`, () => this.saveFile(p));
      return ret;
    };
    FS.rename = (from, to) => {
      const ret = orig.rename.call(FS, from, to);
      const a = flashPath(this.system, from);
      const b = flashPath(this.system, to);
      guard(`renaming ${from}`, () => {
        if (a && b && fs.existsSync(this.host(a))) fs.renameSync(this.host(a), this.host(b));
        else if (b) this.saveTree(to);
        if (a && !b) fs.rmSync(this.host(a), { recursive: true, force: true });
      });
      return ret;
    };
    FS.unlink = (p) => {
      const ret = orig.unlink.call(FS, p);
      const parts = flashPath(this.system, p);
      if (parts) guard(`removing ${p}`, () => fs.rmSync(this.host(parts), { force: true }));
      return ret;
    };
    FS.rmdir = (p) => {
      const ret = orig.rmdir.call(FS, p);
      const parts = flashPath(this.system, p);
      if (parts) guard(`removing ${p}`, () => fs.rmSync(this.host(parts), { recursive: true, force: true }));
      return ret;
    };
    FS.mkdir = (p, mode) => {
      const ret = orig.mkdir.call(FS, p, mode);
      const parts = flashPath(this.system, p);
      if (parts) guard(`creating ${p}`, () => fs.mkdirSync(this.host(parts), { recursive: true }));
      return ret;
    };
  }

  // A folder moved into the flash from outside it: copy it all.
  saveTree(p) {
    const FS = this.FS;
    if (!FS.isDir(FS.stat(p).mode)) {
      this.saveFile(p);
      return;
    }
    fs.mkdirSync(this.host(flashPath(this.system, p)), { recursive: true });
    for (const name of FS.readdir(p)) {
      if (name !== "." && name !== "..") this.saveTree(path.posix.join(p, name));
    }
  }

  // Make the folder equal to the flash (at a clean shutdown): files whose
  // contents differ are written, files and folders the flash no longer has
  // are removed. A file open for writing keeps the folder's copy.
  syncAll() {
    const FS = this.FS;
    const open = new Set();
    for (const stream of FS.streams || []) {
      if (stream && (stream.flags & 3) !== 0 && stream.node) open.add(FS.getPath(stream.node));
    }
    const walk = (dir, hostDir) => {
      const names = new Set();
      for (const name of FS.readdir(dir)) {
        if (name === "." || name === "..") continue;
        if (dir === "/" && this.system.has(name)) continue;
        names.add(name);
        const p = path.posix.join(dir, name);
        const h = path.join(hostDir, name);
        if (FS.isDir(FS.stat(p).mode)) {
          fs.mkdirSync(h, { recursive: true });
          walk(p, h);
        } else if (!open.has(p)) {
          const data = FS.readFile(p);
          let same = false;
          try {
            same = Buffer.from(data).equals(fs.readFileSync(h));
          } catch {
            // not there yet
          }
          if (!same) this.saveFile(p);
        }
      }
      for (const entry of fs.readdirSync(hostDir, { withFileTypes: true })) {
        const leftover = entry.name.startsWith(".") && entry.name.endsWith(PARTIAL);
        if ((entry.name.startsWith(".") && !leftover) || names.has(entry.name)) continue;
        if (dir === "/" && this.system.has(entry.name)) continue;
        fs.rmSync(path.join(hostDir, entry.name), { recursive: true, force: true });
      }
    };
    try {
      walk("/", this.dir);
    } catch (e) {
      process.stderr.write(`vboard: state dir: saving failed: ${e.message}\n`);
    }
  }
}
