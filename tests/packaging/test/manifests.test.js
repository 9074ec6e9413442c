// The Dockerfile and deploy/kubernetes/ agree with the Debian package and with each other:
// probes on /up and /ready at the port plexus serves, the image's user, the config's ${VAR}s
// provided, a writable data_dir under a read-only root. Each check is also fed a broken copy,
// which it must reject, so a check that cannot fail would show here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { context, dockerfileProblems, kustomizationProblems, manifestProblems } from '../checks.js';
import { parseDockerfile, parseEnv, parseFlatToml } from '../lib.js';

const clone = (ctx) => structuredClone(ctx);
const container = (ctx) => ctx.manifests.find((d) => d.value.kind === 'Deployment').value.spec.template.spec.containers[0];

test('every manifest parses as YAML and the kustomization lists them all', () => {
  const ctx = context();
  assert.ok(ctx.manifests.length >= 4, `only ${ctx.manifests.length} documents`);
  assert.deepEqual(kustomizationProblems(ctx), []);
});

test('the Dockerfile builds with the tested script and runs the package as non-root', () => {
  assert.deepEqual(dockerfileProblems(context()), []);
});

test('the Deployment and Service agree with the Dockerfile and the packaged config', () => {
  assert.deepEqual(manifestProblems(context()), []);
});

test('the packaged config holds no credentials, only ${VAR}s', () => {
  const { config } = context();
  for (const field of ['id', 'key', 'secret']) {
    assert.match(String(config[`apps.0.${field}`]), /^\$\{PLEXUS_APP_[A-Z]+\}$/, `apps.0.${field}`);
  }
  assert.equal(config['apps.1.id'], undefined, 'one app');
});

test('a probe on the wrong path or port is caught', () => {
  const ctx = context();
  const swapped = clone(ctx);
  const c = container(swapped);
  [c.readinessProbe.httpGet.path, c.livenessProbe.httpGet.path] = [c.livenessProbe.httpGet.path, c.readinessProbe.httpGet.path];
  const p = manifestProblems(swapped);
  assert.ok(p.some((x) => x.startsWith('readinessProbe requests /up')), p.join('\n'));
  assert.ok(p.some((x) => x.startsWith('livenessProbe requests /ready')), p.join('\n'));

  const moved = clone(ctx);
  container(moved).ports.find((x) => x.name === 'http').containerPort = 8080;
  assert.ok(manifestProblems(moved).some((x) => /readinessProbe port http resolves to 8080/.test(x)));
});

test('a user, image or data_dir that disagrees with the Dockerfile is caught', () => {
  const ctx = context();
  const other = clone(ctx);
  other.manifests.find((d) => d.value.kind === 'Deployment').value.spec.template.spec.securityContext.runAsUser = 1000;
  assert.ok(manifestProblems(other).some((x) => /runAsUser 1000 differs/.test(x)));

  const stale = clone(ctx);
  container(stale).image = 'plexus:0.0.1';
  assert.ok(manifestProblems(stale).some((x) => /image plexus:0\.0\.1/.test(x)));

  const unmounted = clone(ctx);
  container(unmounted).volumeMounts = [];
  assert.ok(manifestProblems(unmounted).some((x) => /not a mounted volume/.test(x)));

  const noSecret = clone(ctx);
  container(noSecret).env = [];
  assert.ok(manifestProblems(noSecret).some((x) => /\$\{PLEXUS_APP_SECRET\}/.test(x)));
});

test('service links that would set PLEXUS_PORT=tcp://… are caught', () => {
  const linked = clone(context());
  delete linked.manifests.find((d) => d.value.kind === 'Deployment').value.spec.template.spec.enableServiceLinks;
  assert.ok(manifestProblems(linked).some((x) => /enableServiceLinks: false/.test(x)));
});

test('a Dockerfile that runs as root, probes elsewhere or builds differently is caught', () => {
  const base = context();
  const text = (s) => ({ ...base, dockerfile: parseDockerfile(s) });
  const root = clone(base);
  root.dockerfile.stages.at(-1).instructions.find((i) => i.op === 'USER').args = '0:0';
  assert.ok(dockerfileProblems(root).includes('USER is root'));

  const health = clone(base);
  const hc = health.dockerfile.stages.at(-1).instructions.find((i) => i.op === 'HEALTHCHECK');
  hc.args = hc.args.replace('/up', '/ready');
  assert.ok(dockerfileProblems(health).some((x) => /does not request \/up/.test(x)));

  const single = text('FROM debian:bookworm-slim\nUSER 1:1\nEXPOSE 6001 9601\nHEALTHCHECK CMD ["true"]\nENTRYPOINT ["/usr/bin/plexus"]\nCMD ["serve"]\n');
  const p = dockerfileProblems(single);
  assert.ok(p.includes('the Dockerfile must be multi-stage (a build stage and a runtime stage)'), p.join('\n'));
  assert.ok(p.includes('no build stage RUNs packaging/deb/build.sh'), p.join('\n'));
});

test('the readers refuse what they do not understand', () => {
  assert.throws(() => parseFlatToml('[server]\nport = [1, 2]\n'), /not understood/);
  assert.throws(() => parseDockerfile('RUN true\n'), /before the first FROM/);
  assert.throws(() => parseEnv('PLEXUS_PORT 6001'), /KEY=VALUE/);
});
