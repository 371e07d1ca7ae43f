// Seed test case 6: unread badges count messages from a conversation that
// is not open, clear when it is opened, and count again afterwards.

import { test } from 'node:test';
import { scenario, twoPeople } from '../lib/harness.mjs';

test('test case 6: unread counts', async () => {
  await scenario('tc6', async ({ person }) => {
    const { a, b, id1, id2 } = await twoPeople(person);

    await a.open(id2);
    for (const text of ['one', 'two', 'three']) {
      await a.send(text);
      await a.message(text).locator('.status[data-status="sent"]').waitFor();
    }
    const badge = b.userItem(id1).locator('.unread-badge');
    await badge.filter({ hasText: /^3$/ }).waitFor();

    await b.open(id1);
    await b.message('three').waitFor();
    await badge.waitFor({ state: 'hidden' });

    // Bob looks elsewhere: open nothing by reloading, then a new message.
    await b.page.reload();
    await b.waitConnected();
    await b.userItem(id1).locator('.unread-badge').waitFor({ state: 'hidden' });
    await a.send('four');
    await b.userItem(id1).locator('.unread-badge').filter({ hasText: /^1$/ }).waitFor();
  });
});
