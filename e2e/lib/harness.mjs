// The stack and the browser for the browser tests. `cargo xtask test`
// starts nats-server and PostgreSQL and passes them in the environment; each
// test file starts its own persister and gateway on free ports, so the
// gateway can be stopped and restarted (test case 8) without touching the
// others.

import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the browser tests with \`cargo xtask test\``);
  return value;
};

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run',
];

export const ARTIFACTS = process.env.NATTER_E2E_ARTIFACTS ?? 'artifacts';

export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitUntilReady(url, child, what) {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}`);
    try {
      const response = await fetch(url);
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} not ready at ${url} within 30 s`);
}

/** A persister and a gateway of our own, on free ports. */
export class Stack {
  constructor() {
    this.logs = { gateway: [], persister: [] };
  }

  static async start() {
    const stack = new Stack();
    stack.gatewayPort = await freePort();
    stack.persisterPort = await freePort();
    stack.secret = randomBytes(32).toString('hex');
    stack.persister = stack.#spawn('persister', env('NATTER_PERSISTER_BIN'), {
      PERSISTER_PORT: String(stack.persisterPort),
    });
    await waitUntilReady(`http://127.0.0.1:${stack.persisterPort}/readyz`, stack.persister, 'natter-persister');
    await stack.startGateway();
    return stack;
  }

  get url() {
    return `http://localhost:${this.gatewayPort}`;
  }

  /** The same gateway under the other name of this machine (test case 2). */
  get otherUrl() {
    return `http://127.0.0.1:${this.gatewayPort}`;
  }

  #spawn(name, bin, extra) {
    const child = spawn(bin, [], {
      env: {
        PATH: process.env.PATH,
        NATS_URL: env('NATTER_E2E_NATS_URL'),
        DATABASE_URL: env('NATTER_E2E_DATABASE_URL'),
        JWT_SECRET: this.secret,
        BIND_ADDRESS: '127.0.0.1',
        RUST_LOG: 'info',
        LOG_FORMAT: 'json',
        // nats-server reserves each stream's max_bytes out of the free disk.
        CHAT_MAX_BYTES: '67108864',
        DELIVERY_MAX_BYTES: '67108864',
        // The default (10 a second) would refuse the bursts some cases send
        // to fill a page; the limit has its own tests.
        SEND_RATE_PER_SEC: '100000',
        ...extra,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const keep = (chunk) => this.logs[name].push(...chunk.toString().split('\n').filter(Boolean));
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    return child;
  }

  async startGateway() {
    this.gateway = this.#spawn('gateway', env('NATTER_GATEWAY_BIN'), {
      PORT: String(this.gatewayPort),
      ALLOWED_ORIGINS: this.url,
    });
    await waitUntilReady(`http://127.0.0.1:${this.gatewayPort}/readyz`, this.gateway, 'natter-gateway');
  }

  async stopGateway() {
    await stopChild(this.gateway);
  }

  async stop() {
    await stopChild(this.gateway);
    await stopChild(this.persister);
  }

  /** Gateway log lines (JSON) whose message contains `text`. */
  gatewayLines(text) {
    return this.logs.gateway.filter((line) => line.includes(text));
  }
}

async function stopChild(child) {
  if (!child || child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

export async function launchBrowser() {
  return chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: CHROMIUM_ARGS });
}

/**
 * A person: their own browser context (own localStorage, own device id) and
 * page, with every console error and page error recorded. Network errors
 * the browser itself logs while a test cuts the network on purpose are
 * allowed with `expectNetworkErrors`.
 */
export class Person {
  constructor(context, page, name) {
    this.context = context;
    this.page = page;
    this.name = name;
    this.errors = [];
    this.networkErrorsExpected = false;
    page.on('console', (message) => {
      if (message.type() !== 'error') return;
      const text = message.text();
      const fromNetwork = /^(Failed to load resource|WebSocket connection to .* failed)/.test(text);
      if (fromNetwork && this.networkErrorsExpected) return;
      this.errors.push(`console.error: ${text}`);
    });
    page.on('pageerror', (error) => this.errors.push(`page error: ${error.message}`));
  }

