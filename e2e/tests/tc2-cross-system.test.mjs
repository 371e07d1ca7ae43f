// Seed test case 2: the second person reaches the gateway under another
// name of the machine (127.0.0.1 while the first uses localhost), and a page
// from an origin that is not allowed can neither open a socket nor read the
// API.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { freePort, scenario, twoPeople } from '../lib/harness.mjs';

test('test case 2: cross-system messaging and the origin check', async () => {
  await scenario('tc2', async ({ stack, browser, person }) => {
    const { a, b, id1, id2 } = await twoPeople(person, { urls: [stack.url, stack.otherUrl] });

    await a.open(id2);
    await b.open(id1);
    let sent = Date.now();
    await a.send('Hi from System A');
    await b.message('Hi from System A').waitFor({ timeout: 500 });
    assert.ok(Date.now() - sent < 500);
    sent = Date.now();
    await b.send('Hi from System B');
    await a.message('Hi from System B').waitFor({ timeout: 500 });
    assert.ok(Date.now() - sent < 500);

    // A page served from an origin that ALLOWED_ORIGINS does not list.
    const port = await freePort();
    const foreign = createServer((_, res) => res.end('<!doctype html><title>elsewhere</title>'));
    await new Promise((resolve) => foreign.listen(port, '127.0.0.1', resolve));
    try {
      const page = await browser.newPage();
      await page.goto(`http://127.0.0.1:${port}/`);
      const token = await a.page.evaluate(() => localStorage.getItem('natter.token'));
      const outcome = await page.evaluate(
        async ({ gateway, token }) => {
          const socket = await new Promise((resolve) => {
            const ws = new WebSocket(`${gateway.replace('http', 'ws')}/ws?token=${token}&device=foreign`);
            ws.onopen = () => resolve('opened');
            ws.onerror = () => resolve('refused');
          });
          let api;
          try {
            await fetch(`${gateway}/api/users`, { headers: { authorization: `Bearer ${token}` } });
            api = 'readable';
          } catch {
            api = 'blocked';
          }
          return { socket, api };
        },
        { gateway: stack.url, token },
      );
      assert.deepEqual(outcome, { socket: 'refused', api: 'blocked' });
      await page.close();
    } finally {
      foreign.close();
    }
    assert.ok(stack.gatewayLines('foreign origin refused').length > 0);
  });
});
