// Seed test case 7: switching between conversations never mixes them.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, username } from '../lib/harness.mjs';

test('test case 7: multiple conversations', async () => {
  await scenario('tc7', async ({ person }) => {
    const a = await person('user1');
    await a.signup(username('alice'));
    const b = await person('user2');
    await b.signup(username('bob'));
    const c = await person('user3');
    await c.signup(username('carol'));
    const [id1, id2, id3] = [await a.userId(), await b.userId(), await c.userId()];
    await a.page.reload();
    await a.waitConnected();

    await a.open(id2);
    await a.send('Hello User2');
    await a.message('Hello User2').locator('.status[data-status="sent"]').waitFor();
    await a.open(id3);
    await a.send('Hello User3');
    await a.message('Hello User3').locator('.status[data-status="sent"]').waitFor();
    await a.open(id2);
    await a.message('Hello User2').waitFor();
    const shown = await a.page.locator('#messages li.message .content').allTextContents();
    assert.deepEqual(shown, ['Hello User2']);

    // Each receiver has exactly their own message waiting, unread.
    await b.page.reload();
    await c.page.reload();
    await b.userItem(id1).locator('.unread-badge').filter({ hasText: /^1$/ }).waitFor();
    await c.userItem(id1).locator('.unread-badge').filter({ hasText: /^1$/ }).waitFor();
    await c.open(id1);
    await c.message('Hello User3').waitFor();
    assert.deepEqual(await c.page.locator('#messages li.message .content').allTextContents(), ['Hello User3']);
  });
});
