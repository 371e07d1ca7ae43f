// The page carries its token in the WebSocket subprotocol (DESIGN §4), never
// in the socket's URL, which proxies write to their access logs.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, twoPeople } from '../lib/harness.mjs';

test('the page sends its token in the subprotocol, never in the socket URL', async () => {
  await scenario('tc12', async ({ person }) => {
    const { a, b, id1, id2 } = await twoPeople(person);
    const urls = [];
    a.page.on('websocket', (ws) => urls.push(ws.url()));
    await a.page.reload();
    await a.waitConnected();
    // The socket works: a message goes both ways.
    await a.open(id2);
    await b.open(id1);
    await a.send('no token in the URL');
    await b.message('no token in the URL').waitFor();

    assert.ok(urls.length >= 1, 'the page opened a socket');
    for (const url of urls) {
      assert.doesNotMatch(url, /token=/, url);
      assert.match(url, /\/ws\?device=/, url);
    }
  });
});
