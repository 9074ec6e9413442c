// The README's install instructions as a user follows them, since @plexus/channels is on no
// registry: `npm pack` here, `npm install` of the tarball in a fresh project, whose code then
// imports "@plexus/channels" at run time and type-checks against it; and what the tarball holds
// (README, LICENSE, package.json and the built dist/src, nothing else). `npm test` has just built
// dist/, so the pack skips the prepack build.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const repository = path.join(root, "..", "..");
const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc");

let dir = "";
let tarball = "";

before(() => {
  dir = mkdtempSync(path.join(tmpdir(), "plexus-pack-"));
  execFileSync("npm", ["pack", "--ignore-scripts", "--pack-destination", dir], { cwd: root, stdio: "pipe" });
  const name = readdirSync(dir).find((file) => file.endsWith(".tgz"));
  assert.ok(name, "npm pack wrote a tarball");
  tarball = path.join(dir, name);
});

after(() => rmSync(dir, { recursive: true, force: true }));

test("the tarball holds README.md, LICENSE, package.json and dist/src, and nothing else", () => {
  const listed = execFileSync("tar", ["-tzf", tarball], { encoding: "utf8" })
    .split("\n")
    .filter((line) => line !== "" && !line.endsWith("/"))
    .map((line) => line.replace(/^package\//, ""))
    .sort();
  for (const file of ["README.md", "LICENSE", "package.json"]) {
    assert.ok(listed.includes(file), `the tarball lists ${file}: ${listed.join(", ")}`);
  }
  // Every module of src/ ships built, with its declarations; no source, test or config file does.
  const modules = readdirSync(path.join(root, "src")).filter((file) => file.endsWith(".ts"));
  assert.ok(modules.includes("index.ts"));
  for (const module of modules) {
    const built = `dist/src/${module.replace(/\.ts$/, "")}`;
    assert.ok(listed.includes(`${built}.js`), `the tarball lists ${built}.js`);
    assert.ok(listed.includes(`${built}.d.ts`), `the tarball lists ${built}.d.ts`);
  }
  const unexpected = listed.filter(
    (file) => !["README.md", "LICENSE", "package.json"].includes(file) && !/^dist\/src\/[^/]+\.(js|d\.ts)$/.test(file),
  );
  assert.deepEqual(unexpected, [], "only README.md, LICENSE, package.json and dist/src/*.{js,d.ts} are packed");
  assert.ok(!listed.some((file) => file.startsWith("test/") || file.startsWith("dist/test/")), "nothing from test/");
  assert.ok(!listed.some((file) => /^src\/.*\.ts$/.test(file)), "no src/*.ts");
});

test("clients/js/LICENSE is the repository's LICENSE, and the README names the tarball npm pack writes", () => {
  // npm packs only files inside the package directory, so the package keeps a copy of the
  // root LICENSE: it must not drift from it.
  assert.ok(
    readFileSync(path.join(root, "LICENSE")).equals(readFileSync(path.join(repository, "LICENSE"))),
    "clients/js/LICENSE differs from the repository's LICENSE: cp LICENSE clients/js/LICENSE",
  );
  assert.match(readFileSync(path.join(repository, "LICENSE"), "utf8"), /Apache License\s+Version 2\.0, January 2004/);
  const readme = readFileSync(path.join(root, "README.md"), "utf8");
  assert.ok(
    readme.includes(path.basename(tarball)),
    `README.md's install steps name ${path.basename(tarball)} (the version in package.json changed?)`,
  );
});

test("npm pack, then npm install of the tarball, gives a project a working, typed @plexus/channels", { timeout: 120_000 }, () => {
  const app = path.join(dir, "app");
  mkdirSync(app);
  writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  execFileSync("npm", ["install", "--offline", "--no-audit", "--no-fund", tarball], { cwd: app, stdio: "pipe" });
  const installed = path.join(app, "node_modules", "@plexus", "channels");
  assert.deepEqual(readFileSync(path.join(installed, "LICENSE")), readFileSync(path.join(root, "LICENSE")));
  assert.deepEqual(readFileSync(path.join(installed, "README.md")), readFileSync(path.join(root, "README.md")));

  const script = 'import { Client, createClient, PlexusError } from "@plexus/channels"; console.log([Client, createClient, PlexusError].map((f) => typeof f).join())';
  const printed = execFileSync(process.execPath, ["--input-type=module", "-e", script], { cwd: app, encoding: "utf8" });
  assert.equal(printed.trim(), "function,function,function");

  writeFileSync(
    path.join(app, "main.ts"),
    [
      'import { Client, PlexusError, type ClientOptions } from "@plexus/channels";',
      "type Channels = { todos: { params: {}; welcome: null; actions: { list: { input: void; output: string[] } }; topics: {} } };",
      'const options: ClientOptions = { requestTimeoutMs: 1000 };',
      'export const list = (): Promise<string[]> => new Client<Channels>("ws://127.0.0.1:1", options).channel("todos").send("list");',
      'export const code = (e: PlexusError): string => e.code;',
      "",
    ].join("\n"),
  );
  const options = ["--noEmit", "--strict", "--target", "ES2022", "--module", "NodeNext", "--moduleResolution", "NodeNext", "--lib", "ES2022,DOM"];
  try {
    execFileSync(process.execPath, [tsc, ...options, "main.ts"], { cwd: app, encoding: "utf8", stdio: "pipe" });
  } catch (error) {
    const failed = error as { stdout: string; stderr: string };
    assert.fail(`the installed package does not type-check a consumer:\n${failed.stdout}${failed.stderr}`);
  }
});
