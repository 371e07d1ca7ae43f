// A send answered `unavailable` (the broker did not answer in time: the
// message may or may not be stored, DESIGN.md §4) is sent again by the page
// with the same clientMsgId, without the person doing anything, and arrives
// once.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, twoPeople } from '../lib/harness.mjs';

test('a send answered unavailable is sent again with its clientMsgId', async () => {
  await scenario('tc11', async ({ person }) => {
    const { a, b, id1, id2 } = await twoPeople(person);

    // Between a's page and the gateway: the first two sends are answered
    // `unavailable` here and never reach the gateway; the rest pass.
    const sends = [];
    await a.page.routeWebSocket(/\/ws/, (ws) => {
      const server = ws.connectToServer();
      ws.onMessage((message) => {
        const frame = JSON.parse(message);
        if (frame.event === 'send_direct_message') {
          sends.push(frame);
          if (sends.length <= 2) {
            ws.send(JSON.stringify({
              event: 'error',
              data: { code: 'unavailable', message: 'the message was not accepted; retry' },
              ref: frame.ref,
            }));
            return;
          }
        }
        server.send(message);
      });
      server.onMessage((message) => ws.send(message));
    });
    await a.page.reload();
    await a.waitConnected();
    await a.open(id2);
    await b.open(id1);

    await a.send('sent again until accepted');
    await b.message('sent again until accepted').waitFor();
    await a.page.locator('#messages li.message.own[data-seq]:not([data-seq=""])',
      { hasText: 'sent again until accepted' }).waitFor();

    assert.equal(sends.length, 3, 'two answered unavailable, the third accepted');
    const ids = new Set(sends.map((frame) => frame.data.clientMsgId));
    assert.equal(ids.size, 1, 'every try carries the same clientMsgId');
    assert.equal(await b.message('sent again until accepted').count(), 1);
    assert.equal(await a.page.locator('#toasts .toast', { hasText: 'Failed to send' }).count(), 0);
    assert.equal(await a.page.locator('li.message.own .retry:not([hidden])').count(), 0);
  });
});
