// What must hold between the Dockerfile, the Kubernetes manifests and the Debian package. Each
// check returns a list of problems (empty = fine), so a test can also feed it a broken copy and
// see it complain.
import { loadManifests, parseDockerfile, parseFlatToml, read, runtimeOf, workspaceVersion } from './lib.js';

/** Everything the checks look at, read from the working tree. */
export function context() {
  return {
    dockerfile: parseDockerfile(read('Dockerfile')),
    manifests: loadManifests(),
    config: parseFlatToml(read('packaging/deb/plexus.toml')),
    version: workspaceVersion(),
    packageTest: read('scripts/package-test.sh'),
    buildScript: read('packaging/deb/build.sh'),
  };
}

const byKind = (ctx, kind) => ctx.manifests.filter((d) => d.value?.kind === kind).map((d) => d.value);

function deploymentContainer(ctx) {
  const deployments = byKind(ctx, 'Deployment');
  if (deployments.length !== 1) throw new Error(`expected one Deployment, found ${deployments.length}`);
  const d = deployments[0];
  const containers = d.spec?.template?.spec?.containers ?? [];
  const c = containers.find((x) => x.name === 'plexus');
  if (!c) throw new Error('the Deployment has no container named plexus');
  return { d, pod: d.spec.template.spec, c };
}

/** The environment the container sees: the image's ENV, then envFrom ConfigMaps, then env. */
function containerEnv(ctx) {
  const { c } = deploymentContainer(ctx);
  const rt = runtimeOf(ctx.dockerfile);
  const env = { ...rt.env };
  for (const from of c.envFrom ?? []) {
    if (from.configMapRef) {
      const cm = byKind(ctx, 'ConfigMap').find((m) => m.metadata?.name === from.configMapRef.name);
      if (!cm) throw new Error(`envFrom names ConfigMap ${from.configMapRef.name}, which is not in the manifests`);
      Object.assign(env, cm.data ?? {});
    } else if (from.secretRef) {
      throw new Error('envFrom secretRef: list the Secret keys explicitly in env instead, so they can be checked');
    }
  }
  for (const e of c.env ?? []) env[e.name] = e.value ?? (e.valueFrom ? `<from ${Object.keys(e.valueFrom)[0]}>` : '');
  return env;
}

/** The port plexus listens on in the container: PLEXUS_PORT > PLEXUS_SERVER__PORT > the file. */
function serverPort(ctx, env) {
  return Number(env.PLEXUS_PORT ?? env.PLEXUS_SERVER__PORT ?? ctx.config['server.port']);
}
function metricsPort(ctx, env) {
  return Number(env.PLEXUS_METRICS_PORT ?? env.PLEXUS_METRICS__PORT ?? ctx.config['metrics.port']);
}

function resolvePort(c, port) {
  if (typeof port === 'number') return port;
  const named = (c.ports ?? []).find((p) => p.name === port);
  return named ? named.containerPort : NaN;
}

