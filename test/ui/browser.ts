/**
 * Debian's Chromium driven by playwright-core, with every page watched for what a user
 * would not see but must not happen: console errors, uncaught exceptions, Content-Security-
 * Policy violations and JavaScript dialogs (an injected alert() would open one).
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium, type Browser, type BrowserContextOptions, type Page } from 'playwright-core';
import { projectRoot } from '../helpers.js';

export const CHROMIUM = process.env.ICAAS_CHROMIUM ?? '/usr/bin/chromium';
export const outputDir = path.join(projectRoot, 'test-output');

/** Why browser tests cannot run here, or undefined. CI installs Chromium, so there a missing one fails instead. */
export function browserMissing(): string | undefined {
  if (existsSync(CHROMIUM) || process.env.CI) return undefined;
  return `Chromium not found at ${CHROMIUM} (apt-get install -y chromium)`;
}

export function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

export interface WatchedPage {
  page: Page;
  /** Console errors, page errors and CSP violations, in order. */
  problems: string[];
  /** Messages of JavaScript dialogs (alert, confirm, prompt), each dismissed. */
  dialogs: string[];
  close(): Promise<void>;
}

export async function openPage(browser: Browser, url: string, options: BrowserContextOptions = {}): Promise<WatchedPage> {
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 }, ...options });
  const page = await context.newPage();
  const problems: string[] = [];
  const dialogs: string[] = [];
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console: ${message.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('dialog', (dialog) => {
    dialogs.push(dialog.message());
    void dialog.dismiss();
  });
  await page.exposeFunction('__reportViolation', (text: string) => problems.push(`CSP violation: ${text}`));
  // A string, because this project's Node type-check has no DOM types; it runs in the page.
  await page.addInitScript({
    content: `document.addEventListener('securitypolicyviolation', (event) => {
      window.__reportViolation(event.violatedDirective + ' blocked ' + (event.blockedURI || 'inline') + ' at ' + event.sourceFile + ':' + event.lineNumber);
    });`,
  });
  await page.goto(url);
  return { page, problems, dialogs, close: () => context.close() };
}

export async function screenshot(page: Page, name: string, fullPage = true): Promise<string> {
  await mkdir(outputDir, { recursive: true });
  const file = path.join(outputDir, name);
  await page.screenshot({ path: file, fullPage });
  return file;
}

/** Reads the page's batch counters (data attributes on the results section). */
export async function batchCounters(page: Page): Promise<{ batchId: string; total: number; finished: number }> {
  return page.locator('#results').evaluate((element: any) => ({
    batchId: element.dataset.batchId ?? '',
    total: Number(element.dataset.total ?? 0),
    finished: Number(element.dataset.finished ?? 0),
  }));
}
