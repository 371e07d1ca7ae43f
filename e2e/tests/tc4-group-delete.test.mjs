// Groups beyond test case 4: the header counts members (read a page at a
// time, never from group_updated), and the creator deletes a group, which
// then disappears for every member.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, twoPeople } from '../lib/harness.mjs';

test('the creator deletes a group and it disappears for every member', async () => {
  await scenario('tc4-delete', async ({ person }) => {
    const { a, b, id2 } = await twoPeople(person, { displayNames: ['Alice', 'Bob'] });

    await a.page.click('#new-group-button');
    await a.page.fill('#group-name', 'Doomed');
    await a.page.check(`input[name="member"][value="${id2}"]`);
    await a.page.click('#create-group-button');
    const groupA = a.page.locator('li.group', { hasText: 'Doomed' });
    const groupB = b.page.locator('li.group', { hasText: 'Doomed' });
    await groupA.waitFor();
    await groupB.waitFor();
    await groupA.click();
    await groupB.click();
    await a.page.locator('#conversation-subtitle', { hasText: '2 members: ' }).waitFor();
    const subtitle = await a.page.locator('#conversation-subtitle').textContent();
    assert.match(subtitle, /you/);
    assert.match(subtitle, /Bob/);

    // Only the creator is offered the button.
    await a.page.locator('#delete-group-button').waitFor({ state: 'visible' });
    assert.equal(await b.page.locator('#delete-group-button').isVisible(), false);

    await a.send('last words');
    await b.message('last words').waitFor();

    let asked = '';
    a.page.once('dialog', (dialog) => {
      asked = dialog.message();
      dialog.accept();
    });
    await a.page.click('#delete-group-button');
    await groupA.waitFor({ state: 'detached' });
    await groupB.waitFor({ state: 'detached' });
    assert.match(asked, /Doomed/);
    await b.page.locator('.toast', { hasText: 'Doomed was deleted.' }).waitFor();
    for (const p of [a, b]) {
      assert.equal(await p.page.locator('#conversation-title').textContent(), 'No conversation selected', p.name);
      assert.equal(await p.page.locator('#delete-group-button').isVisible(), false, p.name);
    }

    // A reload brings it back for no one.
    await b.page.reload();
    await b.waitConnected();
    await b.page.locator('#groups-empty').waitFor({ state: 'visible' });
    assert.equal(await groupB.count(), 0);
  });
});
