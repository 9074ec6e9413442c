// The plexus dashboard: plain JS against the admin API. The token comes from the URL that
// `plexus serve --dashboard` prints (?token=...) and goes with every API call.
'use strict';
const token = new URLSearchParams(location.search).get('token') || '';
const $ = (id) => document.getElementById(id);
const api = (path, options = {}) => fetch(path, {
  ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${token}` },
});
const withToken = (path) => `${path}${path.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
let previous = null;   // last overview, for rates
let chosenApp = null;
let consoleSource = null;
let logSource = null;

function cell(text) { const td = document.createElement('td'); td.textContent = String(text); return td; }
function row(values) { const tr = document.createElement('tr'); values.forEach((v) => tr.appendChild(cell(v))); return tr; }
/// Puts `rows` in `table`'s body, or one row saying `empty` across every column when there are none.
function fill(table, rows, empty) {
  if (!rows.length) {
    const td = cell(empty);
    td.colSpan = table.tHead.rows[0].cells.length;
    const tr = document.createElement('tr');
    tr.className = 'empty';
    tr.appendChild(td);
    rows = [tr];
  }
  table.tBodies[0].replaceChildren(...rows);
}
function append(list, node, max = 500) {
  list.appendChild(node);
  while (list.children.length > max) list.removeChild(list.firstChild);
  list.scrollTop = list.scrollHeight;
}

async function refresh() {
  try {
    const response = await api('/api/overview');
    if (!response.ok) { $('status').textContent = `admin API: HTTP ${response.status} (is the token right?)`; return; }
    const now = await response.json();
    const at = performance.now();
    fill($('apps'), now.apps.map((app) => {
      const before = previous && previous.data.apps.find((a) => a.id === app.id);
      const seconds = previous ? (at - previous.at) / 1000 : 0;
      const rate = (field) => (before && seconds > 0 ? ((app[field] - before[field]) / seconds).toFixed(1) : '–');
      const tr = row([app.id, app.key, app.connections, app.channels, app.subscriptions,
        rate('events_published_total'), rate('messages_delivered_total')]);
      tr.dataset.app = app.id;
      return tr;
    }), 'no apps configured');
    previous = { data: now, at };
    const select = $('app-select');
    if (select.options.length !== now.apps.length) {
      select.replaceChildren(...now.apps.map((a) => new Option(a.id, a.id)));
      if (!chosenApp && now.apps.length) { chosenApp = now.apps[0].id; watch(); }
      select.value = chosenApp;
    }
    $('status').textContent = now.shutting_down ? 'server is shutting down' : `live · ${new Date().toLocaleTimeString()}`;
    if (chosenApp) await Promise.all([refreshChannels(), refreshWebhooks()]);
  } catch (error) {
    $('status').textContent = `cannot reach the admin API: ${error}`;
  }
}

async function refreshChannels() {
  const response = await api(`/api/apps/${encodeURIComponent(chosenApp)}/channels`);
  if (!response.ok) return;
  const { channels } = await response.json();
  fill($('channels'), channels.map((c) =>
    row([c.name, c.subscription_count, c.members ? `${c.user_count}: ${c.members.join(', ')}` : '—'])),
  'no occupied channels yet: they appear here as clients subscribe');
}

// What is wired does not change while the server runs: read once.
async function showWiring() {
  const response = await api('/api/info');
  if (!response.ok) return;
  const info = await response.json();
  const tags = (list) => (list.length ? list.join(', ') : '—');
  fill($('typed'), info.typed_channels.map((c) => row([c.channel, tags(c.tags), c.auth,
    c.actions.map((a) => `${a.name}(${a.input}) → ${a.output} ${a.auth}${a.permissions.length ? ` [${a.permissions.join('|')}]` : ''}`)
      .concat(c.proxied.map((p) => `forwarded for ${p.app_id} to ${p.url}`)).join('; ') || '—'])),
  'no typed channels wired ([[action_proxy]] in the config, or install_channels when embedding)');
  fill($('bridges'), info.bridges.map((b) => row([b.subject, b.app, b.channel, b.event, tags(b.tags)])),
    'no NATS bridges ([[bridges]] in the config)');
}

// Charts: hand-drawn SVG (a polyline per series over the server's samples), small enough that
// a charting library would be most of the page's weight.
const SVG = 'http://www.w3.org/2000/svg';
const COLOURS = ['#0a58ca', '#b42318', '#1a7f37', '#9a6700', '#8250df', '#57606a'];
const CHARTS = [
  { id: 'connections', title: 'Connections', field: 'connections', whole: true },
  { id: 'subscriptions', title: 'Subscriptions', field: 'subscriptions', whole: true },
  { id: 'events', title: 'Events published /s', field: 'events_per_sec' },
  { id: 'messages', title: 'Messages delivered /s', field: 'messages_per_sec' },
];
function svg(name, attributes, text) {
  const node = document.createElementNS(SVG, name);
  Object.entries(attributes).forEach(([k, v]) => node.setAttribute(k, String(v)));
  if (text !== undefined) node.textContent = text;
  return node;
}
function shown(value, whole) { return value == null ? '–' : (whole ? String(value) : value.toFixed(1)); }
/// The series of one chart: this node's figure, and in a cluster the cluster's total and each
/// peer's (as that peer last reported it; a gap while it had not).
function seriesOf(chart, stats) {
  const own = stats.node ? `this node (${stats.node})` : 'this server';
  const series = [{ label: own, values: stats.samples.map((s) => s[chart.field]) }];
  if (stats.node) {
    const peers = [...new Set(stats.samples.flatMap((s) => Object.keys(s.peers ?? {})))].sort();
    peers.forEach((id) => series.push({ label: `node ${id}`, values: stats.samples.map((s) => s.peers?.[id]?.[chart.field] ?? null) }));
    series.unshift({ label: 'cluster total', values: stats.samples.map((s) => s[`cluster_${chart.field}`]) });
  }
  return series;
}
function drawChart(chart, stats) {
  const [W, H, left, top, bottom] = [320, 110, 30, 8, 16];
  const span = stats.capacity * stats.interval_ms;
  const end = stats.samples.length ? stats.samples[stats.samples.length - 1].at_ms : 0;
  const series = seriesOf(chart, stats);
  const numbers = series.flatMap((s) => s.values).filter((v) => v != null);
  const max = Math.max(chart.whole ? 1 : 0.1, ...numbers);
  const x = (at) => left + ((at - (end - span)) / span) * (W - left - 4);
  const y = (v) => top + (1 - v / max) * (H - top - bottom);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img' });
  root.append(svg('line', { class: 'grid', x1: left, x2: W - 4, y1: y(0), y2: y(0) }),
    svg('line', { class: 'grid', x1: left, x2: W - 4, y1: y(max), y2: y(max) }),
    svg('text', { x: left - 3, y: y(max) + 3, 'text-anchor': 'end' }, shown(max, chart.whole)),
    svg('text', { x: left - 3, y: y(0) + 3, 'text-anchor': 'end' }, '0'),
    svg('text', { x: left, y: H - 3 }, '−15 min'),
    svg('text', { x: W - 4, y: H - 3, 'text-anchor': 'end' }, 'now'));
  series.forEach((s, i) => {
    // A gap (no rate for an app's first sample) breaks the line rather than drawing it as 0.
    let points = [];
    const flush = () => {
      if (points.length) root.append(svg('polyline', { points: points.join(' '), stroke: COLOURS[i % COLOURS.length] }));
      points = [];
    };
    s.values.forEach((v, k) => (v == null ? flush() : points.push(`${x(stats.samples[k].at_ms).toFixed(1)},${y(v).toFixed(1)}`)));
    const latest = points[points.length - 1];
    flush();
    // The latest value as a dot, so a series of one sample (a fresh server) is visible too.
    if (latest) {
      const [cx, cy] = latest.split(',');
      root.append(svg('circle', { cx, cy, r: 2.2, fill: COLOURS[i % COLOURS.length] }));
    }
  });
  const last = series[0].values[series[0].values.length - 1];
  const peak = numbers.length ? Math.max(...numbers) : null;
  root.setAttribute('aria-label', `${chart.title}, last 15 minutes: now ${shown(last, chart.whole)}, peak ${shown(peak, chart.whole)}`);
  const figure = document.createElement('figure');
  figure.id = `chart-${chart.id}`;
  figure.dataset.last = last == null ? '' : String(last);
  figure.dataset.samples = String(stats.samples.length);
  figure.dataset.peak = peak == null ? '' : String(peak);
  const caption = document.createElement('figcaption');
  const now = document.createElement('span');
  now.className = 'now';
  now.textContent = shown(last, chart.whole);
  caption.append(chart.title, now);
  figure.append(caption, root);
  if (series.length > 1 || stats.node) {
    const legend = document.createElement('ul');
    legend.className = 'legend';
    series.forEach((s, i) => {
      const li = document.createElement('li');
      li.style.setProperty('--swatch', COLOURS[i % COLOURS.length]);
      li.textContent = s.label;
      legend.append(li);
    });
    figure.append(legend);
  }
  return figure;
}
async function refreshCharts() {
  if (!chosenApp) return;
  const response = await api(`/api/apps/${encodeURIComponent(chosenApp)}/stats`);
  if (!response.ok) return;
  const stats = await response.json();
  if (stats.app_id !== chosenApp) return;
  $('charts').replaceChildren(...CHARTS.map((chart) => drawChart(chart, stats)));
  $('charts-heading').textContent = `Activity of ${stats.app_id}, last 15 minutes`;
  $('charts-note').textContent = stats.node
    ? `node ${stats.node}: every figure per node and for the whole cluster (peers' as they last reported them); sampled every ${stats.interval_ms / 1000} s`
    : `sampled by the server every ${stats.interval_ms / 1000} s`;
}

// Webhook health per endpoint, with "retry now" for an endpoint backing off after a failure.
function ago(ms) { return ms == null ? '—' : (ms < 60000 ? `${Math.round(ms / 1000)} s` : `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`); }
function stateText(e) {
  if (e.state === 'backing_off') return `backing off (next try in ${ago(Math.max(0, e.retry_at_ms - Date.now()))})`;
  return e.state;
}
async function refreshWebhooks() {
  const response = await api(`/api/apps/${encodeURIComponent(chosenApp)}/webhooks`);
  if (!response.ok) return;
  const { endpoints } = await response.json();
  fill($('webhooks'), endpoints.map((e) => {
    const status = e.last_status != null ? String(e.last_status) : (e.last_outcome && e.last_outcome.startsWith('failed') ? 'no answer' : '—');
    const tr = row([e.endpoint ?? '(removed)', e.url, stateText(e), e.queued_requests, ago(e.oldest_pending_age_ms), status, e.delivered, e.failures, e.retries]);
    tr.dataset.endpoint = e.endpoint ?? '';
    tr.dataset.state = e.state;
    const td = document.createElement('td');
    const button = document.createElement('button');
    button.type = 'button';
    button.textContent = 'Retry now';
    button.disabled = e.state !== 'backing_off';
    button.setAttribute('aria-label', `Retry endpoint ${e.endpoint ?? e.url} now`);
    button.addEventListener('click', () => retryWebhook(e.endpoint));
    td.append(button);
    tr.append(td);
    return tr;
  }), 'no webhook endpoints for this app ([[apps.webhooks]] in the config)');
  const failures = endpoints.flatMap((e) => e.recent_failures.map((f) => ({ ...f, endpoint: e.endpoint })))
    .sort((a, b) => b.at_ms - a.at_ms);
  $('webhook-failures').replaceChildren(...(failures.length ? failures.map((f) => {
    const li = document.createElement('li');
    li.textContent = `${new Date(f.at_ms).toLocaleTimeString()} endpoint ${f.endpoint ?? '(removed)'} attempt ${f.attempt}: ${f.reason}`;
    return li;
  }) : [Object.assign(document.createElement('li'), { className: 'empty', textContent: 'no failures since start' })]));
}
async function retryWebhook(endpoint) {
  const body = endpoint == null ? '{}' : JSON.stringify({ endpoint });
  const response = await api(`/api/apps/${encodeURIComponent(chosenApp)}/webhooks/retry`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body,
  });
  const answer = await response.json().catch(() => ({}));
  $('webhook-result').textContent = !response.ok ? `refused (HTTP ${response.status}): ${answer.error || ''}`
    : (answer.woken ? 'retrying now' : 'not backing off: nothing to retry');
  refreshWebhooks();
}

function describe(o) {
  const d = o.detail || {};
  switch (o.kind) {
    case 'event': case 'client_event': return `${d.event} ${typeof d.data === 'string' ? d.data : JSON.stringify(d.data)}`;
    case 'subscribed': case 'unsubscribed': return `socket ${d.socket_id}${d.user_id ? ` user ${d.user_id}` : ''}`;
    case 'member_added': case 'member_removed': return `user ${d.user_id}${d.node ? ` (on node ${d.node})` : ''}`;
    case 'webhook': return `${d.event && d.event.name} → ${d.url}: ${d.outcome} (attempt ${d.attempt})`;
    default: return JSON.stringify(d);
  }
}

function watch() {
  if (consoleSource) consoleSource.close();
  if (!chosenApp) return;
  const channel = $('watch-channel').value.trim();
  const path = `/api/apps/${encodeURIComponent(chosenApp)}/observe${channel ? `?channel=${encodeURIComponent(channel)}` : ''}`;
  consoleSource = new EventSource(withToken(path));
  consoleSource.addEventListener('observation', (message) => {
    const o = JSON.parse(message.data);
    const li = document.createElement('li');
    const kind = document.createElement('span');
    kind.className = 'kind';
    kind.textContent = o.kind;
    li.append(`${new Date(o.at_ms).toLocaleTimeString()} `, kind, ` ${o.channel} ${describe(o)}`);
    li.dataset.kind = o.kind;
    append($('console'), li);
  });
  consoleSource.addEventListener('missed', (message) => {
    const li = document.createElement('li');
    li.textContent = `(missed ${JSON.parse(message.data).missed} events: this page fell behind)`;
    append($('console'), li);
  });
}

function streamLogs() {
  if (logSource) logSource.close();
  const params = new URLSearchParams({ level: $('log-level').value, target: $('log-target').value.trim() });
  logSource = new EventSource(withToken(`/api/logs?${params}`));
  logSource.addEventListener('log', (message) => {
    const line = JSON.parse(message.data);
    const li = document.createElement('li');
    li.className = `level-${line.level.toLowerCase()}`;
    li.textContent = `${new Date(line.at_ms).toLocaleTimeString()} ${line.level} ${line.target}: ${line.text}`;
    append($('logs'), li);
  });
  logSource.addEventListener('dropped', () => {
    const li = document.createElement('li');
    li.textContent = '(this view fell behind and was dropped; press Stream to resume)';
    append($('logs'), li);
    logSource.close();
  });
}

$('app-select').addEventListener('change', (e) => {
  chosenApp = e.target.value; $('console').replaceChildren(); watch(); refreshChannels(); refreshWebhooks(); refreshCharts();
});
$('watch-form').addEventListener('submit', (e) => { e.preventDefault(); $('console').replaceChildren(); watch(); });
$('clear-console').addEventListener('click', () => $('console').replaceChildren());
$('logs-form').addEventListener('submit', (e) => { e.preventDefault(); $('logs').replaceChildren(); streamLogs(); });
$('publish-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = $('publish-data').value;
  let data = text;
  try { data = JSON.stringify(JSON.parse(text)); } catch (_) { /* plain text is sent as is */ }
  const body = JSON.stringify({ name: $('publish-event').value, channel: $('publish-channel').value, data });
  const response = await api(`/api/apps/${encodeURIComponent(chosenApp)}/events`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body,
  });
  const answer = await response.json().catch(() => ({}));
  $('publish-result').textContent = response.ok ? 'published' : `refused (HTTP ${response.status}): ${answer.error || ''}`;
});

streamLogs();
showWiring();
refresh().then(refreshCharts);
setInterval(refresh, 1000);
setInterval(refreshCharts, 2000);
