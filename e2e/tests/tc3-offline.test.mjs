// Seed test case 3: a message to someone who closed the browser is stored,
// counted as unread, and shown with its sending time when they come back.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, twoPeople } from '../lib/harness.mjs';

test('test case 3: offline storage and delivery', async () => {
  await scenario('tc3', async ({ stack, person }) => {
    const people = await twoPeople(person);
    const { a, id1, id2, name2 } = people;
    let { b } = people;
    await a.open(id2);
    await b.open(id1);
    await b.send('from bob');
    await a.message('from bob').waitFor();
    await a.send('from alice');
    await b.message('from alice').waitFor();

    await b.context.close();
    await new Promise((r) => setTimeout(r, 2_000));
    const sentAt = Date.now();
    await a.send('Are you there?');
    await a.message('Are you there?').locator('.status[data-status="sent"]').waitFor();
    assert.ok(
      stack.gatewayLines('receiver is offline').some((line) => line.includes(id2)),
      'the gateway logs the receiver as offline',
    );

    await new Promise((r) => setTimeout(r, 3_000));
    b = await person('tab-b-again');
    await b.login(name2);
    await b.userItem(id1).locator('.unread-badge').filter({ hasText: /^1$/ }).waitFor();
    await b.open(id1);
    const message = b.message('Are you there?');
    await message.waitFor();
    const at = Date.parse(await message.locator('time.timestamp').getAttribute('datetime'));
    assert.ok(Math.abs(at - sentAt) < 2_000, `stamped ${at}, sent ${sentAt}: the sending time`);
    await b.userItem(id1).locator('.unread-badge').waitFor({ state: 'hidden' });
  });
});
