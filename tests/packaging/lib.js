// Readers for the files the packaging tests compare: the Dockerfile, the packaged TOML config,
// the workspace version and the Kubernetes manifests. Each reader is small and strict: what it
// does not understand is an error, never a silent default.
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const read = (rel) => readFileSync(join(ROOT, rel), 'utf8');

/** The Dockerfile as stages: [{ from, as, instructions: [{ op, args }] }]. */
export function parseDockerfile(text) {
  const logical = [];
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    // Comment lines (parser directives included) are dropped, also inside a continuation.
    if (/^\s*#/.test(line)) continue;
    if (line.endsWith('\\')) {
      current += line.slice(0, -1) + ' ';
      continue;
    }
    current += line;
    if (current.trim()) logical.push(current.trim());
    current = '';
  }
  if (current.trim()) logical.push(current.trim());
  const stages = [];
  const preamble = [];
  for (const line of logical) {
    const m = /^([A-Za-z]+)\s+(.*)$/s.exec(line);
    if (!m) throw new Error(`unreadable Dockerfile line: ${line}`);
    const op = m[1].toUpperCase();
    const args = m[2];
    if (op === 'FROM') {
      const f = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args);
      if (!f) throw new Error(`unreadable FROM: ${args}`);
      stages.push({ from: f[1], as: f[2] ?? null, instructions: [] });
    } else if (stages.length === 0) {
      if (op !== 'ARG') throw new Error(`${op} before the first FROM`);
      preamble.push({ op, args });
    } else {
      stages.at(-1).instructions.push({ op, args });
    }
  }
  return { preamble, stages };
}

/** `ENV A=1 B=2` (with optional double quotes) as an object. */
export function parseEnv(args) {
  const env = {};
  const re = /([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)/g;
  let m;
  let consumed = '';
  while ((m = re.exec(args))) {
    env[m[1]] = m[2].startsWith('"') ? JSON.parse(m[2]) : m[2];
    consumed += m[0];
  }
  if (consumed.replace(/\s/g, '') !== args.replace(/\s/g, '')) {
    throw new Error(`ENV must be KEY=VALUE pairs: ${args}`);
  }
  return env;
}

/** What the runtime (last) stage says about running the image. */
export function runtimeOf(dockerfile) {
  const stage = dockerfile.stages.at(-1);
  const all = (op) => stage.instructions.filter((i) => i.op === op);
  const one = (op) => {
    const found = all(op);
    if (found.length !== 1) throw new Error(`the runtime stage needs exactly one ${op}, has ${found.length}`);
    return found[0].args;
  };
  const env = Object.assign({}, ...all('ENV').map((i) => parseEnv(i.args)));
  const [uid, gid] = one('USER').split(':');
  const expose = all('EXPOSE').flatMap((i) => i.args.split(/\s+/)).map((p) => Number(p.replace(/\/tcp$/, '')));
  const hc = /^((?:--[a-z-]+=\S+\s+)*)CMD\s+(\[.*\])$/s.exec(one('HEALTHCHECK'));
  if (!hc) throw new Error('HEALTHCHECK must be `[options] CMD [exec form]`');
  return {
    stage,
    env,
    user: { uid, gid },
    expose,
    healthcheck: JSON.parse(hc[2]),
    entrypoint: JSON.parse(one('ENTRYPOINT')),
    cmd: JSON.parse(one('CMD')),
  };
}

/**
 * A small TOML reader for the packaged config: `[table]`, `[[array]]`, `key = "string" | int |
 * bool` with trailing comments. Returns { 'server.port': 6001, 'apps.0.secret': '${…}', … }.
 */
export function parseFlatToml(text) {
  const out = {};
  let prefix = '';
  const counts = {};
  for (const [n, raw] of text.split('\n').entries()) {
    const line = raw.replace(/^\s+/, '');
    if (line === '' || line.startsWith('#')) continue;
    let m;
    if ((m = /^\[\[([a-z_.]+)\]\]\s*(#.*)?$/.exec(line))) {
      counts[m[1]] = (counts[m[1]] ?? -1) + 1;
      prefix = `${m[1]}.${counts[m[1]]}`;
    } else if ((m = /^\[([a-z_.]+)\]\s*(#.*)?$/.exec(line))) {
      prefix = m[1];
    } else if ((m = /^([a-z_]+)\s*=\s*("(?:[^"\\]|\\.)*"|-?\d+|true|false)\s*(#.*)?$/.exec(line))) {
      const v = m[2];
      out[`${prefix}.${m[1]}`] = v.startsWith('"') ? JSON.parse(v) : v === 'true' ? true : v === 'false' ? false : Number(v);
    } else {
      throw new Error(`line ${n + 1} of the TOML is not understood by this reader: ${raw}`);
    }
  }
  return out;
}

/** [workspace.package] version of Cargo.toml. */
export function workspaceVersion() {
  let inPkg = false;
  for (const line of read('Cargo.toml').split('\n')) {
    if (line.startsWith('[')) inPkg = line.trim() === '[workspace.package]';
    else if (inPkg && /^version\s*=/.test(line)) return JSON.parse(line.split('=')[1].trim());
  }
  throw new Error('no version in [workspace.package]');
}

/** Every YAML document of deploy/kubernetes/, with the file it came from. Parse errors throw. */
export function loadManifests(dir = 'deploy/kubernetes') {
  const docs = [];
  for (const file of readdirSync(join(ROOT, dir)).filter((f) => /\.ya?ml$/.test(f)).sort()) {
    for (const doc of parseAllDocuments(read(join(dir, file)))) {
      if (doc.errors.length) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`);
      if (doc.warnings.length) throw new Error(`${file}: ${doc.warnings.map((e) => e.message).join('; ')}`);
      const value = doc.toJS();
      if (value !== null) docs.push({ file, value });
    }
  }
  return docs;
}
