/**
 * The page in Debian's Chromium against the real service (`icaas start`: web tier,
 * controllers, worker processes, SQLite queues, file buckets, the real model).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { Browser } from 'playwright-core';
import { waitFor } from '../helpers.js';
import { readShared, sharedImages, startService, type Service } from '../e2e/harness.js';
import { batchCounters, browserMissing, launchBrowser, openPage, screenshot, type WatchedPage } from './browser.js';

const HOSTILE = '<img src=x onerror=alert(1)>.jpg';

describe('web page on the real service', { skip: browserMissing() }, () => {
  let service: Service | undefined;
  let browser: Browser | undefined;
  const pages: WatchedPage[] = [];

  before(async () => {
    [service, browser] = await Promise.all([startService({ maxInstances: 4, idleWaitSeconds: 2 }), launchBrowser()]);
  });
  after(async () => {
    for (const page of pages) await page.close().catch(() => {});
    await browser?.close();
    await service?.cleanup();
  });

  it('classifies 10 uploaded images live, shows the tier scale out and back, and renders a hostile name as text', async (t) => {
    const watched = await openPage(browser!, service!.url, { viewport: { width: 1440, height: 1000 } });
    pages.push(watched);
    const { page } = watched;
    const images = (await sharedImages()).slice(0, 11);
    const payloads = await Promise.all(images.slice(0, 10).map(async (image) => ({ name: image.file, mimeType: 'image/jpeg', buffer: await readShared(image.file) })));
    payloads.push({ name: HOSTILE, mimeType: 'image/jpeg', buffer: await readShared(images[10]!.file) });
    await page.setInputFiles('#file-input', payloads);

    await waitFor('11 cards with a label', async () => (await page.locator('#grid .card[data-status="done"] .top1-label').count()) === 11, { timeoutMs: 240_000, intervalMs: 250 });
    // The instance series must rise above zero. The batch can finish before the first status
    // (one a second) that shows its worker; the worker stays up for its idle wait after that,
    // and the chart keeps its peak for its whole window, so the peak is awaited, not sampled.
    const scaling = page.locator('#scaling');
    const peak = await waitFor('the instance chart to show an instance', async () => {
      const seen = Number(await scaling.getAttribute('data-max-instances'));
      return seen > 0 ? seen : undefined;
    }, { timeoutMs: 60_000, intervalMs: 250 });
    const peakPoints = (await page.locator('#chart-instances polygon').evaluateAll((shapes) => shapes.map((shape) => shape.getAttribute('points')))).join(' ');

    const truth = new Map(images.slice(0, 10).map((image) => [image.file, image.label]));
    let correct = 0;
    for (const [file, label] of truth) {
      const card = page.locator('#grid .card').filter({ has: page.locator('.name', { hasText: file }) });
      const shown = await card.locator('.top1-label').textContent();
      assert.ok(shown, `no label on ${file}`);
      assert.match((await card.locator('.top1-prob').textContent()) ?? '', /^\d+(\.\d)?%$/);
      assert.equal(await card.locator('.top5 li').count(), 5);
      if (shown === label) correct++;
    }
    t.diagnostic(`${correct}/10 labels match the reference; instance chart peaked at ${peak}`);
    assert.equal(await page.locator('#stat-done').textContent(), '11 / 11');
    assert.equal(await page.locator('#stat-errors').textContent(), '0');
    assert.notEqual(await page.locator('#stat-rate').textContent(), '–');

    // The tier moved: the chart drew its instances, and the tier then scales back to zero.
    assert.ok(peakPoints.split(' ').some((point) => Number(point.split(',')[1]) < 150), `the instance series stayed on the baseline: ${peakPoints}`);
    await page.locator('#scaling[data-instances="0"]').waitFor({ timeout: 60_000 });

    // The hostile name is text: shown verbatim, no element made from it, no alert.
    const hostileCard = page.locator('#grid .card').filter({ has: page.locator('.name', { hasText: 'onerror' }) });
    assert.equal(await hostileCard.locator('.name').textContent(), HOSTILE);
    assert.equal(await page.locator('img[src="x"]').count(), 0);
    assert.deepEqual(watched.dialogs, []);

    const file = await screenshot(page, 'ui-batch.png');
    t.diagnostic(`screenshot: ${file}`);
    assert.deepEqual(watched.problems, []);

    // The same batch on a phone, opened from its address.
    const phone = await openPage(browser!, `${service!.url}/#batch=${(await batchCounters(page)).batchId}`, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
    pages.push(phone);
    await waitFor('the batch on the phone', async () => (await batchCounters(phone.page)).finished === 11, { timeoutMs: 20_000 });
    const width = Number(await phone.page.evaluate('document.documentElement.scrollWidth'));
    assert.ok(width <= 390, `the page is ${width}px wide on a 390px screen`);
    await phone.page.locator('#scaling[data-limit="4"]').waitFor({ timeout: 10_000 });
    await phone.page.locator('#batch-title').evaluate((title) => title.scrollIntoView());
    await screenshot(phone.page, 'ui-batch-phone.png', false);
    assert.deepEqual(phone.problems, []);
  });

  it('shows the files the server rejects, with its reason', async () => {
    const watched = await openPage(browser!, service!.url);
    pages.push(watched);
    const { page } = watched;
    await page.setInputFiles('#file-input', [
      { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('these are not pixels') },
      { name: 'empty.jpg', mimeType: 'image/jpeg', buffer: Buffer.alloc(0) },
    ]);
    const rows = page.locator('#rejected-list li');
    await waitFor('two rejections', async () => (await rows.count()) === 2, { timeoutMs: 20_000 });
    const reasons = Object.fromEntries(await rows.evaluateAll((items) => items.map((item) => [item.querySelector('.r-name')?.textContent, item.querySelector('.r-reason')?.textContent])));
    assert.match(reasons['notes.txt'] ?? '', /not an image by its content/);
    assert.match(reasons['empty.jpg'] ?? '', /file is empty/);
    assert.equal(await page.locator('#rejected-title').textContent(), 'Not accepted (2)');
    assert.equal((await batchCounters(page)).total, 0, 'no card for a rejected file');
    // The browser logs the refused request itself; nothing else may go wrong.
    assert.deepEqual(watched.problems.filter((problem) => !/status of 400/.test(problem)), []);
  });
});
