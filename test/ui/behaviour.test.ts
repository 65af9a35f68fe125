/**
 * The page in Chromium against the real web server over a simulated worker tier: a
 * thousand-image batch, dropped event streams, a full queue, an API key, export, keyboard
 * use and which batch new uploads join.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import sharp from 'sharp';
import type { Browser, Page } from 'playwright-core';
import { waitFor } from '../helpers.js';
import { readShared } from '../e2e/harness.js';
import { batchCounters, browserMissing, launchBrowser, openPage, type WatchedPage } from './browser.js';
import { startFakeService, type FakeService } from './fake-service.js';

interface Payload {
  name: string;
  mimeType: string;
  buffer: Buffer;
}

async function tinyPngs(count: number): Promise<Payload[]> {
  return Promise.all(Array.from({ length: count }, async (_, i) => ({
    name: `img-${String(i + 1).padStart(4, '0')}.png`,
    mimeType: 'image/png',
    buffer: await sharp({ create: { width: 8, height: 8, channels: 3, background: { r: i % 256, g: (i * 7) % 256, b: (i * 13) % 256 } } }).png().toBuffer(),
  })));
}

async function finished(page: Page, total: number, timeoutMs = 60_000): Promise<void> {
  await waitFor(`${total} finished images on the page`, async () => {
    const counters = await batchCounters(page);
    return counters.total === total && counters.finished === total;
  }, { timeoutMs, intervalMs: 100 });
}

const cardIds = (page: Page) => page.locator('#grid .card').evaluateAll((cards) => cards.map((card) => card.getAttribute('data-id')));

describe('web page against a simulated tier', { skip: browserMissing() }, () => {
  let browser: Browser;
  const services: FakeService[] = [];
  const pages: WatchedPage[] = [];
  let jpeg: Buffer;

  before(async () => {
    browser = await launchBrowser();
    jpeg = await readShared('n01440764_tench.JPEG');
  });
  after(async () => {
    for (const page of pages) await page.close().catch(() => {});
    await browser?.close();
    for (const service of services) await service.close();
  });

  const start = async (options: Parameters<typeof startFakeService>[0] = {}, viewport = { width: 1440, height: 1000 }) => {
    const service = await startFakeService(options);
    services.push(service);
    const watched = await openPage(browser, service.url, { viewport });
    pages.push(watched);
    return { service, watched, page: watched.page };
  };

  it('keeps a batch of 1,000 images responsive, rendering only the cards in view', async () => {
    const { page, watched } = await start({ maxInstances: 20, msPerImage: 30 });
    const uploads: string[] = [];
    page.on('request', (request) => {
      if (request.method() === 'POST' && request.url().includes('/api/images')) uploads.push(request.url());
    });
    await page.setInputFiles('#file-input', await tinyPngs(1000));
    let mostCards = 0;
    let progressRows = 0;
    await waitFor('1,000 finished images', async () => {
      mostCards = Math.max(mostCards, await page.locator('#grid .card').count());
      progressRows = Math.max(progressRows, await page.locator('#transfers:not([hidden]) #transfer-list li[data-state]').count());
      const counters = await batchCounters(page);
      return counters.total === 1000 && counters.finished === 1000;
    }, { timeoutMs: 120_000, intervalMs: 200 });
    assert.ok(uploads.length >= 20, `expected the files in requests of at most 50, saw ${uploads.length} requests`);
    assert.ok(!uploads[0]!.includes('batch='), 'the first request creates the batch');
    assert.ok(uploads.slice(1).every((url) => url.includes('batch=')), 'later requests add to the batch');
    assert.ok(mostCards > 0 && mostCards <= 150, `the grid rendered up to ${mostCards} cards at once`);
    assert.ok(progressRows > 0, 'no per-file upload progress was shown');
    assert.ok(await page.locator('#transfers').isHidden(), 'the upload panel stays after the uploads');
    assert.equal(await page.locator('#stat-done').textContent(), '1,000 / 1,000');
    assert.equal(await page.locator('#count-done').textContent(), '1,000');

    // Scrolling to the end brings the last cards in.
    await page.evaluate('window.scrollTo(0, document.body.scrollHeight)');
    await page.locator('#grid .card[aria-posinset="1000"]').waitFor({ timeout: 10_000 });
    assert.equal(await page.locator('#grid .card[aria-posinset="1000"] .name').textContent(), 'img-1000.png');

    // Search narrows the grid to matching names.
    await page.fill('#search', 'img-0999');
    await waitFor('one search match', async () => (await page.locator('#grid .card').count()) === 1, { timeoutMs: 5000 });
    assert.deepEqual(watched.problems, []);
  });

  it('reconnects after the event stream drops, without losing or repeating results', async () => {
    const { service, page, watched } = await start({ maxInstances: 3, msPerImage: 120 });
    service.paused = true;
    const payloads = (await tinyPngs(30)).map((payload) => ({ ...payload, name: `r-${payload.name}` }));
    await page.setInputFiles('#file-input', payloads);
    await waitFor('30 queued cards', async () => (await batchCounters(page)).total === 30, { timeoutMs: 20_000 });
    await page.locator('#connection[data-state="live"]').waitFor();
    // Every event-stream request the page makes, with the Last-Event-ID it resumes from (read
    // when the request is seen, awaited below, so a failure to read it fails the test).
    const streams: Promise<string | undefined>[] = [];
    page.on('request', (request) => {
      if (request.url().includes('/api/events')) streams.push(request.allHeaders().then((headers) => headers['last-event-id']));
    });
    service.paused = false;
    for (let drop = 0; drop < 3; drop++) {
      await waitFor('more results', async () => (await batchCounters(page)).finished > drop * 8, { timeoutMs: 20_000 });
      const before = streams.length;
      service.dropStreams();
      await waitFor(`the page to reopen the event stream after drop ${drop + 1}`, async () => streams.length > before, { timeoutMs: 10_000 });
    }
    const lastEventIds = await Promise.all(streams);
    const resumed = lastEventIds.filter((id) => id !== undefined && id !== '');
    assert.ok(resumed.length >= 3, `after 3 drops the page resumed with Last-Event-ID only ${resumed.length} times (${JSON.stringify(lastEventIds)})`);
    await finished(page, 30);
    const ids = await cardIds(page);
    assert.equal(ids.length, 30);
    assert.equal(new Set(ids).size, 30, 'a card appears twice');
    assert.equal(await page.locator('#count-done').textContent(), '30');
    assert.equal(await page.locator('#grid .card[data-status="done"]').count(), 30);
    await page.locator('#connection[data-state="live"]').waitFor({ timeout: 10_000 });
    assert.deepEqual(watched.problems.filter((problem) => !/ERR_INCOMPLETE_CHUNKED_ENCODING|net::ERR/.test(problem)), []);
  });

  it('waits out a full queue (429 with Retry-After) and then uploads', async () => {
    const { service, page } = await start({ maxQueued: 10 });
    service.extraQueued = 10;
    await page.setInputFiles('#file-input', [{ name: 'waiting.jpg', mimeType: 'image/jpeg', buffer: jpeg }]);
    await page.locator('#transfer-notice', { hasText: /queue is full; retrying in \d+s/ }).waitFor({ timeout: 10_000 });
    assert.equal(await batchCounters(page).then((c) => c.total), 0);
    service.extraQueued = 0;
    await finished(page, 1, 20_000);
  });

  it('asks for the API key when the server requires one and then works with it', async () => {
    const { page, watched } = await start({ apiKeys: ['s3cret-key'] });
    const dialog = page.locator('#key-dialog');
    await dialog.waitFor({ state: 'visible', timeout: 10_000 });
    await page.fill('#key-input', 'wrong');
    await page.press('#key-input', 'Enter');
    await page.locator('#key-reason', { hasText: 'the API key is not valid' }).waitFor({ timeout: 10_000 });
    await page.fill('#key-input', 's3cret-key');
    await page.press('#key-input', 'Enter');
    await dialog.waitFor({ state: 'hidden' });
    await page.setInputFiles('#file-input', [
      { name: 'keyed-1.jpg', mimeType: 'image/jpeg', buffer: jpeg },
      { name: 'keyed-2.jpg', mimeType: 'image/jpeg', buffer: jpeg },
    ]);
    await finished(page, 2, 20_000);
    await waitFor('thumbnails loaded with the key', async () => {
      const widths = await page.locator('#grid .card img').evaluateAll((images) => images.map((image) => (image as unknown as { naturalWidth: number }).naturalWidth));
      return widths.length === 2 && widths.every((width) => width > 0);
    }, { timeoutMs: 10_000 });
    assert.equal(await page.evaluate('sessionStorage.getItem("icaas.apiKey")'), 's3cret-key');
    // The only errors are the refused requests before the key was given.
    assert.deepEqual(watched.problems.filter((problem) => !problem.includes('401')), []);
  });

  it('exports the batch as CSV (formula-safe) and JSON', async () => {
    const { page, watched } = await start({ failNames: /broken/ });
    await page.setInputFiles('#file-input', [
      { name: '=cmd|calc!A1.jpg', mimeType: 'image/jpeg', buffer: jpeg },
      { name: '@sum, with comma.jpg', mimeType: 'image/jpeg', buffer: jpeg },
      { name: 'broken.jpg', mimeType: 'image/jpeg', buffer: jpeg },
    ]);
    await finished(page, 3, 30_000);
    const [csvDownload] = await Promise.all([page.waitForEvent('download'), page.click('#export-csv')]);
    const csv = (await readFile((await csvDownload.path())!, 'utf8')).replace(/^\ufeff/, '');
    const lines = csv.trimEnd().split('\r\n');
    assert.equal(lines[0], 'image_id,file,status,label,probability,top5,attempts,instance,error');
    assert.equal(lines.length, 4);
    assert.ok(lines.some((line) => line.includes(`,'=cmd|calc!A1.jpg,done,`)), csv);
    assert.ok(lines.some((line) => line.includes(`,"'@sum, with comma.jpg",done,`)), csv);
    assert.ok(lines.some((line) => /,broken\.jpg,error,,,,3,sim-\d+,the image could not be classified/.test(line)), csv);
    assert.match(csvDownload.suggestedFilename(), /^icaas-batch-[A-Za-z0-9_-]+\.csv$/);

    const [jsonDownload] = await Promise.all([page.waitForEvent('download'), page.click('#export-json')]);
    const json = JSON.parse(await readFile((await jsonDownload.path())!, 'utf8'));
    assert.equal(json.total, 3);
    assert.equal(json.images.length, 3);
    assert.equal(await page.locator('.card[data-status="error"] .meta').textContent(), 'Failed after 3 attempts');
    assert.match((await page.locator('.card[data-status="error"] .error-reason').textContent())!, /could not be classified/);
    assert.deepEqual(watched.problems, []);
  });

  it('works from the keyboard: the drop zone opens the file picker, filters are radio buttons', async () => {
    const { page, watched } = await start();
    await page.keyboard.press('Tab'); // skip link
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate('document.activeElement.id'), 'dropzone');
    const choosing = page.waitForEvent('filechooser');
    // One round trip, so the chooser interception is in place before the key press.
    await page.evaluate('0');
    await page.keyboard.press('Enter');
    const chooser = await choosing;
    assert.ok(chooser.isMultiple());
    await chooser.setFiles([{ name: 'by-keyboard.jpg', mimeType: 'image/jpeg', buffer: jpeg }]);
    await finished(page, 1, 20_000);
    await page.focus('input[name="filter"][value="all"]');
    await page.keyboard.press('ArrowRight');
    assert.equal(await page.evaluate('document.querySelector("input[name=filter]:checked").value'), 'queued');
    await waitFor('no queued cards', async () => (await page.locator('#grid .card').count()) === 0, { timeoutMs: 5000 });
    assert.equal(await page.locator('#empty-title').textContent(), 'No images match');
    assert.deepEqual(watched.problems, []);
  });

  it('uploads files dropped on the page', async () => {
    const { page, watched } = await start();
    const dropped = await page.evaluateHandle(`(() => {
      const bytes = Uint8Array.from(atob('${jpeg.toString('base64')}'), (c) => c.charCodeAt(0));
      const transfer = new DataTransfer();
      transfer.items.add(new File([bytes], 'dropped-1.jpg', { type: 'image/jpeg' }));
      transfer.items.add(new File([bytes], 'dropped-2.jpg', { type: 'image/jpeg' }));
      return transfer;
    })()`);
    await page.dispatchEvent('body', 'dragenter', { dataTransfer: dropped });
    await page.locator('#drop-overlay').waitFor({ state: 'visible' });
    await page.dispatchEvent('body', 'drop', { dataTransfer: dropped });
    await finished(page, 2, 20_000);
    assert.deepEqual((await page.locator('#grid .card .name').allTextContents()).sort(), ['dropped-1.jpg', 'dropped-2.jpg']);
    assert.ok(await page.locator('#drop-overlay').isHidden());
    assert.deepEqual(watched.problems, []);
  });

  it('adds uploads to the running batch and starts a new one once it has finished', async () => {
    const { service, page } = await start();
    service.paused = true;
    await page.setInputFiles('#file-input', [{ name: 'first.jpg', mimeType: 'image/jpeg', buffer: jpeg }]);
    await waitFor('the first batch', async () => (await batchCounters(page)).total === 1, { timeoutMs: 10_000 });
    const first = (await batchCounters(page)).batchId;
    await page.locator('#upload-target', { hasText: 'join the running batch' }).waitFor();
    await page.setInputFiles('#file-input', [{ name: 'second.jpg', mimeType: 'image/jpeg', buffer: jpeg }]);
    await waitFor('both images in one batch', async () => (await batchCounters(page)).total === 2, { timeoutMs: 10_000 });
    assert.equal((await batchCounters(page)).batchId, first);
    service.paused = false;
    await finished(page, 2, 20_000);
    await page.locator('#upload-target', { hasText: 'start a new batch' }).waitFor();
    await page.setInputFiles('#file-input', [{ name: 'third.jpg', mimeType: 'image/jpeg', buffer: jpeg }]);
    await waitFor('a new batch', async () => {
      const counters = await batchCounters(page);
      return counters.batchId !== first && counters.total === 1;
    }, { timeoutMs: 10_000 });
    // The earlier batch stays one click away, and the address names the batch on screen.
    await waitFor('both batches in the recent list', async () => (await page.locator('#recent option').count()) === 3, { timeoutMs: 10_000 });
    assert.match(page.url(), /#batch=/);
  });

  it('links to the API description, which opens as an OpenAPI document', async () => {
    const { page } = await start();
    const link = page.locator('footer a[href="/openapi.json"]');
    await link.waitFor();
    const [response] = await Promise.all([page.waitForResponse((answer) => answer.url().endsWith('/openapi.json')), link.click()]);
    assert.equal(response.status(), 200);
    const doc = (await response.json()) as { openapi: string; paths: Record<string, unknown> };
    assert.match(doc.openapi, /^3\./);
    assert.ok(doc.paths['/api/images'], 'uploads are described');
  });
});
