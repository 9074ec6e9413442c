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
    if (chosenApp) await refreshChannels();
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

$('app-select').addEventListener('change', (e) => { chosenApp = e.target.value; $('console').replaceChildren(); watch(); refreshChannels(); });
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
refresh();
setInterval(refresh, 1000);
