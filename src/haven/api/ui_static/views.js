// The dashboard's views: pure functions from the page's state to HTML.

export const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({
  "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
})[c]);

const badge = (text, cls = "") => `<span class="badge ${cls}">${esc(text)}</span>`;

export function fmtTime(t) {
  if (t == null) return "";
  const secs = Array.isArray(t) ? t[0] + t[1] / 1e6 : Number(t);
  if (!secs) return "";
  const d = new Date(secs * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

const ts = (t) => (Array.isArray(t) ? t[0] + t[1] / 1e6 : Number(t || 0));

function fmtDuration(secs) {
  if (!(secs >= 0)) return "";
  if (secs < 60) return `${secs.toFixed(1)} s`;
  return `${Math.floor(secs / 60)} min ${Math.round(secs % 60)} s`;
}

const mib = (m) => (m >= 1024 ? `${(m / 1024).toFixed(1)} GiB` : `${m} MiB`);

function bar(used, total, label) {
  if (!total) return '<span class="muted">—</span>';
  const pct = Math.max(0, Math.min(100, (100 * used) / total));
  return `<span class="bar ${pct > 85 ? "hot" : ""}"><span style="width:${pct.toFixed(0)}%">` +
    `</span></span><span class="bar-label">${esc(label)}</span>`;
}

// -- status vocabulary ---------------------------------------------------------------
export function instanceBadge(status) {
  const cls = status === "running" ? "ok" : status === "ADMIN_down" ? "" :
    status === "USER_down" ? "warn" : String(status).startsWith("ERROR") ? "bad" : "";
  const text = { running: "running", ADMIN_down: "stopped", ADMIN_offline: "offline",
    USER_down: "down (by guest)" }[status] || status;
  return `<span class="badge ${cls}" data-status="${esc(status)}">${esc(text)}</span>`;
}

// A node's health: what a person should know first.
export function nodeHealth(n, ha) {
  const st = (ha && ha.state) || "";
  if (n.offline) return ["offline", ""];
  if (st === "fenced") return ["fenced", "bad"];
  if (!n.alive) return ["unreachable", "bad"];
  if (st === "recovering") return ["recovering", "warn"];
  if (n.drained) return ["drained", "warn"];
  return ["online", "ok"];
}

export function quorum(nodes) {
  const members = nodes.filter((n) => n.etcd_member_id);
  const up = members.filter((n) => n.alive && !n.offline).length;
  const ok = up * 2 > members.length;
  return { up, total: members.length, ok, atRisk: ok && (up - 1) * 2 <= members.length };
}

function replicaHealth(i) {
  if (i.disk_template !== "drbd") return '<span class="muted">—</span>';
  if (!i.degraded || !i.degraded.length) return badge("in sync", "ok");
  const syncing = Object.values(i.replicas || {}).flatMap((d) => Object.values(d))
    .filter((r) => r.percent < 100);
  if (syncing.length) {
    const pct = Math.min(...syncing.map((r) => r.percent));
    return badge(`syncing ${pct.toFixed(0)}%`, "warn");
  }
  return `<span title="${esc(i.degraded.join("; "))}">${badge("degraded", "bad")}</span>`;
}

function haCell(i) {
  if (i.ha !== "on") return '<span class="muted">off</span>';
  const st = i.ha_state;
  if (!st) return badge("protected", "info");
  const cls = st === "recovering" ? "warn" : st === "failed" ? "bad" : "info";
  return `<span title="${esc(i.ha_reason)}">${badge(st, cls)}</span>`;
}

export function jobStatusBadge(s) {
  const cls = { success: "ok", error: "bad", running: "info", waiting: "warn",
    queued: "", canceled: "", canceling: "warn" }[s] ?? "";
  return `<span class="badge ${cls}" data-status="${esc(s)}">${esc(s)}</span>`;
}

const opName = (op) => String(op.OP_ID || "").replace(/^OP_/, "").toLowerCase()
  .replace(/_/g, " ");
const opTarget = (op) => op.instance_name || op.node_name || "";

export function jobTitle(j) {
  const ops = j.ops || [];
  if (!ops.length) return `job ${j.id}`;
  const first = ops[0];
  const more = ops.length > 1 ? ` (+${ops.length - 1})` : "";
  return `${opName(first)} ${opTarget(first)}${more}`;
}

// [done ops, total ops, last log message, percent or null]
function jobProgress(j) {
  const st = j.opstatus || [];
  const done = st.filter((s) => s === "success").length;
  const logs = (j.oplog || []).flat();
  const last = logs.length ? String(logs[logs.length - 1][3] ?? "") : "";
  const m = /(\d+(?:\.\d+)?)\s*%/.exec(last);
  return [done, st.length, last, m ? Number(m[1]) : null];
}

// -- views ---------------------------------------------------------------------------
export function overview(s) {
  const nodes = s.nodes;
  const up = nodes.filter((n) => n.alive && !n.offline).length;
  const running = s.instances.filter((i) => i.status === "running").length;
  const q = quorum(nodes);
  const active = activeAlarms(s);
  const busy = [...s.jobs.values()].filter((j) => ["queued", "waiting", "running"]
    .includes(j.status)).length;
  const card = (label, big, extra = "", id = "") =>
    `<div class="card" ${id ? `id="${id}"` : ""}><div class="label">${label}</div>` +
    `<div class="big">${big}</div>${extra}</div>`;
  return `<h2>Cluster ${esc(s.info.name || "")}</h2>
  <div class="cards">
    ${card("Master", esc(s.info.master || "none"), "", "card-master")}
    ${card("Nodes up", `${up} / ${nodes.length}`, "", "card-nodes")}
    ${card("Quorum", q.total ? badge(q.ok ? (q.atRisk ? "at risk" : "healthy") : "lost",
      q.ok ? (q.atRisk ? "warn" : "ok") : "bad") : badge("external", ""),
      `<div class="muted">${q.up} of ${q.total} etcd members up</div>`, "card-quorum")}
    ${card("Instances running", `${running} / ${s.instances.length}`, "", "card-instances")}
    ${card("Active alarms", s.alarms === null ? '<span class="muted">n/a</span>' :
      String(active.length), "", "card-alarms")}
    ${card("Tasks running", String(busy), "", "card-jobs")}
  </div>
  <h3>Nodes</h3>${nodesTable(s)}
  ${s.alarms && active.length ? `<h3>Active alarms</h3>${alarmsTable(s, active)}` : ""}
  <h3>Recent events</h3>${eventsTable(s.events.slice(-8).reverse())}`;
}

export function nodesTable(s, withActions = false) {
  if (!s.nodes.length) return '<div class="empty">No nodes.</div>';
  const ha = Object.fromEntries((s.ha.nodes || []).map((n) => [n.name, n]));
  const vcpus = {};
  for (const i of s.instances) {
    if (i.status === "running") vcpus[i.pnode] = (vcpus[i.pnode] || 0) + (i.oper_vcpus || 0);
  }
  const rows = s.nodes.map((n) => {
    const [health, cls] = nodeHealth(n, ha[n.name]);
    const used = n.mtotal != null ? n.mtotal - n.mfree : 0;
    const role = n.master ? badge("master", "info") : n.master_candidate ? "candidate" :
      esc(n.role === "R" ? "regular" : n.role);
    const acts = !withActions ? "" : `<td>
      <button data-act="drain" data-node="${esc(n.name)}" ${n.drained || n.offline ? "disabled" : ""}>Drain</button>
      <button data-act="undrain" data-node="${esc(n.name)}" ${n.drained ? "" : "disabled"}>Undrain</button>
      <button data-act="evacuate" data-node="${esc(n.name)}" ${n.pinst_cnt && n.alive ? "" : "disabled"}>Migrate all away</button></td>`;
    return `<tr data-node="${esc(n.name)}">
      <td><b>${esc(n.name)}</b><div class="muted">${esc(n.pip)}</div></td>
      <td data-field="health">${badge(health, cls)}</td>
      <td>${role}</td>
      <td class="meter">${n.mtotal != null ? bar(used, n.mtotal, `${mib(used)} / ${mib(n.mtotal)}`) : '<span class="muted">—</span>'}</td>
      <td class="meter">${n.ctotal ? bar(vcpus[n.name] || 0, n.ctotal, `${vcpus[n.name] || 0} / ${n.ctotal} vCPU`) : '<span class="muted">—</span>'}</td>
      <td class="num">${n.pinst_cnt} / ${n.sinst_cnt}</td>
      <td>${esc((ha[n.name] && ha[n.name].reason) || "")}</td>${acts}</tr>`;
  }).join("");
  return `<table id="nodes-table"><thead><tr><th>Node</th><th>Health</th><th>Role</th>
    <th>Memory</th><th>CPU (allocated)</th><th>Instances (pri / sec)</th><th>HA note</th>
    ${withActions ? "<th>Maintenance</th>" : ""}</tr></thead><tbody>${rows}</tbody></table>`;
}

export function nodesView(s, canWrite) {
  return `<h2>Nodes</h2>${nodesTable(s, canWrite)}
  <p class="muted">Drain: no new instance lands on the node. Migrate all away: every
  running instance whose primary it is moves live to its secondary (or another node).</p>`;
}

export function instancesView(s) {
  if (!s.instances.length) return '<h2>Instances</h2><div class="empty">No instances.</div>';
  const rows = [...s.instances].sort((a, b) => a.name.localeCompare(b.name)).map((i) => `
    <tr data-instance="${esc(i.name)}">
      <td><a href="#/instance/${encodeURIComponent(i.name)}">${esc(i.name)}</a></td>
      <td data-field="status">${instanceBadge(i.status)}</td>
      <td data-field="pnode">${esc(i.pnode)}</td>
      <td>${esc((i.snodes || []).join(", "))}</td>
      <td>${esc(i.disk_template)}</td>
      <td>${replicaHealth(i)}</td>
      <td>${haCell(i)}</td>
      <td class="num">${esc(i.beparams?.memory ?? i.oper_ram ?? "")}</td>
      <td class="num">${esc(i.beparams?.vcpus ?? i.oper_vcpus ?? "")}</td>
    </tr>`).join("");
  return `<h2>Instances</h2><table id="instances-table"><thead><tr><th>Name</th>
    <th>Status</th><th>Primary</th><th>Secondary</th><th>Disks</th><th>Replica</th>
    <th>HA</th><th>Memory (MiB)</th><th>vCPUs</th></tr></thead><tbody>${rows}</tbody></table>`;
}

export function instanceView(s, name, canWrite) {
  const i = s.instances.find((x) => x.name === name);
  if (!i) return `<h2>${esc(name)}</h2><div class="empty">No instance ${esc(name)}.</div>`;
  const up = i.status === "running";
  const movable = ["drbd", "sharedfile", "diskless"].includes(i.disk_template);
  const btn = (act, label, enabled) => `<button data-act="${act}" data-instance="${esc(name)}"
    ${enabled && canWrite ? "" : "disabled"}>${label}</button>`;
  const disks = (i.disks || []).map((d, n) => `disk/${n}: ${mib(d.size)}`).join(", ");
  const reps = Object.entries(i.replicas || {}).map(([node, ds]) => Object.entries(ds)
    .map(([idx, r]) => `<tr><td>${esc(node)}</td><td>disk/${esc(idx)}</td>
      <td>${esc(r.state)}</td><td class="num">${Number(r.percent).toFixed(0)}%</td>
      <td>${esc(r.message)}</td></tr>`).join("")).join("");
  const jobs = [...s.jobs.values()].filter((j) => (j.ops || [])
    .some((op) => op.instance_name === name)).sort((a, b) => b.id - a.id).slice(0, 8);
  const evs = s.events.filter((e) => e.object === `instance/${name}`).slice(-10).reverse();
  return `<h2>${esc(name)} <span id="instance-status">${instanceBadge(i.status)}</span></h2>
  <div class="actions">
    ${btn("startup", "Start", !up)}
    ${btn("shutdown", "Shut down", up || i.admin_up)}
    ${btn("reboot", "Reboot", up)}
    ${btn("migrate", "Migrate", up && movable)}
    ${btn("failover", "Fail over", movable)}
    ${canWrite ? "" : '<span class="muted">read-only user: actions need write access</span>'}
  </div>
  <dl class="kv">
    <dt>Primary node</dt><dd id="instance-pnode">${esc(i.pnode)}</dd>
    <dt>Secondary</dt><dd>${esc((i.snodes || []).join(", ") || "—")}</dd>
    <dt>OS</dt><dd>${esc(i.os)}</dd>
    <dt>Disk template</dt><dd>${esc(i.disk_template)} (${esc(disks)})</dd>
    <dt>Memory / vCPUs</dt><dd>${esc(i.beparams?.memory)} MiB / ${esc(i.beparams?.vcpus)}</dd>
    <dt>Replica</dt><dd>${replicaHealth(i)}</dd>
    <dt>HA</dt><dd>${haCell(i)} ${esc(i.ha_reason || "")}</dd>
    <dt>Observed</dt><dd>${esc(i.observed || "—")}</dd>
  </dl>
  ${reps ? `<h3>Replicas</h3><table><thead><tr><th>Node</th><th>Disk</th><th>State</th>
    <th>Sync</th><th>Note</th></tr></thead><tbody>${reps}</tbody></table>` : ""}
  <h3>Tasks</h3>${jobsTable(jobs)}
  <h3>Events</h3>${eventsTable(evs)}`;
}

export function jobsTable(jobs) {
  if (!jobs.length) return '<div class="empty">No tasks.</div>';
  const rows = jobs.map((j) => {
    const [done, total, last, pct] = jobProgress(j);
    const end = ts(j.end_ts) || Date.now() / 1000;
    const took = j.start_ts ? fmtDuration(end - ts(j.start_ts)) : "";
    const p = pct != null && j.status === "running" ? `<progress class="progress" max="100"
      value="${pct}"></progress> ` : "";
    return `<tr data-job="${j.id}"><td class="num"><a href="#/job/${j.id}">${j.id}</a></td>
      <td>${esc(jobTitle(j))}</td><td data-field="status">${jobStatusBadge(j.status)}</td>
      <td>${p}<span class="muted">${done}/${total}</span> ${esc(last)}</td>
      <td>${fmtTime(j.received_ts)}</td><td class="num">${took}</td></tr>`;
  }).join("");
  return `<table class="jobs"><thead><tr><th>Id</th><th>Task</th><th>Status</th>
    <th>Progress</th><th>Received</th><th>Duration</th></tr></thead>
    <tbody>${rows}</tbody></table>`;
}

export function jobsView(s) {
  const jobs = [...s.jobs.values()].sort((a, b) => b.id - a.id).slice(0, 200);
  return `<h2>Tasks</h2>${jobsTable(jobs)}`;
}

export function jobView(s, id, canWrite) {
  const j = s.jobs.get(id);
  if (!j) return `<h2>Task ${id}</h2><div class="empty">Loading…</div>`;
  const lines = (j.oplog || []).flatMap((log, n) => log.map((e) =>
    `${fmtTime(e[1])}  [op ${n + 1}] ${e[3]}`));
  const ops = (j.ops || []).map((op, n) => `<tr><td>${n + 1}</td><td>${esc(op.OP_ID)}</td>
    <td>${esc(opTarget(op))}</td><td>${jobStatusBadge((j.opstatus || [])[n])}</td>
    <td><code>${esc(JSON.stringify((j.opresult || [])[n] ?? null))}</code></td></tr>`).join("");
  const cancellable = ["queued", "waiting"].includes(j.status) && canWrite;
  return `<h2>Task ${j.id}: ${esc(jobTitle(j))} <span id="job-status">${jobStatusBadge(j.status)}</span></h2>
  <div class="actions"><button data-act="cancel-job" data-job="${j.id}"
    ${cancellable ? "" : "disabled"}>Cancel</button></div>
  <dl class="kv"><dt>Received</dt><dd>${fmtTime(j.received_ts)}</dd>
    <dt>Started</dt><dd>${fmtTime(j.start_ts)}</dd><dt>Ended</dt><dd>${fmtTime(j.end_ts)}</dd>
    <dt>Run by</dt><dd>${esc(j.master || "")}</dd></dl>
  <h3>Opcodes</h3><table><thead><tr><th>#</th><th>Opcode</th><th>Object</th><th>Status</th>
    <th>Result</th></tr></thead><tbody>${ops}</tbody></table>
  <h3>Log</h3><pre class="log" id="job-log">${esc(lines.join("\n")) || "(nothing yet)"}</pre>`;
}

export function eventsTable(evs) {
  if (!evs.length) return '<div class="empty">No events.</div>';
  const sev = { error: "bad", warning: "warn", info: "" };
  return `<table class="events"><thead><tr><th>Time</th><th>Severity</th><th>Event</th>
    <th>Object</th><th>Node</th><th>Message</th></tr></thead><tbody>${evs.map((e) => `
    <tr><td>${fmtTime(e.ts)}</td><td>${badge(e.severity, sev[e.severity] ?? "")}</td>
    <td>${esc(e.kind)}</td><td>${esc(e.object)}</td><td>${esc(e.node)}</td>
    <td>${esc(e.message)}</td></tr>`).join("")}</tbody></table>`;
}

export function eventsView(s) {
  return `<h2>Events</h2>${eventsTable(s.events.slice(-300).reverse())}`;
}

// -- alarms (GET /haven/alarms; shapes read leniently: the API is young) ----------------
const alarmId = (a) => a.id ?? a.key ?? `${a.name || a.kind}:${a.object || a.subject}`;
const alarmCleared = (a) => !!(a.cleared || a.cleared_at || a.state === "cleared");
const alarmAcked = (a) => !!(a.acked || a.acked_at || a.acknowledged || a.ack);

export function activeAlarms(s) {
  return (s.alarms || []).filter((a) => !alarmCleared(a));
}

export function alarmsTable(s, alarms, canWrite = false) {
  if (!alarms.length) return '<div class="empty">No alarms.</div>';
  const sev = { critical: "bad", error: "bad", major: "bad", warning: "warn", minor: "warn" };
  const rows = alarms.map((a) => {
    const cleared = alarmCleared(a);
    const acked = alarmAcked(a);
    const state = cleared ? badge("cleared", "ok") : acked ? badge("acknowledged", "info") :
      badge("active", "bad");
    const ackBy = a.acked_by || a.ack_by || "";
    return `<tr data-alarm="${esc(alarmId(a))}" data-object="${esc(a.object || a.subject || "")}"
      data-state="${cleared ? "cleared" : "active"}">
      <td>${badge(a.severity || "warning", sev[a.severity] ?? "warn")}</td>
      <td class="nowrap">${esc(a.name || a.kind || a.type || "")}</td>
      <td>${esc(a.object || a.subject || "")}</td><td>${esc(a.message || "")}</td>
      <td>${fmtTime(a.raised ?? a.raised_at ?? a.since)}</td>
      <td>${fmtTime(a.cleared ?? a.cleared_at)}</td>
      <td data-field="state">${state} ${esc(ackBy)}</td>
      <td>${!cleared && !acked && canWrite ? `<button data-act="ack"
        data-alarm="${esc(alarmId(a))}">Acknowledge</button>` : ""}</td></tr>`;
  }).join("");
  return `<table id="alarms-table"><thead><tr><th>Severity</th><th>Alarm</th><th>Object</th>
    <th>Message</th><th>Raised</th><th>Cleared</th><th>State</th><th></th></tr></thead>
    <tbody>${rows}</tbody></table>`;
}

export function alarmsView(s, canWrite) {
  if (s.alarms === null) {
    return `<h2>Alarms</h2><div class="empty" id="alarms-missing">This cluster's API has
      no alarms yet (GET /haven/alarms does not answer); node and instance health show on
      the Overview.</div>`;
  }
  const sorted = [...s.alarms].sort((a, b) => Number(alarmCleared(a)) -
    Number(alarmCleared(b)) || ts(b.raised ?? b.raised_at) - ts(a.raised ?? a.raised_at));
  return `<h2>Alarms</h2>${alarmsTable(s, sorted, canWrite)}`;
}
