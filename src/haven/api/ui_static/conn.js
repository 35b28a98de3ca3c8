// The page's link to the cluster: which node it talks to, its session token, RAPI
// calls, and the live change stream (/haven/live, Server-Sent Events).
//
// Any node serves the same API, so when the current node stops answering (the stream
// breaks or goes quiet) the page probes the other nodes it knows of (from
// /2/nodes?bulk=1) and carries on with the first that answers, and says so.

const SESSION_KEY = "haven.session";
const QUIET_LIMIT = 16000; // ms without a ping before the node counts as gone
const PROBE_TIMEOUT = 2500;

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export class Conn {
  constructor(handlers) {
    // handlers: onChange(changes), onState(state, text), onHello(node), onAuthLost()
    this.h = handlers;
    this.base = "";  // "" = the node that served the page
    this.node = "";  // its name, once the stream said hello
    this.origin = ""; // the node the page was loaded from
    this.endpoints = []; // [{name, url}] from /2/nodes?bulk=1
    this.session = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    this.es = null;
    this.lastSeen = 0;
    this.failing = false;
    setInterval(() => this.watchdog(), 1000);
  }

  // -- session -------------------------------------------------------------------
  async login(user, password) {
    const s = await this.call("POST", "/haven/session", { user, password }, false);
    this.session = s;
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
    return s;
  }

  async checkSession() {
    if (!this.session) return false;
    try {
      await this.call("GET", "/haven/session");
      return true;
    } catch (e) {
      if (e.status === 401) { this.logout(); return false; }
      return true; // another problem (node gone): keep the session
    }
  }

  logout() {
    this.session = null;
    sessionStorage.removeItem(SESSION_KEY);
  }

  get canWrite() { return !!(this.session && this.session.write); }

  // -- calls ---------------------------------------------------------------------
  async call(method, path, body, auth = true) {
    const headers = {};
    if (auth && this.session) headers.Authorization = "Bearer " + this.session.token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(this.base + path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      this.failover(`${this.node || "the node"} does not answer`);
      throw new ApiError(0, { message: `No answer from ${this.node || "the node"}; ` +
                                       "reconnecting to another node." });
    }
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = { message: text }; }
    if (!resp.ok) {
      if (resp.status === 401 && auth && this.session) this.h.onAuthLost();
      throw new ApiError(resp.status, data);
    }
    return data;
  }

  get(path) { return this.call("GET", path); }

  // -- nodes to fall back on -----------------------------------------------------
  setNodes(nodes) {
    const proto = location.protocol;
    const port = location.port;
    this.endpoints = nodes.filter((n) => n.pip).map((n) => ({
      name: n.name, url: `${proto}//${n.pip}:${n.api_port || port}`,
    }));
  }

  urlFor(path) {
    const base = this.base || location.origin;
    return base + path;
  }

  // -- the live stream -------------------------------------------------------------
  connect() {
    if (this.es) this.es.close();
    this.lastSeen = Date.now();
    const es = new EventSource(this.urlFor("/haven/live"));
    this.es = es;
    es.addEventListener("hello", (ev) => {
      const hello = JSON.parse(ev.data);
      this.lastSeen = Date.now();
      if (!hello.joined) {
        this.failover(`${hello.node} is not part of the cluster right now`);
        return;
      }
      this.node = hello.node;
      if (!this.origin) this.origin = hello.node;
      this.h.onState("live", `live · ${hello.node}`);
      this.h.onHello(hello.node);
    });
    es.addEventListener("ping", () => { this.lastSeen = Date.now(); });
    es.addEventListener("bye", (ev) => {
      es.close();
      if (JSON.parse(ev.data).reason === "renew") this.connect();
      else this.failover(`${this.node} is leaving the cluster or stopping`);
    });
    es.addEventListener("change", (ev) => {
      this.lastSeen = Date.now();
      this.h.onChange(JSON.parse(ev.data));
    });
    es.onerror = () => {
      if (this.es !== es) return;
      // EventSource reconnects by itself after a server-side end; a node that
      // is gone makes it fail again at once: probe all nodes ourselves.
      es.close();
      this.failover(`lost the live stream from ${this.node || "the node"}`);
    };
  }

  watchdog() {
    if (this.es && !this.failing && Date.now() - this.lastSeen > QUIET_LIMIT) {
      this.es.close();
      this.failover(`${this.node} went quiet`);
    }
  }

  async probe(url) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), PROBE_TIMEOUT);
    try {
      const r = await fetch(url + "/haven/status", { signal: ctl.signal });
      if (!r.ok) return false;
      const st = await r.json();
      return !!st.cluster && st.lease_valid !== false;
    } catch (e) {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  // Finds a node that answers, the current one last, and reconnects the stream to it.
  async failover(why) {
    if (this.failing) return;
    this.failing = true;
    if (this.es) { this.es.close(); this.es = null; }
    const lost = this.node;
    this.h.onState("reconnecting", `reconnecting (${why})`);
    for (let round = 0; ; round++) {
      const others = this.endpoints.filter((e) => e.name !== lost);
      const current = this.endpoints.filter((e) => e.name === lost);
      const order = [...others, ...current];
      if (!order.length) order.push({ name: "", url: location.origin });
      for (const ep of order) {
        if (await this.probe(ep.url)) {
          this.base = ep.url === location.origin ? "" : ep.url;
          this.failing = false;
          this.connect();
          this.h.onSwitched(lost, ep.name, why);
          return;
        }
      }
      this.h.onState("down", `no node answers (${why}); retrying`);
      await new Promise((r) => setTimeout(r, Math.min(1000 * (round + 1), 5000)));
    }
  }
}
