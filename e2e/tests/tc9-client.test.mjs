// What the issue asks of the client beyond the seed's test cases: typing,
// read ticks, older pages on scroll-up, a device id that survives a reload,
// acks that keep a reload from replaying what was shown, and a logout that
// forgets the token.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, twoPeople } from '../lib/harness.mjs';

test('the client: typing, read ticks, paging, device id, acks, logout', async () => {
  await scenario('tc9', async ({ stack, person }) => {
    const { a, b, id1, id2 } = await twoPeople(person, { displayNames: ['Alice', 'Bob'] });
    await a.open(id2);
    await a.send('first');
    await b.open(id1);
    await b.message('first').waitFor();

    // Typing shows on the other side.
    await b.page.type('#message-input', 'typ');
    await a.page.locator('#typing-indicator', { hasText: 'Bob is typing' }).waitFor();

    // Read ticks: Bob has the conversation open, so Alice's next message is read.
    await a.send('second');
    await a.message('second').locator('.status[data-status="read"]').waitFor();

    // Older pages: 60 more messages over REST; the pane shows the newest
    // page, and scrolling to the top brings the rest.
    await a.page.evaluate(async (receiverId) => {
      const token = localStorage.getItem('natter.token');
      for (let i = 0; i < 60; i += 1) {
        await fetch('/api/messages', {
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: JSON.stringify({ receiverId, content: `bulk ${i}` }),
        });
      }
    }, id2);
    await b.message('bulk 59').waitFor();
    const device = await b.page.evaluate(() => localStorage.getItem('natter.device'));
    await b.page.reload();
    await b.waitConnected();
    assert.equal(await b.page.evaluate(() => localStorage.getItem('natter.device')), device);
    await b.open(id1);
    await b.message('bulk 59').waitFor();
    const shown = () => b.page.locator('#messages li.message').count();
    assert.ok((await shown()) < 62, 'one page first');
    await b.page.locator('#messages').evaluate((list) => {
      list.scrollTop = 0;
      list.dispatchEvent(new Event('scroll'));
    });
    await b.message('first').waitFor();
    assert.equal(await shown(), 62);
    // Each message once; and what Bob's page had shown before the reload was
    // acked, so the device's cursor left nothing to replay.
    const texts = await b.page.locator('#messages li.message .content').allTextContents();
    assert.equal(new Set(texts).size, texts.length);
    const replayed = stack.gatewayLines('delivered to the socket')
      .filter((line) => line.includes(device) && line.includes('"path":"replay"'));
    assert.deepEqual(replayed, []);
    const connects = stack.gatewayLines('[CONNECTION]').filter((line) => line.includes(id2));
    assert.ok(connects.every((line) => line.includes(device)), 'one device id throughout');

    // Logout forgets the token and goes back to the login form.
    await b.page.click('#logout-button');
    await b.page.locator('#auth-form').waitFor();
    assert.equal(await b.page.evaluate(() => localStorage.getItem('natter.token')), null);
  });
});