  static async open(browser, name, url) {
    const context = await browser.newContext({ locale: 'en-GB', timezoneId: 'UTC' });
    const page = await context.newPage();
    const person = new Person(context, page, name);
    // What the first load transfers: the page and its assets, not the API.
    person.firstLoadBytes = 0;
    const count = async (response) => {
      if (new URL(response.url()).pathname.startsWith('/api/')) return;
      const body = await response.body().catch(() => Buffer.alloc(0));
      person.firstLoadBytes += body.length;
    };
    page.on('response', count);
    await page.goto(url, { waitUntil: 'networkidle' });
    page.off('response', count);
    return person;
  }

  async waitConnected(timeout = 30_000) {
    await this.page.waitForSelector('#connection-status[data-state="connected"]', { timeout });
  }

  expectNetworkErrors(expected = true) {
    this.networkErrorsExpected = expected;
  }

  async signup(username, displayName = '', password = 'correct horse battery') {
    const { page } = this;
    await page.fill('#username', username);
    await page.fill('#password', password);
    if (displayName) await page.fill('#display-name', displayName);
    await page.click('#signup-button');
    await this.waitConnected();
  }

  async login(username, password = 'correct horse battery') {
    const { page } = this;
    await page.fill('#username', username);
    await page.fill('#password', password);
    await page.click('#login-button');
    await this.waitConnected();
  }

  async userId() {
    return this.page.evaluate(async () => {
      const token = localStorage.getItem('natter.token');
      const response = await fetch('/api/me', { headers: { authorization: `Bearer ${token}` } });
      const body = await response.json();
      return (body.user ?? body).id;
    });
  }

  userItem(id) {
    return this.page.locator(`li.user[data-user-id="${id}"]`);
  }

  async open(id) {
    await this.userItem(id).click();
  }

  async send(text) {
    await this.page.fill('#message-input', text);
    await this.page.click('#send-button');
  }

  message(text) {
    return this.page.locator('#messages li.message', { hasText: text });
  }

  /** A screenshot kept whether or not the test fails. */
  async screenshotAs(name) {
    mkdirSync(ARTIFACTS, { recursive: true });
    await this.page.screenshot({ path: join(ARTIFACTS, `${name}.png`) });
  }

  async screenshot(label) {
    mkdirSync(ARTIFACTS, { recursive: true });
    const path = join(ARTIFACTS, `${label}-${this.name}.png`);
    await this.page.screenshot({ path, fullPage: true }).catch(() => {});
    return path;
  }
}

/**
 * Runs `body` with a fresh stack and browser; on failure every person's page
 * is saved as a screenshot; afterwards no person may have logged an error.
 */
export async function scenario(label, body) {
  const stack = await Stack.start();
  const browser = await launchBrowser();
  const people = [];
  const person = async (name, url = stack.url) => {
    const p = await Person.open(browser, name, url);
    people.push(p);
    return p;
  };
  try {
    await body({ stack, browser, person });
    const errors = people.flatMap((p) => p.errors.map((e) => `${p.name}: ${e}`));
    if (errors.length > 0) throw new Error(`errors in the browser:\n${errors.join('\n')}`);
  } catch (error) {
    for (const p of people) await p.screenshot(label);
    mkdirSync(ARTIFACTS, { recursive: true });
    for (const [name, lines] of Object.entries(stack.logs)) {
      writeFileSync(join(ARTIFACTS, `${label}-${name}.log`), `${lines.join('\n')}\n`);
    }
    throw error;
  } finally {
    await browser.close();
    await stack.stop();
  }
}

/**
 * Two people signed up in browsers of their own; the first reloads, so its
 * list shows the second.
 */
export async function twoPeople(person, { names, displayNames = [], urls = [] } = {}) {
  const [name1, name2] = names ?? [username('alice'), username('bob')];
  const a = await person('tab-a', urls[0]);
  await a.signup(name1, displayNames[0]);
  const b = await person('tab-b', urls[1]);
  await b.signup(name2, displayNames[1]);
  const [id1, id2] = [await a.userId(), await b.userId()];
  await a.page.reload();
  await a.waitConnected();
  return { a, b, id1, id2, name1, name2 };
}

/** A unique user name for this run. */
export function username(base) {
  return `${base}${randomBytes(3).toString('hex')}`;
}
