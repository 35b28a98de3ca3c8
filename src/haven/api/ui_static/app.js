// The dashboard: state kept in step with the cluster, a hash router, actions as jobs.
//
// State is read through RAPI's read paths; /haven/live says which parts changed, and
// only those are read again (a job by its id, events after the last key seen).

import { Conn } from "./conn.js";
import { Console } from "./console.js";
import * as V from "./views.js";

const $ = (sel) => document.querySelector(sel);

const state = {
  info: {}, nodes: [], instances: [], ha: {}, jobs: new Map(), events: [],
  alarms: null, // null: this cluster's API has no /haven/alarms
  lastEvent: "",
};

const conn = new Conn({
  onChange: (c) => refresh(c.changed, c.jobs),
  onState: (st, text) => { $("#conn").dataset.state = st; $("#conn").textContent = text; },
  onHello: () => {},
  onSwitched: (from, to, why) => {
    const msg = from && to && from !== to
      ? `Now connected to ${to}: ${from} stopped answering (${why}).`
      : `Reconnected to ${to || "the cluster"}.`;
    banner(msg);
    refresh(["*"], []);
  },
  onAuthLost: () => showLogin("Your session has expired; log in again."),
});
const term = new Console(conn, $("#console-panel"));

// -- reading the cluster -------------------------------------------------------------
const GROUPS = {
  nodes: ["nodes", "facts", "alive", "master", "cluster", "ha"],
  instances: ["instances", "observed", "replicas", "ha", "migrations", "alive", "nodes"],
  events: ["events"],
};

async function loadAlarms() {
  try {
    // Active ones first, then the cleared history, last cleared first.
    const a = await conn.get("/haven/alarms?all=1");
    state.alarms = (Array.isArray(a) ? a : (a && a.alarms) || []).slice(0, 300);
  } catch (e) {
    if (e.status === 404 || e.status === 405) state.alarms = null;
  }
}

async function loadEvents(all) {
  const q = all || !state.lastEvent ? "?limit=300" :
    `?after=${encodeURIComponent(state.lastEvent)}`;
  const evs = await conn.get("/haven/events" + q);
  if (all) state.events = [];
  state.events.push(...evs);
  if (state.events.length > 1000) state.events.splice(0, state.events.length - 1000);
  if (evs.length) state.lastEvent = evs[evs.length - 1].key;
}

const refreshing = { running: false, changed: new Set(), jobs: new Set() };

// Reads what changed; a change that arrives meanwhile is read right after.
async function refresh(changed, jobIds) {
  changed.forEach((c) => refreshing.changed.add(c));
  jobIds.forEach((j) => refreshing.jobs.add(j));
  if (refreshing.running) return;
  refreshing.running = true;
  try {
    while (refreshing.changed.size || refreshing.jobs.size) {
      const ch = new Set(refreshing.changed);
      const jobs = [...refreshing.jobs];
      refreshing.changed.clear();
      refreshing.jobs.clear();
      await readChanges(ch, jobs).catch((e) => {
        if (e.status) toast(`Reading the cluster failed: ${e.message}`, true);
      });
      render();
    }
  } finally {
    refreshing.running = false;
  }
}

async function readChanges(ch, jobIds) {
  const all = ch.has("*");
  const any = (group) => all || GROUPS[group].some((c) => ch.has(c));
  const known = new Set(Object.values(GROUPS).flat().concat(["jobs", "locks", "counters"]));
  const work = [];
  // Each answer is drawn as it comes (one frame at most): the slowest read holds none.
  const track = (p) => work.push(p.then(() => render()));
  if (any("nodes")) {
    track(conn.get("/2/nodes?bulk=1").then((n) => { state.nodes = n; conn.setNodes(n); }));
    track(conn.get("/2/info").then((i) => { state.info = i; }));
    track(conn.get("/haven/ha").then((h) => { state.ha = h; }));
  }
  if (any("instances")) {
    track(conn.get("/2/instances?bulk=1").then((i) => { state.instances = i; }));
  }
  if (all) {
    track(conn.get("/2/jobs?bulk=1").then((js) => {
      state.jobs = new Map(js.map((j) => [j.id, j]));
    }));
  } else {
    for (const id of jobIds) {
      track(conn.get(`/2/jobs/${id}`).then((j) => state.jobs.set(j.id, j))
        .catch((e) => { if (e.status === 404) state.jobs.delete(id); }));
    }
  }
  if (any("events")) track(loadEvents(all));
  // Alarms are kept under alarms/; any prefix this page does not know re-reads them too.
  if (all || [...ch].some((c) => c === "alarms" || !known.has(c))) track(loadAlarms());
  await Promise.all(work);
  $("#cluster-name").textContent = state.info.name || "";
}

