// Seed test case 5: a browser that loses the network shows it, reconnects
// by itself when the network is back, and then has what was sent meanwhile.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, twoPeople } from '../lib/harness.mjs';

test('test case 5: connection loss and recovery', async () => {
  await scenario('tc5', async ({ stack, person }) => {
    const { a, b, id1, id2 } = await twoPeople(person);
    // Both online with the conversation open, as the seed's setup says.
    await a.open(id2);
    await a.send('before');
    await b.userItem(id1).locator('.unread-badge').filter({ hasText: /^1$/ }).waitFor();
    await b.open(id1);
    await b.message('before').waitFor();
    // Then Bob looks elsewhere (the pane closes), so what comes next is unread.
    await b.page.reload();
    await b.waitConnected();

    b.expectNetworkErrors();
    await b.context.setOffline(true);
    await b.page.waitForSelector('#connection-status:not([data-state="connected"])');
    await a.userItem(id2).locator('.online-dot:not(.online)').waitFor();
    await a.send('Testing reconnection');
    await a.message('Testing reconnection').locator('.status[data-status="sent"]').waitFor();

    await b.context.setOffline(false);
    await b.waitConnected(5_000);
    b.expectNetworkErrors(false);
    await b.userItem(id1).locator('.unread-badge').filter({ hasText: /^1$/ }).waitFor({ timeout: 5_000 });
    await a.userItem(id2).locator('.online-dot.online').waitFor();
    await b.open(id1);
    await b.message('Testing reconnection').waitFor();

    assert.ok(stack.gatewayLines('[DISCONNECT]').some((line) => line.includes(id2)));
    assert.ok(stack.gatewayLines('receiver is offline').some((line) => line.includes(id2)));
    const connects = stack.gatewayLines('[CONNECTION]').filter((line) => line.includes(id2));
    assert.ok(connects.length >= 2, 'connected, then reconnected');
  });
});
