#!/usr/bin/env node
// The benchmarks' MicroPython runner (the npm WebAssembly build, 32-bit like
// the ESP32): bench/boot_heap.py and bench/soak.py start it.
//
// usage: node bench/mpy_bench_runner.mjs --micropython PATH [--heap BYTES]
//            [--copy SRC:DEST]... script.py
//
//   --heap BYTES     the GC heap the interpreter starts with (this build adds
//                    heap areas when an allocation finds no room: see below).
//   --copy SRC:DEST  copy host file or folder SRC (every file, recursively,
//                    .mpy included) to DEST in the interpreter's filesystem.
//
// The script runs with runPythonAsync (top-level await works). If it defines
// a function `_js_step()`, the runner then calls it from JavaScript, over and
// over, until it returns something other than true, then calls `_js_end()`
// if that exists.
//
// Why from JavaScript: in this build gc.collect() and the automatic
// collections only *request* a collection; it runs when the interpreter
// returns to JavaScript (ports/webassembly/main.c, gc_collect_top_level), and
// an allocation that finds no room while code runs grows the heap instead.
// Each `_js_step()` call returns to JavaScript, so a collection that was
// requested during one step runs before the next (about 4 us per call;
// `await asyncio.sleep(0)` would cost a 1 ms timer each time).
//
// Exit status: 0; 1 if the script (or a step) raised; 2 on setup errors.

import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

import { copyTree, exitWhenDrained, lineWriter } from "../host/mpy_fs.mjs";

function die(message) {
  process.stderr.write(`mpy_bench_runner: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { heap: 8 * 1024 * 1024, copies: [], mjs: null, script: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) die(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--heap") opts.heap = parseInt(value(), 10);
    else if (a === "--micropython") opts.mjs = value();
    else if (a === "--copy") {
      const spec = value();
      const sep = spec.lastIndexOf(":");
      if (sep <= 0 || !spec.slice(sep + 1).startsWith("/")) die(`bad --copy ${spec}`);
      opts.copies.push([spec.slice(0, sep), spec.slice(sep + 1)]);
    } else if (a.startsWith("--")) die(`unknown option ${a}`);
    else opts.script = a;
  }
  if (!opts.mjs || !opts.script) die("--micropython PATH and a script are required");
  if (!(opts.heap > 0)) die("bad --heap");
  return opts;
}

function report(e, out, err) {
  out.flush();
  const text = e && e.name === "PythonError" ? e.message : `internal error: ${e && e.stack ? e.stack : e}`;
  err.put(Buffer.from(text.endsWith("\n") ? text : text + "\n"));
  err.flush();
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const { loadMicroPython } = await import(pathToFileURL(path.resolve(opts.mjs)).href);
  const out = lineWriter(process.stdout);
  const err = lineWriter(process.stderr);
  const mp = await loadMicroPython({
    heapsize: opts.heap,
    linebuffer: false,
    stdout: out.put,
    stderr: err.put,
  });
  for (const [src, dest] of opts.copies) {
    try {
      copyTree(mp.FS, src, dest, true);
    } catch (e) {
      die(`cannot copy ${src}: ${e.message}`);
    }
  }
  let status = 0;
  try {
    await mp.runPythonAsync(fs.readFileSync(opts.script, "utf8"));
    const step = mp.globals.get("_js_step");
    if (step) {
      while (step() === true) {
        // one step per call: a requested collection runs in between
      }
      const end = mp.globals.get("_js_end");
      if (end) end();
    }
  } catch (e) {
    report(e, out, err);
    status = e && e.name === "PythonError" ? 1 : 2;
  }
  exitWhenDrained(status, out, err);
}

main();