// -- rendering -------------------------------------------------------------------------
let pending = false;
let lastHtml = "";
function render() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; draw(); });
}

function route() {
  const [, view, arg] = (location.hash || "#/overview").split("/");
  return { view: view || "overview", arg: arg ? decodeURIComponent(arg) : "" };
}

function draw() {
  const { view, arg } = route();
  const w = conn.canWrite;
  const html = {
    overview: () => V.overview(state),
    nodes: () => V.nodesView(state, w),
    instances: () => V.instancesView(state),
    instance: () => V.instanceView(state, arg, w),
    jobs: () => V.jobsView(state),
    job: () => V.jobView(state, Number(arg), w),
    events: () => V.eventsView(state),
    alarms: () => V.alarmsView(state, w),
  }[view] || (() => V.overview(state));
  // Unchanged views are left alone: a button is not replaced under a person's click.
  const out = html();
  if (out !== lastHtml) $("#view").innerHTML = out;
  lastHtml = out;
  if (state.instances.length && !performance.getEntriesByName("haven-painted").length) {
    performance.mark("haven-painted"); // the first draw with data (bench/ui_paint.py)
  }
  const navView = { instance: "instances", job: "jobs" }[view] || view;
  document.querySelectorAll("#nav a").forEach((a) =>
    a.classList.toggle("active", a.dataset.view === navView));
  const busy = [...state.jobs.values()].filter((j) =>
    ["queued", "waiting", "running"].includes(j.status)).length;
  $("#nav-jobs").textContent = busy ? String(busy) : "";
  const alarms = V.activeAlarms(state).length;
  $("#nav-alarms").textContent = alarms ? String(alarms) : "";
  const inst = view === "instance" ? state.instances.find((i) => i.name === arg) : null;
  term.show(inst ? inst.name : null, inst ? inst.status === "running" : false);
}

window.addEventListener("hashchange", () => { $("main").scrollTop = 0; render(); });

// -- messages ------------------------------------------------------------------------
function toast(text, bad = false) {
  const t = document.createElement("div");
  t.className = "toast" + (bad ? " bad" : "");
  t.textContent = text;
  $("#toasts").append(t);
  setTimeout(() => t.remove(), bad ? 8000 : 5000);
}

let bannerTimer = 0;
function banner(text) {
  const b = $("#banner");
  b.textContent = text;
  b.hidden = false;
  clearTimeout(bannerTimer);
  bannerTimer = setTimeout(() => { b.hidden = true; }, 30000);
}

// -- actions -------------------------------------------------------------------------
function confirmDialog(title, text, extra = "") {
  const dlg = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-extra").innerHTML = extra;
  dlg.returnValue = "";
  dlg.showModal();
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok" ? dlg : null),
      { once: true });
  });
}

function targetPicker(inst) {
  const nodes = state.nodes.filter((n) => n.name !== inst.pnode && n.alive && !n.offline &&
    !n.drained && n.vm_capable);
  if (inst.disk_template === "drbd" || !nodes.length) return "";
  return `<label>Target node <select id="confirm-target"><option value="">automatic</option>
    ${nodes.map((n) => `<option>${V.esc(n.name)}</option>`).join("")}</select></label>`;
}

const INSTANCE_ACTIONS = {
  startup: ["Start", (i) => `Start ${i.name} on ${i.pnode}?`,
    (i) => ["PUT", `/2/instances/${i.name}/startup`]],
  shutdown: ["Shut down", (i) => `Shut ${i.name} down? Its guest is asked to power off.`,
    (i) => ["PUT", `/2/instances/${i.name}/shutdown`, {}]],
  reboot: ["Reboot", (i) => `Reboot ${i.name}?`,
    (i) => ["POST", `/2/instances/${i.name}/reboot`]],
  migrate: ["Migrate", (i) => `Live-migrate ${i.name} away from ${i.pnode}` +
    (i.snodes.length ? ` to ${i.snodes[0]}?` : "?"),
    (i, dlg) => ["PUT", `/2/instances/${i.name}/migrate`, target(dlg)]],
  failover: ["Fail over", (i) => `Fail ${i.name} over: it is stopped on ${i.pnode} and ` +
    `started on ${i.snodes[0] || "another node"}.`,
    (i, dlg) => ["PUT", `/2/instances/${i.name}/failover`, target(dlg)]],
};

