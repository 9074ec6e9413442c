// The README's install instructions as a user follows them, since @plexus/channels is on no
// registry: `npm pack` here, `npm install` of the tarball in a fresh project, whose code then
// imports "@plexus/channels" at run time and type-checks against it. `npm test` has just built
// dist/, so the pack skips the prepack build.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc");

test("npm pack, then npm install of the tarball, gives a project a working, typed @plexus/channels", { timeout: 120_000 }, () => {
  const dir = mkdtempSync(path.join(tmpdir(), "plexus-pack-"));
  try {
    execFileSync("npm", ["pack", "--ignore-scripts", "--pack-destination", dir], { cwd: root, stdio: "pipe" });
    const tarball = readdirSync(dir).find((name) => name.endsWith(".tgz"));
    assert.ok(tarball, "npm pack wrote a tarball");
    const app = path.join(dir, "app");
    mkdirSync(app);
    writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
    execFileSync("npm", ["install", "--offline", "--no-audit", "--no-fund", path.join(dir, tarball)], { cwd: app, stdio: "pipe" });

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
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
