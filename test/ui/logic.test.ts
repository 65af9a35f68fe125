/** The page's pure parts: CSV export, the merge rule for live updates, upload planning. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { batchToCsv, csvCell } from '../../src/ui/csv.js';
import { fileProgress, looksLikeImage, nextChunkSize, retryAfterSeconds } from '../../src/ui/plan.js';
import { BatchState, filterIds, supersedes } from '../../src/ui/state.js';
import type { Image } from '../../src/api-schemas.js';
import { projectRoot } from '../helpers.js';

const image = (overrides: Partial<Image> = {}): Image => ({ id: 'a', name: 'a.jpg', batchId: 'b', status: 'queued', attempts: 0, size: 1000, contentType: 'image/jpeg', ...overrides });
const done = (id: string, label: string, overrides: Partial<Image> = {}): Image =>
  image({ id, name: `${id}.jpg`, status: 'done', attempts: 1, result: { label, probability: 0.9, top5: [{ label, probability: 0.9 }], instanceId: 'i-1' }, finishedAt: 2000, ...overrides });

describe('CSV export', () => {
  it('neutralises cells a spreadsheet would run as formulas', () => {
    for (const text of ['=1+1', '+1', '-1', '@SUM(A1)', '\tx', '\rx']) assert.ok(csvCell(text).replace(/^"/, '').startsWith(`'`), text);
    assert.equal(csvCell('=HYPERLINK("x")'), `"'=HYPERLINK(""x"")"`);
    assert.equal(csvCell('a-b=c'), 'a-b=c');
  });

  it('quotes commas, quotes, line breaks and edge spaces, and leaves numbers alone', () => {
    assert.equal(csvCell('a,b'), '"a,b"');
    assert.equal(csvCell('say "hi"'), '"say ""hi"""');
    assert.equal(csvCell('two\nlines'), '"two\nlines"');
    assert.equal(csvCell(' padded'), '" padded"');
    assert.equal(csvCell(-0.5), '-0.5');
    assert.equal(csvCell(undefined), '');
    assert.equal(csvCell(Number.NaN), '');
  });

  it('writes one row per image with label, top 5 and errors', () => {
    const csv = batchToCsv({
      batchId: 'b', createdAt: 1000, total: 2, done: 1, errors: 1,
      images: [done('x', 'tench'), image({ id: 'y', name: '<img src=x>.jpg', status: 'error', attempts: 3, result: { error: 'hung, 3 attempts' } })],
    });
    assert.equal(csv, [
      'image_id,file,status,label,probability,top5,attempts,instance,error',
      'x,x.jpg,done,tench,0.9,tench 0.9,1,i-1,',
      'y,<img src=x>.jpg,error,,,,3,,"hung, 3 attempts"',
      '',
    ].join('\r\n'));
  });
});

describe('merging live updates', () => {
  it('moves an image only forward and never replaces a final result', () => {
    assert.ok(supersedes(undefined, image()));
    assert.ok(supersedes(image(), image({ status: 'processing', attempts: 1, instanceId: 'i-1' })));
    assert.ok(!supersedes(image({ status: 'processing', attempts: 1, instanceId: 'i-1' }), image()));
    assert.ok(supersedes(image({ status: 'processing', attempts: 1, instanceId: 'i-1' }), image({ status: 'processing', attempts: 2, instanceId: 'i-2' })));
    assert.ok(!supersedes(image({ status: 'processing', attempts: 2, instanceId: 'i-2' }), image({ status: 'processing', attempts: 1, instanceId: 'i-1' })));
    assert.ok(!supersedes(done('a', 'tench'), done('a', 'goldfish')));
    assert.ok(!supersedes(done('a', 'tench'), image({ status: 'error', result: { error: 'late' } })));
  });

  it('counts each image once however often and in whatever order its updates arrive', () => {
    const state = new BatchState('b');
    const updates = [image({ id: '1' }), image({ id: '2' }), image({ id: '1', status: 'processing', attempts: 1 }), done('1', 'tench'), image({ id: '1' }), done('1', 'tench'), done('2', 'daisy', { finishedAt: 5000 }), image({ id: '2', status: 'processing', attempts: 1 })];
    const changes = updates.map((update) => state.apply(update));
    assert.deepEqual(changes, [true, true, true, true, false, false, true, false]);
    assert.deepEqual(state.order, ['1', '2']);
    assert.deepEqual(state.counts, { queued: 0, processing: 0, done: 2, error: 0 });
    assert.ok(state.complete);
    state.createdAt = 1000;
    assert.equal(state.elapsedMs(99_999), 4000, 'a finished batch stops its clock at the last result');
    assert.equal(state.apply(image({ id: '3', batchId: 'other' })), false, 'another batch is ignored');
  });

  it('filters by status and searches names and labels', () => {
    const state = new BatchState('b');
    state.apply(done('cat-photo', 'tabby cat'));
    state.apply(done('fish', 'tench'));
    state.apply(image({ id: 'q', name: 'Queued.JPG' }));
    assert.deepEqual(filterIds(state, 'all', ''), ['cat-photo', 'fish', 'q']);
    assert.deepEqual(filterIds(state, 'done', ''), ['cat-photo', 'fish']);
    assert.deepEqual(filterIds(state, 'all', 'TENCH'), ['fish']);
    assert.deepEqual(filterIds(state, 'all', 'queued.jpg'), ['q']);
    assert.deepEqual(filterIds(state, 'queued', 'cat'), []);
  });
});

describe('upload planning', () => {
  it('groups files by count and bytes, sending an oversized file alone', () => {
    const mb = 1024 * 1024;
    assert.equal(nextChunkSize(Array(120).fill(1000)), 50);
    assert.equal(nextChunkSize([10 * mb, 5 * mb, 2 * mb]), 2);
    assert.equal(nextChunkSize([40 * mb, 1]), 1);
    assert.equal(nextChunkSize([1, 40 * mb]), 1);
    assert.equal(nextChunkSize([]), 0);
    assert.equal(nextChunkSize(Array(10).fill(1), 3), 3);
  });

  it('spreads request progress over the files in order', () => {
    assert.deepEqual(fileProgress([100, 100], 0, 250), [0, 0]);
    assert.deepEqual(fileProgress([100, 100], 125, 250), [1, 0]);
    assert.deepEqual(fileProgress([100, 100], 250, 250), [1, 1]);
    assert.deepEqual(fileProgress([100, 300], 100, 200), [1, 1 / 3]);
  });

  it('reads Retry-After as seconds or a date, within bounds', () => {
    assert.equal(retryAfterSeconds('7'), 7);
    assert.equal(retryAfterSeconds('0'), 1);
    assert.equal(retryAfterSeconds('100000'), 300);
    assert.equal(retryAfterSeconds(new Date(10_000).toUTCString(), 0), 10);
    assert.equal(retryAfterSeconds(null), 5);
  });

  it('keeps images found in folders and skips hidden and other files', () => {
    assert.ok(looksLikeImage('holiday/IMG_0001.JPG', ''));
    assert.ok(looksLikeImage('scan', 'image/png'));
    assert.ok(!looksLikeImage('holiday/.DS_Store', ''));
    assert.ok(!looksLikeImage('holiday/notes.txt', 'text/plain'));
  });
});

describe('the bundle', () => {
  it('takes only types from the API schemas: none of the schema library reaches the browser', async () => {
    const bundle = await readFile(path.join(projectRoot, 'dist', 'ui', 'app.js'), 'utf8');
    assert.ok(bundle.length > 10_000, 'the page is built');
    // Every zod schema object carries its internals under `_zod`; minifying keeps property names.
    assert.ok(!bundle.includes('_zod'), 'zod is bundled');
  });
});
