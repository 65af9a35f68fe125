/**
 * The page names what the service needs when a loop keeps failing: here the real web tier
 * against SQS queues that do not exist (a loopback SQS endpoint and the real SDK client).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { Browser } from 'playwright-core';
import { makeTempDir, waitFor } from '../helpers.js';
import { startSqsEndpoint, type SqsEndpoint } from '../queue/sqs-endpoint.js';
import { startInProcessWebTier, type InProcessWebTier } from '../web/in-process.js';
import { browserMissing, launchBrowser, openPage, type WatchedPage } from './browser.js';

describe('page when the queues are missing', { skip: browserMissing() }, () => {
  let temp: { dir: string; cleanup(): Promise<void> } | undefined;
  let sqs: SqsEndpoint | undefined;
  let web: InProcessWebTier | undefined;
  let browser: Browser | undefined;
  let watched: WatchedPage | undefined;

  before(async () => {
    temp = await makeTempDir();
    process.env.AWS_ACCESS_KEY_ID = 'AKIDPAGETEST';
    process.env.AWS_SECRET_ACCESS_KEY = 'page-test-secret';
    sqs = await startSqsEndpoint('missing');
    web = await startInProcessWebTier(temp.dir, ['--queue', 'sqs', '--sqs-endpoint', sqs.url, '--region', 'eu-west-1']);
    browser = await launchBrowser();
  });
  after(async () => {
    await watched?.close().catch(() => {});
    await browser?.close();
    await web?.stop();
    await sqs?.close();
    await temp?.cleanup();
  });

  it('shows what to do, and clears it when the queues appear', async () => {
    watched = await openPage(browser!, web!.url);
    const { page } = watched;
    const problems = page.locator('#service-problems');
    await waitFor('the problems to show', async () => (await problems.isVisible()) && /queues missing: run icaas aws provision/.test(await problems.innerText()), { timeoutMs: 20_000, intervalMs: 200 });
    assert.match(await problems.innerText(), /web tier: queues missing/);
    sqs!.mode = 'empty';
    assert.deepEqual(watched.problems, [], 'no script errors or CSP violations');
    await waitFor('the problems to clear', async () => !(await problems.isVisible()), { timeoutMs: 40_000, intervalMs: 250 });
  });
});
