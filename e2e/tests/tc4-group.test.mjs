// Seed test case 4: a group created in the client reaches both members, and
// their messages reach each other at once, once each, in order, with names.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, twoPeople } from '../lib/harness.mjs';

test('test case 4: group messaging', async () => {
  await scenario('tc4', async ({ stack, person }) => {
    const { a, b, id2, name2 } = await twoPeople(person);

    await a.page.click('#new-group-button');
    await a.page.fill('#group-name', 'TestGroup');
    await a.page.check(`input[name="member"][value="${id2}"]`);
    await a.page.click('#create-group-button');
    const groupA = a.page.locator('li.group', { hasText: 'TestGroup' });
    await groupA.waitFor();
    const groupB = b.page.locator('li.group', { hasText: 'TestGroup' });
    await groupB.waitFor();
    await groupA.click();
    await groupB.click();

    await a.send('Group message from User1');
    await b.message('Group message from User1').waitFor({ timeout: 1_000 });
    await b.send('Reply from User2');
    const reply = a.message('Reply from User2');
    await reply.waitFor({ timeout: 1_000 });
    assert.equal((await reply.locator('.sender').textContent()).trim(), name2);

    for (const p of [a, b]) {
      const texts = await p.page.locator('#messages li.message .content').allTextContents();
      assert.deepEqual(texts, ['Group message from User1', 'Reply from User2'], p.name);
    }
    assert.ok(stack.gatewayLines('[GROUP MESSAGE]').length >= 2);
  });
});
