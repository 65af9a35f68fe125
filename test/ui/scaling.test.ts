/**
 * The page says why the tier has its size: the launch policy's last decision, as the
 * controllers publish it in the output bucket and the real web tier serves it.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { Browser } from 'playwright-core';
import { CONTROLLER_HEALTH_KEY, type ControllerHealth } from '../../src/health.js';
import { makeTempDir, waitFor } from '../helpers.js';
import { startInProcessWebTier, type InProcessWebTier } from '../web/in-process.js';
import { browserMissing, launchBrowser, openPage, type WatchedPage } from './browser.js';

describe('page: why the tier has its size', { skip: browserMissing() }, () => {
  let temp: { dir: string; cleanup(): Promise<void> } | undefined;
  let web: InProcessWebTier | undefined;
  let browser: Browser | undefined;
  let watched: WatchedPage | undefined;

  const publish = async (scaling: ControllerHealth['scaling']) => {
    const report: ControllerHealth = { writtenAt: Date.now(), loops: [], ...(scaling ? { scaling } : {}) };
    await web!.runtime.store.put(web!.runtime.config.outputBucket, CONTROLLER_HEALTH_KEY, Buffer.from(JSON.stringify(report)), { contentType: 'application/json' });
  };

  before(async () => {
    temp = await makeTempDir();
    web = await startInProcessWebTier(temp.dir);
    browser = await launchBrowser();
  });
  after(async () => {
    await watched?.close().catch(() => {});
    await browser?.close();
    await web?.stop();
    await temp?.cleanup();
  });

  it('shows the backlog, drain time, capacity and reason, and marks assumed times', async () => {
    watched = await openPage(browser!, web!.url);
    const { page } = watched;
    const why = page.locator('#scaling-why');
    assert.equal(await why.isVisible(), false, 'hidden until the controllers have reported');
    await publish({
      policy: 'drain-time', capacity: 2, max: 20, backlog: 880, inFlight: 2, target: 2, drainMs: 9_400,
      serviceMs: 21, startupMs: 1_800, measured: { service: true, startup: false },
      reason: 'at capacity: 2 can usefully run at once', at: Date.now(),
    });
    await waitFor('the scaling decision to show', async () => (await why.isVisible()) && /at capacity/.test(await why.innerText()), { timeoutMs: 15_000, intervalMs: 200 });
    const text = await why.innerText();
    assert.match(text, /882/, 'waiting counts the backlog and the images in flight');
    assert.match(text, /9\.4 s/);
    assert.match(text, /2 at once/);
    assert.match(text, /21 ms/);
    assert.doesNotMatch(text, /21 ms \(assumed\)/, 'a measured time is not marked');
    assert.match(text, /1\.8 s \(assumed\)/, 'a prior is marked as assumed');
    assert.match(text, /drain-time: at capacity/);
    assert.equal(await page.locator('#scaling').getAttribute('data-policy'), 'drain-time');
    assert.deepEqual(watched.problems, [], 'no script errors or CSP violations');
  });

  it('escapes a hostile reason instead of rendering it', async () => {
    const { page } = watched!;
    await publish({
      policy: 'queue-match', capacity: 20, max: 20, backlog: 0, inFlight: 0, target: 0, drainMs: null,
      serviceMs: 100, startupMs: 2000, measured: { service: false, startup: false },
      reason: '<img src=x onerror="window.pwned=1">', at: Date.now(),
    });
    await waitFor('the new decision to show', async () => (await page.locator('#why-reason').innerText()).includes('queue-match'), { timeoutMs: 15_000, intervalMs: 200 });
    assert.equal(await page.locator('#scaling-why img').count(), 0);
    assert.equal(await page.evaluate('window.pwned'), undefined);
    assert.match(await page.locator('#why-drain').innerText(), /–/);
  });
});