function target(dlg) {
  const sel = dlg.querySelector("#confirm-target");
  return sel && sel.value ? { target_node: sel.value } : {};
}

async function submit(method, path, body, what) {
  try {
    const id = await conn.call(method, path, body);
    toast(`Task ${id} queued: ${what}.`);
    refresh([], [id]);
    return id;
  } catch (e) {
    toast(`${what}: ${e.message}`, true);
    return null;
  }
}

async function instanceAction(act, name) {
  const inst = state.instances.find((i) => i.name === name);
  if (!inst) return;
  const [title, text, req] = INSTANCE_ACTIONS[act];
  const movable = act === "migrate" || act === "failover";
  const dlg = await confirmDialog(`${title} ${name}`, text(inst),
    movable ? targetPicker(inst) : "");
  if (!dlg) return;
  const [method, path, body] = req(inst, dlg);
  await submit(method, path, body, `${title.toLowerCase()} ${name}`);
}

async function nodeAction(act, node) {
  if (act === "drain" || act === "undrain") {
    const on = act === "drain";
    if (!await confirmDialog(`${on ? "Drain" : "Undrain"} ${node}`, on
      ? `No new instance will be placed on ${node}. Instances already there keep running.`
      : `${node} takes new instances again.`)) return;
    await submit("POST", `/2/nodes/${node}/modify`, { drained: on }, `${act} ${node}`);
    return;
  }
  const running = state.instances.filter((i) => i.pnode === node && i.status === "running");
  if (!await confirmDialog(`Migrate everything off ${node}`, running.length
    ? `Live-migrate ${running.map((i) => i.name).join(", ")} away from ${node}?`
    : `No running instance has ${node} as its primary.`)) return;
  // One job (OP_NODE_MIGRATE) that queues a migration per instance.
  await submit("POST", `/2/nodes/${node}/migrate`, {}, `migrate everything off ${node}`);
}

document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button[data-act]");
  if (!b || b.disabled) return;
  const act = b.dataset.act;
  if (INSTANCE_ACTIONS[act]) await instanceAction(act, b.dataset.instance);
  else if (["drain", "undrain", "evacuate"].includes(act)) await nodeAction(act, b.dataset.node);
  else if (act === "cancel-job") {
    await submit("DELETE", `/2/jobs/${b.dataset.job}`, undefined, `cancel task ${b.dataset.job}`);
  } else if (act === "ack") {
    try {
      await conn.call("POST", `/haven/alarms/${encodeURIComponent(b.dataset.alarm)}/ack`, {});
      await loadAlarms();
      render();
    } catch (e) {
      toast(`Acknowledge: ${e.message}`, true);
    }
  }
});

// -- login ---------------------------------------------------------------------------
function showLogin(message) {
  conn.logout();
  $("#login").hidden = false;
  $("#login-error").hidden = !message;
  $("#login-error").textContent = message || "";
  $("#who").textContent = "";
  $("#logout").hidden = true;
  $("#login-user").focus();
}

function loggedIn() {
  $("#login").hidden = true;
  const s = conn.session;
  $("#who").textContent = `${s.user}${s.write ? "" : " (read-only)"}`;
  $("#logout").hidden = false;
  refresh(["*"], []);
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    await conn.login($("#login-user").value, $("#login-password").value);
    $("#login-password").value = "";
    loggedIn();
  } catch (e) {
    $("#login-error").hidden = false;
    $("#login-error").textContent = e.message;
  }
});
$("#logout").addEventListener("click", () => { term.disconnect(); showLogin(""); });

// -- start ---------------------------------------------------------------------------
async function start() {
  conn.connect();
  await refresh(["*"], []);
  if (await conn.checkSession()) loggedIn();
  else showLogin("");
  window.havenReady = true; // for tests and the paint benchmark
}

start();