export function dockerfileProblems(ctx) {
  const p = [];
  const { stages } = ctx.dockerfile;
  if (stages.length < 2) p.push('the Dockerfile must be multi-stage (a build stage and a runtime stage)');
  const build = stages.slice(0, -1).find((s) => s.instructions.some((i) => i.op === 'RUN' && /(^|\s)packaging\/deb\/build\.sh(\s|$)/.test(i.args)));
  if (!build) p.push('no build stage RUNs packaging/deb/build.sh');
  if (!/packaging\/deb\/build\.sh/.test(ctx.packageTest)) p.push('scripts/package-test.sh does not run packaging/deb/build.sh');
  if (build && !/^rust:/.test(build.from)) p.push(`the build stage is FROM ${build.from}, not a rust image`);
  const rt = runtimeOf(ctx.dockerfile);
  if (/^rust:/.test(rt.stage.from)) p.push('the runtime stage must not be the rust image');
  if (!/\.deb\b/.test(rt.stage.instructions.map((i) => i.args).join('\n'))) p.push('the runtime stage does not install the .deb');
  if (!/^\d+$/.test(rt.user.uid) || !/^\d+$/.test(rt.user.gid ?? '')) p.push(`USER must be numeric uid:gid, is ${rt.user.uid}:${rt.user.gid}`);
  if (Number(rt.user.uid) === 0) p.push('USER is root');
  const env = rt.env;
  const port = serverPort(ctx, env);
  if (!rt.expose.includes(port)) p.push(`EXPOSE ${rt.expose.join(' ')} lacks the server port ${port}`);
  if (!rt.expose.includes(metricsPort(ctx, env))) p.push(`EXPOSE lacks the metrics port ${metricsPort(ctx, env)}`);
  if (env.PLEXUS_CONFIG !== '/etc/plexus/plexus.toml') p.push(`PLEXUS_CONFIG is ${env.PLEXUS_CONFIG}, not the packaged /etc/plexus/plexus.toml`);
  if (!ctx.buildScript.includes('"$pkg/etc/plexus/plexus.toml"')) p.push('build.sh does not install /etc/plexus/plexus.toml');
  if ((env.PLEXUS_METRICS__HOST ?? ctx.config['metrics.host']) === '127.0.0.1') p.push('metrics listen on loopback only in the container: nothing outside can scrape them');
  const hc = rt.healthcheck.join(' ');
  if (!/\/up\b/.test(hc)) p.push(`the HEALTHCHECK does not request /up: ${hc}`);
  if (!hc.includes('${PLEXUS_PORT:-' + ctx.config['server.port'] + '}')) p.push('the HEALTHCHECK does not follow PLEXUS_PORT with the config port as default');
  if (rt.entrypoint[0] !== '/usr/bin/plexus') p.push(`ENTRYPOINT is ${rt.entrypoint[0]}, not the packaged /usr/bin/plexus`);
  if (rt.cmd[0] !== 'serve') p.push('CMD does not run `serve`');
  return p;
}

