// Seed test case 8: with the gateway down a send fails visibly and works
// again once it is back; an empty message cannot be sent; a message to a
// user who does not exist is refused with a clear error, and the page goes
// on working.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, twoPeople } from '../lib/harness.mjs';

test('test case 8: error handling', async () => {
  await scenario('tc8', async ({ stack, person }) => {
    const { a, b, id1, id2 } = await twoPeople(person);
    await a.open(id2);
    await b.open(id1);

    // 1. The gateway stops.
    a.expectNetworkErrors();
    b.expectNetworkErrors();
    await stack.stopGateway();
    await a.page.waitForSelector('#connection-status:not([data-state="connected"])');
    await a.send('while the gateway is down');
    await a.page.locator('#toasts .toast', { hasText: 'Failed to send message' }).waitFor();
    await stack.startGateway();
    await a.waitConnected(35_000);
    await b.waitConnected(35_000);
    a.expectNetworkErrors(false);
    b.expectNetworkErrors(false);
    await a.send('after the restart');
    await b.message('after the restart').waitFor();

    // 2. An empty message.
    await a.page.fill('#message-input', '   ');
    assert.equal(await a.page.isDisabled('#send-button'), true);
    await a.page.fill('#message-input', 'x');
    assert.equal(await a.page.isDisabled('#send-button'), false);
    await a.page.fill('#message-input', '');

    // 3. A user who does not exist, sent by hand on the page's socket.
    await a.page.evaluate(() =>
      window.natterDebug.emit('send_direct_message', { receiverId: 'fake-user-id-12345', content: 'test' }),
    );
    // Its own toast: the one from the restart above may still be showing.
    const toast = a.page
      .locator('#toasts .toast', { hasText: /Failed to send message.*(receiverId|user|invalid|not found)/i })
      .last();
    await toast.waitFor();
    assert.match(await toast.textContent(), /receiverId|user|invalid|not found/i);
    await a.send('still working');
    await b.message('still working').waitFor();
  });
});
