// Type tests: test/types.ts must compile, and must stop compiling at every line marked
// `@ts-expect-error` once the markers are removed (so no marker hides a call that compiles).
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const tsc = path.join(here, "..", "node_modules", "typescript", "bin", "tsc");
const options = ["--noEmit", "--strict", "--target", "ES2022", "--module", "NodeNext", "--moduleResolution", "NodeNext", "--lib", "ES2022,DOM", "--types", "node", "--skipLibCheck"];

function compile(file) {
  try {
    execFileSync(process.execPath, [tsc, ...options, file], { encoding: "utf8", stdio: "pipe" });
    return "";
  } catch (error) {
    return error.stdout + error.stderr;
  }
}

const typesFile = path.join(here, "types.ts");
const checked = compile(typesFile);
if (checked) {
  console.error(checked);
  throw new Error("test/types.ts does not compile");
}

const source = readFileSync(typesFile, "utf8").split("\n");
const expected = new Set();
const stripped = source.map((line, i) => {
  if (line.trim().startsWith("// @ts-expect-error")) {
    expected.add(i + 2); // the next line, 1-based
    return "";
  }
  return line;
});
const uncheckedFile = path.join(here, "unchecked.ts");
writeFileSync(uncheckedFile, stripped.join("\n"));
let output;
try {
  output = compile(uncheckedFile);
} finally {
  rmSync(uncheckedFile, { force: true });
}
const failing = new Set([...output.matchAll(/unchecked\.ts\((\d+),\d+\): error/g)].map((m) => Number(m[1])));
const compiledAnyway = [...expected].filter((line) => !failing.has(line));
const unexpected = [...failing].filter((line) => !expected.has(line));
if (compiledAnyway.length || unexpected.length) {
  console.error(output);
  throw new Error(`lines that should not compile but do: ${compiledAnyway}; unexpected errors on lines: ${unexpected}`);
}
console.log(`type tests: types.ts compiles; all ${expected.size} marked calls fail to compile without their markers`);