export function manifestProblems(ctx) {
  const p = [];
  const { d, pod, c } = deploymentContainer(ctx);
  const rt = runtimeOf(ctx.dockerfile);
  const env = containerEnv(ctx);
  const port = serverPort(ctx, env);

  // Probes: readiness on /ready, liveness on /up, both on the port plexus serves.
  const probes = { readinessProbe: '/ready', livenessProbe: '/up' };
  for (const [probe, path] of Object.entries(probes)) {
    const get = c[probe]?.httpGet;
    if (!get) { p.push(`${probe} is not an httpGet probe`); continue; }
    if (get.path !== path) p.push(`${probe} requests ${get.path}, not ${path}`);
    const resolved = resolvePort(c, get.port);
    if (resolved !== port) p.push(`${probe} port ${get.port} resolves to ${resolved}, plexus listens on ${port}`);
    if (get.scheme && get.scheme !== 'HTTP') p.push(`${probe} uses ${get.scheme}; the packaged config has no TLS`);
  }

  // The image and the user agree with the Dockerfile.
  const [image, tag] = String(c.image).split(':');
  if (image !== 'plexus' || tag !== ctx.version) p.push(`image ${c.image} is not plexus:${ctx.version} (docker build -t plexus:${ctx.version} .)`);
  if (c.args && c.args.join(' ') !== rt.cmd.join(' ')) p.push(`args ${c.args.join(' ')} differ from the image's CMD ${rt.cmd.join(' ')}`);
  if (c.command) p.push('command overrides the image ENTRYPOINT');
  const sc = { ...(pod.securityContext ?? {}), ...(c.securityContext ?? {}) };
  if (sc.runAsNonRoot !== true) p.push('runAsNonRoot is not true');
  if (String(sc.runAsUser) !== rt.user.uid) p.push(`runAsUser ${sc.runAsUser} differs from the Dockerfile's USER ${rt.user.uid}`);
  if (String(sc.runAsGroup) !== rt.user.gid) p.push(`runAsGroup ${sc.runAsGroup} differs from the Dockerfile's USER group ${rt.user.gid}`);
  if (c.securityContext?.readOnlyRootFilesystem !== true) p.push('readOnlyRootFilesystem is not true');
  if (c.securityContext?.allowPrivilegeEscalation !== false) p.push('allowPrivilegeEscalation is not false');
  if (!(c.securityContext?.capabilities?.drop ?? []).includes('ALL')) p.push('capabilities are not all dropped');

  // With a read-only root, data_dir must be a mounted volume.
  const dataDir = env.PLEXUS_DATA_DIR ?? ctx.config['webhooks.data_dir'];
  const mount = (c.volumeMounts ?? []).find((m) => m.mountPath === dataDir);
  if (!mount) p.push(`data_dir ${dataDir} is not a mounted volume (the root filesystem is read-only)`);
  else if (mount.readOnly) p.push(`the data_dir volume ${dataDir} is mounted read-only`);
  else if (!(pod.volumes ?? []).some((v) => v.name === mount.name)) p.push(`volume ${mount.name} is mounted but not defined`);

  // Every ${VAR} of the packaged config is set in the container.
  const values = Object.values(ctx.config).filter((v) => typeof v === 'string').join('\n');
  const needed = [...values.matchAll(/(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g)].map((m) => m[1]);
  if (needed.length === 0) p.push('the packaged config names no ${VAR}: where do the credentials come from?');
  for (const name of needed) {
    if (!(name in env)) p.push(`the config needs \${${name}}, which the container's environment does not set`);
  }
  const secret = (c.env ?? []).find((e) => e.name === 'PLEXUS_APP_SECRET');
  if (!secret?.valueFrom?.secretKeyRef) p.push('PLEXUS_APP_SECRET does not come from a Secret');

  const res = c.resources ?? {};
  if (!res.requests?.cpu || !res.requests?.memory) p.push('resources.requests lacks cpu or memory');
  if (!res.limits?.memory) p.push('resources.limits lacks memory');
  const grace = pod.terminationGracePeriodSeconds ?? 30;
  const shutdown = Number(env.PLEXUS_SERVER__SHUTDOWN_GRACE_SECS ?? ctx.config['server.shutdown_grace_secs'] ?? 10);
  if (!(grace > shutdown)) p.push(`terminationGracePeriodSeconds ${grace} is not above shutdown_grace_secs ${shutdown}`);

  // Labels and the Service.
  const labels = d.spec.template.metadata?.labels ?? {};
  const sel = d.spec.selector?.matchLabels ?? {};
  for (const [k, v] of Object.entries(sel)) if (labels[k] !== v) p.push(`the Deployment selector ${k}=${v} does not match its pod labels`);
  const services = byKind(ctx, 'Service');
  if (services.length !== 1) p.push(`expected one Service, found ${services.length}`);
  for (const s of services) {
    for (const [k, v] of Object.entries(s.spec?.selector ?? {})) if (labels[k] !== v) p.push(`the Service selector ${k}=${v} does not match the pod labels`);
    const http = (s.spec?.ports ?? []).find((sp) => resolvePort(c, sp.targetPort ?? sp.port) === port);
    if (!http) p.push(`the Service has no port reaching ${port}`);
  }
  // Kubernetes' service links put <SERVICE>_PORT=tcp://… etc. into every pod: for a Service named
  // plexus that is PLEXUS_PORT, read by plexus as --port.
  for (const s of services) {
    const prefix = String(s.metadata?.name ?? '').toUpperCase().replace(/-/g, '_');
    if ((prefix === 'PLEXUS' || prefix.startsWith('PLEXUS_')) && pod.enableServiceLinks !== false) {
      p.push(`the Service ${s.metadata.name} would inject ${prefix}_PORT=tcp://… into the pod: set enableServiceLinks: false`);
    }
  }
  const ann = d.spec.template.metadata?.annotations ?? {};
  if (ann['prometheus.io/port'] && Number(ann['prometheus.io/port']) !== metricsPort(ctx, env)) {
    p.push(`prometheus.io/port ${ann['prometheus.io/port']} is not the metrics port ${metricsPort(ctx, env)}`);
  }
  if (!(c.ports ?? []).some((cp) => cp.containerPort === metricsPort(ctx, env))) p.push('the metrics port is not a container port');
  return p;
}

export function kustomizationProblems(ctx) {
  const p = [];
  const k = ctx.manifests.filter((d) => d.value?.kind === 'Kustomization');
  if (k.length !== 1) return [`expected one Kustomization, found ${k.length}`];
  const listed = [...(k[0].value.resources ?? [])].sort();
  const files = [...new Set(ctx.manifests.map((d) => d.file))].filter((f) => f !== k[0].file).sort();
  if (JSON.stringify(listed) !== JSON.stringify(files)) p.push(`kustomization resources ${listed} differ from the manifest files ${files}`);
  return p;
}
