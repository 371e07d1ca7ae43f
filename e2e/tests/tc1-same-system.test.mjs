// Seed test case 1: two people on one machine see each other's messages at
// once, with sender names and timestamps, and the gateway logs the flow.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, twoPeople } from '../lib/harness.mjs';

test('test case 1: messages appear instantly in both tabs', async () => {
  await scenario('tc1', async ({ stack, person }) => {
    const { a, b, id1, id2 } = await twoPeople(person, { displayNames: ['Alice Martin', 'Bob Chen'] });

    await a.open(id2);
    const before = Date.now();
    await a.send('Hello from Tab A');
    await b.open(id1);
    await b.message('Hello from Tab A').waitFor({ timeout: 1_000 });
    await b.send('Hello from Tab B');
    await a.message('Hello from Tab B').waitFor({ timeout: 1_000 });

    // Sender names and timestamps (the time it was accepted, in the viewer's locale).
    const received = b.message('Hello from Tab A');
    assert.equal((await received.locator('.sender').textContent()).trim(), 'Alice Martin');
    const at = Date.parse(await received.locator('time.timestamp').getAttribute('datetime'));
    assert.ok(Math.abs(at - before) < 10_000, `timestamp ${at} vs ${before}`);
    assert.ok((await received.locator('time.timestamp').textContent()).trim().length > 0);
    const reply = a.message('Hello from Tab B');
    assert.equal((await reply.locator('.sender').textContent()).trim(), 'Bob Chen');

    // The first load is small: every asset of the client, no API call.
    assert.ok(a.firstLoadBytes > 10_000 && a.firstLoadBytes < 100 * 1024, `${a.firstLoadBytes} bytes`);

    // The picture in the README.
    await a.page.setViewportSize({ width: 1000, height: 560 });
    await a.screenshotAs('two-people-chatting');

    // The seed's log lines, with our structured fields.
    const accepted = stack.gatewayLines('[DIRECT MESSAGE]');
    assert.ok(accepted.some((line) => line.includes(id1) && line.includes(id2)), accepted.join('\n'));
  });
});
