// The WebSocket: reconnects with backoff, pings, and batches cumulative acks.

const BACKOFF_MIN = 500;
const BACKOFF_MAX = 30000;
const PING_EVERY = 25000;
const PONG_GRACE = 10000;
const ACK_DELAY = 200;

const CLOSE_REPLACED = 4000;
const CLOSE_UNAUTHORIZED = 4401;
const CLOSE_POLICY = 1008;

function isAuthClose(code, reason) {
  if (code === CLOSE_UNAUTHORIZED) return true;
  if (/token|unauthori[sz]ed/i.test(reason)) return true;
  // 1008 is also how a slow reader is dropped; that one just reconnects.
  return code === CLOSE_POLICY && !/slow/i.test(reason);
}

export class Socket {
  /**
   * url(): the URL to open (the device changes between sessions).
   * protocols(): the subprotocols to offer, the token's among them.
   * handlers: frame(frame), state(state, text), authFailed(reason),
   * replaced(), handshakeFailed() → Promise<boolean> (is the token still good?).
   */
  constructor(url, handlers, protocols = () => []) {
    this.url = url;
    this.protocols = protocols;
    this.on = handlers;
    this.ws = null;
    this.ready = false;
    this.stopped = true;
    this.attempt = 0;
    this.retryTimer = 0;
    this.pingTimer = 0;
    this.lastHeard = 0;
    this.ackTimer = 0;
    this.acked = 0;
    this.toAck = 0;
    this.state = 'disconnected';
  }

  start() {
    this.stopped = false;
    this.attempt = 0;
    this.connect();
  }

  stop() {
    this.stopped = true;
    this.flushAck();
    this.drop();
    clearTimeout(this.retryTimer);
    this.setState('disconnected', 'Offline');
  }

  // Browser says the network is gone: don't burn attempts (each failed
  // handshake is a console error) until it is back.
  offline() {
    if (this.stopped) return;
    this.drop();
    clearTimeout(this.retryTimer);
    this.setState('disconnected', 'Offline');
  }

  online() {
    if (this.stopped || this.ws) return;
    this.attempt = 0;
    this.connect();
  }

  // Asked by the user after another tab took over this device.
  reclaim() {
    if (this.stopped) return;
    this.attempt = 0;
    this.connect();
  }

  get connected() {
    return this.ready && this.ws?.readyState === WebSocket.OPEN;
  }

  /** Sends one frame if the session is up; false means the caller must cope. */
  send(frame) {
    if (!this.connected) return false;
    try {
      this.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /** Everything up to `cursor` has been processed; acked within ACK_DELAY. */
  processed(cursor) {
    if (!(cursor > this.toAck)) return;
    this.toAck = cursor;
    if (!this.ackTimer) this.ackTimer = setTimeout(() => this.flushAck(), ACK_DELAY);
  }

  flushAck() {
    clearTimeout(this.ackTimer);
    this.ackTimer = 0;
    if (this.toAck > this.acked && this.send({ event: 'ack', data: { cursor: this.toAck } })) {
      this.acked = this.toAck;
    }
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.drop();
    if (this.stopped) return;
    if (!navigator.onLine) {
      this.setState('disconnected', 'Offline');
      return;
    }
    if (this.state !== 'connected') {
      this.setState('reconnecting', this.attempt ? 'Reconnecting…' : 'Connecting…');
    }
    let ws;
    try {
      ws = new WebSocket(this.url(), this.protocols());
    } catch (e) {
      console.warn('natter: cannot open the socket', e);
      this.retry();
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.lastHeard = Date.now();
      this.pingTimer = setInterval(() => this.ping(), PING_EVERY);
    };
    ws.onmessage = (e) => {
      if (this.ws === ws) this.receive(e.data);
    };
    ws.onerror = () => { /* a close event follows with the details */ };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.detach();
      this.closed(e.code, e.reason || '', opened);
    };
  }

  receive(text) {
    this.lastHeard = Date.now();
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      console.warn('natter: ignoring a frame that is not JSON');
      return;
    }
    if (frame.event === 'ready') {
      this.ready = true;
      this.attempt = 0;
      // The server's cursor is the truth: anything processed but not acked
      // before is replayed (and deduped), and after a change of user the
      // old user's cursor must never be acked for the new one.
      const cursor = Number(frame.data?.cursor);
      this.acked = this.toAck = Number.isFinite(cursor) ? cursor : 0;
      this.setState('connected', 'Connected');
    }
    try {
      this.on.frame(frame);
    } catch (e) {
      // Still acked below: a frame we cannot handle must not replay forever.
      console.warn('natter: a frame could not be handled', frame.event, e);
    }
    if (typeof frame.cursor === 'number') this.processed(frame.cursor);
  }

  ping() {
    if (Date.now() - this.lastHeard > PING_EVERY + PONG_GRACE) {
      // Nothing heard, not even a pong: the connection is dead without a close.
      this.drop();
      this.retry();
      return;
    }
    this.send({ event: 'ping' });
  }

  closed(code, reason, opened) {
    if (this.stopped) return;
    if (isAuthClose(code, reason)) {
      this.stopped = true;
      this.setState('disconnected', 'Signed out');
      this.on.authFailed(reason);
      return;
    }
    if (code === CLOSE_REPLACED) {
      this.setState('disconnected', 'Open in another tab');
      this.on.replaced();
      return;
    }
    if (!opened && navigator.onLine) {
      // A refused handshake gives no status to the page: ask over REST
      // whether the token is the reason.
      this.setState('reconnecting', 'Reconnecting…');
      this.on.handshakeFailed().then((tokenGood) => {
        if (this.stopped || this.ws) return;
        if (tokenGood) this.retry();
        else {
          this.stopped = true;
          this.on.authFailed('unauthorized');
        }
      });
      return;
    }
    this.retry();
  }

  retry() {
    clearTimeout(this.retryTimer);
    if (this.stopped) return;
    if (!navigator.onLine) {
      this.setState('disconnected', 'Offline');
      return;
    }
    this.setState('reconnecting', 'Reconnecting…');
    const base = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 16);
    const delay = base / 2 + Math.random() * (base / 2);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  // Forget the current socket without reacting to its close.
  detach() {
    clearInterval(this.pingTimer);
    this.pingTimer = 0;
    this.ready = false;
    const ws = this.ws;
    this.ws = null;
    return ws;
  }

  drop() {
    const ws = this.detach();
    if (!ws) return;
    ws.onmessage = ws.onclose = null;
    ws.onerror = () => {};
    const close = () => {
      try { ws.close(1000, 'client closing'); } catch { /* already closed */ }
    };
    // Closing a socket that is still connecting logs a browser error.
    if (ws.readyState === WebSocket.CONNECTING) ws.onopen = close;
    else close();
  }

  setState(state, text) {
    const changed = state !== this.state;
    this.state = state;
    this.on.state(state, text, changed);
  }
}
