// People beyond a page and contacts (the seed app's contacts/add and
// contacts/remove): search the people list, add someone as a contact (kept
// by the server across a reload), remove them again.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, twoPeople } from '../lib/harness.mjs';

test('the client: people search and contacts', async () => {
  await scenario('tc10', async ({ person }) => {
    const { a, id2, name2 } = await twoPeople(person, { displayNames: ['Alice', 'Bob'] });

    // The search narrows the list to matching people.
    await a.page.fill('#people-search', name2.slice(0, 6));
    await a.userItem(id2).waitFor();
    await a.page.fill('#people-search', `${name2}zz`);
    await a.userItem(id2).waitFor({ state: 'detached' });
    await a.page.fill('#people-search', '');
    await a.userItem(id2).waitFor();

    // Add Bob as a contact from his conversation.
    await a.open(id2);
    const button = a.page.locator('#contact-button');
    await button.waitFor();
    assert.equal(await button.textContent(), 'Add contact');
    await button.click();
    await a.page.locator('#contact-button[aria-pressed="true"]', { hasText: 'Remove contact' }).waitFor();
    await a.page.locator(`li.user.contact[data-user-id="${id2}"]`).waitFor();

    // The server keeps it.
    await a.page.reload();
    await a.waitConnected();
    await a.page.locator(`li.user.contact[data-user-id="${id2}"]`).waitFor();
    const contacts = await a.page.evaluate(async () => {
      const token = localStorage.getItem('natter.token');
      const response = await fetch('/api/contacts', { headers: { authorization: `Bearer ${token}` } });
      return (await response.json()).contacts.map((c) => c.id);
    });
    assert.deepEqual(contacts, [id2]);

    // And removes it.
    await a.open(id2);
    await a.page.locator('#contact-button', { hasText: 'Remove contact' }).click();
    await a.page.locator('#contact-button[aria-pressed="false"]', { hasText: 'Add contact' }).waitFor();
    await a.page.locator(`li.user.contact[data-user-id="${id2}"]`).waitFor({ state: 'detached' });
  });
});
