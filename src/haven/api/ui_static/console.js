// An instance's serial console in the page: xterm.js (vendor/) over the node's
// WebSocket /haven/instances/NAME/console/ws?token=..., bytes both ways.
// xterm.js (half a megabyte) is loaded the first time a console opens, not with the page.

let loading = null;
function loadTerminal() {
  const add = (tag, attrs) => new Promise((resolve, reject) => {
    const el = Object.assign(document.createElement(tag), attrs);
    el.onload = resolve;
    el.onerror = () => reject(new Error(`cannot load ${attrs.src || attrs.href}`));
    document.head.append(el);
  });
  loading ??= Promise.all([
    add("link", { rel: "stylesheet", href: "vendor/xterm.css" }),
    add("script", { src: "vendor/xterm.js" }).then(() => add("script", {
      src: "vendor/addon-fit.js" })),
  ]);
  return loading;
}

export class Console {
  constructor(conn, panel) {
    this.conn = conn;
    this.panel = panel;
    this.name = null;
    this.ws = null;
    this.term = null;
    this.fit = null;
    this.status = panel.querySelector("#console-status");
    panel.querySelector("#console-open").addEventListener("click", () => this.open());
    panel.querySelector("#console-close").addEventListener("click", () => this.disconnect());
    window.addEventListener("resize", () => this.fit && this.fit.fit());
  }

  // Called on every render: the panel shows on an instance's page only.
  show(name, running) {
    if (name !== this.name) {
      this.disconnect();
      this.name = name;
      this.setStatus("");
      if (this.term) this.term.reset();
    }
    this.panel.hidden = !name;
    this.running = running;
    const open = this.ws && this.ws.readyState <= 1;
    this.panel.querySelector("#console-open").disabled = !!open || !running ||
      !this.conn.canWrite;
    this.panel.querySelector("#console-close").disabled = !open;
    const said = this.status.textContent;
    if (!open && !said.startsWith("disconnected") && !said.startsWith("connecting")) {
      this.setStatus(!running ? "the instance is not running" :
        !this.conn.canWrite ? "the console needs a user with write access" : "not connected");
    }
  }

  setStatus(text) { this.status.textContent = text; }

  async ensureTerminal() {
    await loadTerminal();
    if (this.term) return;
    this.term = new window.Terminal({ convertEol: false, cursorBlink: true, fontSize: 13,
      scrollback: 2000 });
    this.fit = new window.FitAddon.FitAddon();
    this.term.loadAddon(this.fit);
    this.term.open(this.panel.querySelector("#terminal"));
    this.fit.fit();
    const enc = new TextEncoder();
    this.term.onData((data) => {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(enc.encode(data));
    });
  }

  async open() {
    if (!this.name || !this.conn.session) return;
    const name = this.name;
    this.setStatus("connecting…");
    await this.ensureTerminal();
    if (this.name !== name) return;
    const url = this.conn.urlFor(`/haven/instances/${encodeURIComponent(name)}/console/ws` +
      `?token=${encodeURIComponent(this.conn.session.token)}`).replace(/^http/, "ws");
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.setStatus(`connected to ${name} through ${this.conn.node || "this node"} ` +
        "(Enter wakes the prompt)");
      this.term.focus();
      this.show(name, this.running);
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data !== "string") {
        this.term.write(new Uint8Array(ev.data));
        return;
      }
      // Text frames are the server's word, not the guest's: an error before it closes.
      let msg = ev.data;
      try { msg = JSON.parse(ev.data).message || msg; } catch (e) { /* plain text */ }
      this.closeReason = msg;
      this.term.write(`\r\n\x1b[31m${msg}\x1b[0m\r\n`);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      const why = this.closeReason || ev.reason;
      this.closeReason = "";
      this.setStatus(`disconnected${why ? ": " + why : ""}`);
      this.show(name, this.running);
    };
  }

  disconnect() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close();
  }
}
