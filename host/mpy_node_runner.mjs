#!/usr/bin/env node
// Run a Python script under real MicroPython 1.27 (the npm WebAssembly build,
// @micropython/micropython-webassembly-pyscript) with host folders copied into
// its in-memory filesystem, so firmware tests run on the interpreter the board
// uses rather than on CPython.
//
// usage: node host/mpy_node_runner.mjs [--mount SRC:DEST]... [--heap BYTES]
//            [--pystack WORDS] [--micropython PATH] (script.py | -) [args...]
//
//   --mount SRC:DEST   copy the .py files under host dir SRC (recursively) to
//                      DEST in MicroPython's filesystem; SRC may be one file.
//                      Repeatable; e.g. --mount firmware:/lib/invtable/firmware
//   --heap BYTES       initial GC heap (suffix k or m allowed; default 8m).
//                      This build grows its heap on demand, so it is a
//                      starting size, not a cap like an ESP32's ~110 KB.
//   --pystack WORDS    Python stack in 4-byte words (default 2048, as upstream).
//                      Recursion stops first at the C stack: about 150 frames.
//   --micropython P    path to micropython.mjs (else $INVTABLE_MICROPYTHON_MJS,
//                      else resolved from node_modules next to this repo).
//   script.py | -      the script; "-" or no script reads it from stdin.
//
// The script runs with runPythonAsync, so top-level `await main()` works
// (this build has no asyncio.run). Output is forwarded line by line.
// Exit status: 0 on success; 1 if the script raised (traceback on stderr);
// the code of SystemExit if it raised one; 2 on usage/setup errors.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

import { copyTree, exitWhenDrained, lineWriter } from "./mpy_fs.mjs";

const PACKAGE = "@micropython/micropython-webassembly-pyscript";
const DEFAULT_HEAP = 8 * 1024 * 1024;
const DEFAULT_PYSTACK = 2048;
let status0 = 0;

function die(message) {
  process.stderr.write(`mpy_node_runner: ${message}\n`);
  process.exit(2);
}

function parseSize(text, what) {
  const m = /^(\d+)([kKmM]?)$/.exec(text ?? "");
  if (!m) die(`bad ${what}: ${JSON.stringify(text)}`);
  const mult = { "": 1, k: 1024, m: 1024 * 1024 }[m[2].toLowerCase()];
  return parseInt(m[1], 10) * mult;
}

function parseArgs(argv) {
  const opts = { mounts: [], heap: DEFAULT_HEAP, pystack: DEFAULT_PYSTACK, mjs: null };
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) die(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--mount") {
      const spec = value();
      const sep = spec.lastIndexOf(":");
      if (sep <= 0 || !spec.slice(sep + 1).startsWith("/")) {
        die(`--mount wants SRC:/ABS/DEST, got ${JSON.stringify(spec)}`);
      }
      opts.mounts.push([spec.slice(0, sep), spec.slice(sep + 1)]);
    } else if (a === "--heap") {
      opts.heap = parseSize(value(), "--heap");
    } else if (a === "--pystack") {
      opts.pystack = parseSize(value(), "--pystack");
    } else if (a === "--micropython") {
      opts.mjs = value();
    } else if (a === "-h" || a === "--help") {
      process.stdout.write(
        "usage: mpy_node_runner.mjs [--mount SRC:DEST]... [--heap BYTES] " +
          "[--pystack WORDS] [--micropython PATH] (script.py | -) [args...]\n",
      );
      process.exit(0);
    } else if (a === "--") {
      i++;
      break;
    } else if (a.startsWith("--")) {
      die(`unknown option ${a}`);
    } else {
      break;
    }
  }
  opts.script = i < argv.length ? argv[i] : "-";
  opts.args = argv.slice(i + 1);
  return opts;
}

function findMicroPythonMjs(explicit) {
  const chosen = explicit || process.env.INVTABLE_MICROPYTHON_MJS;
  if (chosen) {
    if (!fs.existsSync(chosen)) die(`micropython.mjs not found: ${chosen}`);
    return path.resolve(chosen);
  }
  const candidates = [];
  // node_modules in this file's folder or any parent (the repo root normally).
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    candidates.push(path.join(dir, "node_modules", PACKAGE, "micropython.mjs"));
    const parent = path.dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  for (const c of candidates) {
    if (fs.existsSync(c)) return path.resolve(c);
  }
  die(`cannot find ${PACKAGE}; run \`npm ci\` in the repo root`);
}

// The PythonError message is the formatted traceback; for SystemExit its last
// line is "SystemExit: <value>".
function exitCodeForSystemExit(message, err) {
  const lines = message.trimEnd().split("\n");
  const last = lines[lines.length - 1];
  const value = last.startsWith("SystemExit") ? last.replace(/^SystemExit:?\s?/, "") : "";
  if (value === "" || value === "None") return 0;
  if (/^-?\d+$/.test(value)) return parseInt(value, 10) & 0xff;
  err.put(Buffer.from(value + "\n"));
  return 1;
}

async function main() {
  // A reader that went away (e.g. `| head`) is not an error of the script.
  for (const s of [process.stdout, process.stderr]) s.on("error", () => process.exit(status0));
  const opts = parseArgs(process.argv.slice(2));
  const mjs = findMicroPythonMjs(opts.mjs);
  const { loadMicroPython } = await import(pathToFileURL(mjs).href);

  const code =
    opts.script === "-" ? fs.readFileSync(0, "utf8") : fs.readFileSync(opts.script, "utf8");

  const out = lineWriter(process.stdout);
  const err = lineWriter(process.stderr);
  const mp = await loadMicroPython({
    heapsize: opts.heap,
    pystack: opts.pystack,
    linebuffer: false,
    stdout: out.put,
    stderr: err.put,
  });

  for (const [src, dest] of opts.mounts) {
    try {
      copyTree(mp.FS, src, dest);
    } catch (e) {
      die(e.message);
    }
  }

  const argv = [opts.script === "-" ? "" : opts.script, ...opts.args];
  mp.runPython(`import sys as _s\n_s.argv.extend(${JSON.stringify(argv)})\ndel _s\n`);

  let status = 0;
  try {
    await mp.runPythonAsync(code);
  } catch (e) {
    if (e && e.name === "PythonError") {
      if (e.type === "SystemExit") {
        status = exitCodeForSystemExit(e.message, err);
      } else {
        out.flush();
        err.put(Buffer.from(e.message.endsWith("\n") ? e.message : e.message + "\n"));
        status = 1;
      }
    } else {
      out.flush();
      err.put(Buffer.from(`mpy_node_runner: internal error: ${e && e.stack ? e.stack : e}\n`));
      status = 2;
    }
  }
  exitWhenDrained(status, out, err);
}

main();
