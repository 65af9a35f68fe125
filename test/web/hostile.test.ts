/**
 * Hostile uploads against the web tier in-process, on the real embedded adapters and a real
 * socket: every one is answered with a clear 4xx JSON error or a per-file rejection, and
 * leaves nothing in the input bucket or the launch queue.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import sharp from 'sharp';
import { inputKey } from '../../src/messages.js';
import type { Runtime } from '../../src/runtime.js';
import type { WebTier } from '../../src/web/index.js';
import { startInProcessWebTier, type InProcessWebTier } from './in-process.js';
import { drainQueue, makeTempDir, sharedImagesDir, waitFor } from '../helpers.js';

const MAX_FILE_BYTES = 1024 * 1024;
const MAX_PIXELS = 1_000_000;
const MAX_FILES = 5;

interface RawFile {
  /** Sent byte for byte (UTF-8) in the part's filename parameter. */
  name: string;
  body: Buffer;
  type?: string;
}

/** A multipart body built by hand, so names reach the server exactly as written. */
function multipart(files: RawFile[], boundary = `----icaas${Date.now()}`): { body: Buffer; contentType: string } {
  const chunks: Buffer[] = [];
  for (const file of files) {
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="images"; filename="${file.name}"\r\nContent-Type: ${file.type ?? 'application/octet-stream'}\r\n\r\n`, 'utf8'));
    chunks.push(file.body, Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(chunks), contentType: `multipart/form-data; boundary=${boundary}` };
}

/** A PNG whose header claims another size: the decoder would have to allocate for the claim. */
function withDeclaredSize(png: Buffer, width: number, height: number): Buffer {
  const copy = Buffer.from(png);
  // Signature (8), IHDR length (4), "IHDR" (4), then width and height; the CRC covers type and data.
  assert.equal(copy.subarray(12, 16).toString('latin1'), 'IHDR');
  copy.writeUInt32BE(width, 16);
  copy.writeUInt32BE(height, 20);
  copy.writeUInt32BE(crc32(copy.subarray(12, 29)), 29);
  return copy;
}

describe('hostile uploads', async () => {
  const temp = await makeTempDir();
  let runtime: Runtime;
  let web: WebTier;
  let url: string;
  const tench = await readFile(path.join(sharedImagesDir, 'n01440764_tench.JPEG'));
  const brambling = await readFile(path.join(sharedImagesDir, 'n01530575_brambling.JPEG'));

  let tier: InProcessWebTier | undefined;
  before(async () => {
    tier = await startInProcessWebTier(temp.dir, ['--max-files', String(MAX_FILES), '--max-file-bytes', String(MAX_FILE_BYTES), '--max-pixels', String(MAX_PIXELS)]);
    ({ runtime, web, url } = tier);
  });
  after(async () => {
    await tier?.stop();
    await temp.cleanup();
  });

  const inputKeys = async (): Promise<string[]> => {
    const keys: string[] = [];
    for await (const object of runtime.store.list(runtime.config.inputBucket)) keys.push(object.key);
    return keys;
  };
  const queued = async (): Promise<number> => {
    const counts = await runtime.queues.launch.counts();
    return counts.visible + counts.inFlight + counts.delayed;
  };
  /** Runs a hostile request and checks that it left the bucket and the queue as they were. */
  const leavesNothing = async <T>(attempt: () => Promise<T>): Promise<T> => {
    const keysBefore = await inputKeys();
    const queuedBefore = await queued();
    const outcome = await attempt();
    assert.deepEqual(await inputKeys(), keysBefore, 'the input bucket is unchanged');
    assert.equal(await queued(), queuedBefore, 'nothing was queued');
    // A file refused while it streamed in leaves not even a partial write behind.
    assert.deepEqual(await readdir(path.join(temp.dir, 'buckets', runtime.config.inputBucket, '.tmp')), [], 'no temp file is left');
    return outcome;
  };
  const post = async (files: RawFile[]) => {
    const { body, contentType } = multipart(files);
    const response = await fetch(`${url}/api/images`, { method: 'POST', body, headers: { 'content-type': contentType } });
    assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
    assert.equal(response.headers.get('x-content-type-options'), 'nosniff');
    return { status: response.status, body: (await response.json()) as any };
  };
  /** A single bad file: 400 with the file listed as rejected for the expected reason. */
  const rejectsAlone = async (file: RawFile, reason: RegExp) => {
    const { status, body } = await leavesNothing(() => post([file]));
    assert.equal(status, 400, JSON.stringify(body));
    assert.equal(body.error, 'no file was accepted');
    assert.equal(body.rejected.length, 1);
    assert.match(body.rejected[0].reason, reason);
    return body.rejected[0] as { name: string; reason: string };
  };

  it('rejects files that are not images, whatever their name or declared type', async () => {
    const impostors: RawFile[] = [
      { name: 'photo.jpg', body: Buffer.from('just some text, honestly'), type: 'image/jpeg' },
      { name: 'page.png', body: Buffer.from('<html><script>alert(1)</script></html>'), type: 'image/png' },
      { name: 'vector.svg', body: Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'), type: 'image/svg+xml' },
      { name: 'doc.gif', body: Buffer.from('%PDF-1.7\n%\u00e2\u00e3\u00cf\u00d3\n1 0 obj'), type: 'image/gif' },
      { name: 'archive.webp', body: Buffer.from([0x50, 0x4b, 0x03, 0x04, 0x14, 0, 0, 0, 8, 0]), type: 'image/webp' },
      { name: 'program.jpeg', body: Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0, 0, 0, 0, 0]), type: 'image/jpeg' },
    ];
    for (const file of impostors) await rejectsAlone(file, /not an image by its content/);
    // Mixed with a real image, each impostor is rejected on its own and the image is kept.
    const { status, body } = await post([{ name: 'real.jpg', body: tench }, ...impostors.slice(0, 3)]);
    assert.equal(status, 202);
    assert.deepEqual(body.images.map((image: any) => image.name), ['real.jpg']);
    assert.deepEqual(body.rejected.map((rejection: any) => rejection.name), ['photo.jpg', 'page.png', 'vector.svg']);
    await drainQueue(runtime.queues.launch);
  });

  it('rejects a truncated JPEG, an empty file and a file over the size limit', async () => {
    await rejectsAlone({ name: 'half.jpg', body: tench.subarray(0, Math.floor(tench.length / 2)), type: 'image/jpeg' }, /truncated or corrupt/);
    await rejectsAlone({ name: 'header-only.jpg', body: tench.subarray(0, 300), type: 'image/jpeg' }, /truncated|corrupt|header/);
    await rejectsAlone({ name: 'empty.jpg', body: Buffer.alloc(0), type: 'image/jpeg' }, /empty/);
    // Over the limit by one byte, and by far: the server stops reading at the limit either way.
    const over = Buffer.concat([tench, Buffer.alloc(MAX_FILE_BYTES - tench.length + 1)]);
    await rejectsAlone({ name: 'over.jpg', body: over, type: 'image/jpeg' }, /larger than the 1\.0 MiB limit/);
    await rejectsAlone({ name: 'huge.jpg', body: Buffer.concat([tench, Buffer.alloc(20 * MAX_FILE_BYTES)]), type: 'image/jpeg' }, /larger than the 1\.0 MiB limit/);
  });

  it('rejects images over the pixel limit, including decompression bombs, without decoding them', async () => {
    // A real PNG of one colour: 4 million pixels in a few kilobytes.
    const bomb = await sharp({ create: { width: 2000, height: 2000, channels: 3, background: '#000' } }).png({ compressionLevel: 9 }).toBuffer();
    assert.ok(bomb.length < 64 * 1024, `the bomb is small (${bomb.length} bytes)`);
    await rejectsAlone({ name: 'bomb.png', body: bomb, type: 'image/png' }, /2000x2000 pixels, over the limit of 1,000,000 pixels/);
    // A tiny PNG whose header claims 20000 x 20000 (400 million pixels, over a gigabyte decoded).
    const tiny = await sharp({ create: { width: 16, height: 16, channels: 3, background: '#123456' } }).png().toBuffer();
    const started = Date.now();
    await rejectsAlone({ name: 'claims-huge.png', body: withDeclaredSize(tiny, 20_000, 20_000), type: 'image/png' }, /20000x20000 pixels, over the limit/);
    assert.ok(Date.now() - started < 2000, 'rejected from the header, without decoding');
    // The same size in a JPEG header.
    const jpegBomb = await sharp({ create: { width: 1200, height: 1000, channels: 3, background: '#fff' } }).jpeg({ quality: 10 }).toBuffer();
    await rejectsAlone({ name: 'wide.jpg', body: jpegBomb, type: 'image/jpeg' }, /1200x1000 pixels, over the limit/);
  });

  it('answers 413 for more files than the per-request limit, storing none of them', async () => {
    const files = Array.from({ length: MAX_FILES + 1 }, (_, i) => ({ name: `${i}.jpg`, body: tench, type: 'image/jpeg' }));
    const { status, body } = await leavesNothing(() => post(files));
    assert.equal(status, 413);
    assert.match(body.error, new RegExp(`too many files in one request: at most ${MAX_FILES}; nothing was stored`));
    // Exactly the limit is fine.
    const exactly = await post(files.slice(0, MAX_FILES));
    assert.equal(exactly.status, 202);
    assert.equal(exactly.body.images.length, MAX_FILES);
    await drainQueue(runtime.queues.launch);
  });

  it('answers malformed bodies with 4xx JSON errors', async () => {
    const send = async (body: string | Buffer, contentType: string) => leavesNothing(async () => {
      const response = await fetch(`${url}/api/images`, { method: 'POST', body, headers: { 'content-type': contentType } });
      return { status: response.status, body: (await response.json()) as any };
    });
    const noBoundary = await send('--x\r\n\r\n', 'multipart/form-data');
    assert.ok(noBoundary.status >= 400 && noBoundary.status < 500, JSON.stringify(noBoundary));
    assert.equal(typeof noBoundary.body.error, 'string');
    const garbage = await send(Buffer.from('this is not multipart at all'), 'multipart/form-data; boundary=abc');
    assert.equal(garbage.status, 400, JSON.stringify(garbage));
    const onlyFields = await send('--abc\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--abc--\r\n', 'multipart/form-data; boundary=abc');
    assert.equal(onlyFields.status, 400);
    assert.match(onlyFields.body.error, /no files/);
    const json = await send('{"images": []}', 'application/json');
    assert.equal(json.status, 415);
  });

  describe('a body that ends midway', () => {
    /**
     * Sends the headers and part of a three-image body on a raw socket, waits until the
     * server has stored the first image, then ends the connection the given way.
     */
    const abandon = async (how: 'end' | 'destroy', encoding: 'length' | 'chunked') => {
      const keysBefore = await inputKeys();
      const queuedBefore = await queued();
      const { body, contentType } = multipart([
        { name: 'one.jpg', body: tench, type: 'image/jpeg' },
        { name: 'two.jpg', body: brambling, type: 'image/jpeg' },
        { name: 'three.jpg', body: tench, type: 'image/jpeg' },
      ]);
      const cut = tench.length + brambling.length + 200;
      // Ports are recorded on connection: a destroyed socket no longer reports them.
      const serverSockets: { socket: net.Socket; remotePort: number | undefined }[] = [];
      const onConnection = (socket: net.Socket) => serverSockets.push({ socket, remotePort: socket.remotePort });
      web.server.app.server.on('connection', onConnection);
      const socket = net.connect(new URL(url).port as unknown as number, '127.0.0.1');
      let answer = '';
      socket.on('data', (chunk) => (answer += chunk.toString('utf8')));
      socket.on('error', () => {});
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      try {
        await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
        const localPort = socket.localPort;
        const head = [
          'POST /api/images HTTP/1.1',
          `Host: 127.0.0.1`,
          `Content-Type: ${contentType}`,
          encoding === 'length' ? `Content-Length: ${body.length}` : 'Transfer-Encoding: chunked',
          '', '',
        ].join('\r\n');
        const partial = body.subarray(0, cut);
        socket.write(head);
        socket.write(encoding === 'length' ? partial : Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), partial]));
        // The first image is whole in what was sent: wait until the server has stored it.
        await waitFor('the server to store the first image', async () => (await inputKeys()).length > keysBefore.length, { timeoutMs: 10_000 });
        if (how === 'end') socket.end();
        else socket.destroy();
        const server = await waitFor('the server side of the connection', () => serverSockets.find((candidate) => candidate.remotePort === localPort));
        await waitFor('the server to close the connection', () => server.socket.destroyed, { timeoutMs: 10_000 });
        await waitFor('the stored image to be deleted again', async () => (await inputKeys()).length === keysBefore.length, { timeoutMs: 10_000 });
        assert.deepEqual(await inputKeys(), keysBefore);
        assert.equal(await queued(), queuedBefore);
        if (how === 'end') {
          // The client can still read after ending its side: it hears why, in JSON.
          await closed;
          assert.match(answer, /^HTTP\/1\.1 400 /);
          assert.match(answer, /\r\nx-content-type-options: nosniff\r\n/i);
          assert.match(answer, /\r\n\r\n\{"error":"the request is malformed or ended before it was complete; nothing was stored"\}$/);
        }
      } finally {
        web.server.app.server.off('connection', onConnection);
        socket.destroy();
      }
      // The server carries on.
      const health = await fetch(`${url}/healthz`);
      assert.equal(health.status, 200);
      const next = await post([{ name: 'after.jpg', body: tench, type: 'image/jpeg' }]);
      assert.equal(next.status, 202);
      await drainQueue(runtime.queues.launch);
    };

    it('ends the request (content length), and nothing is stored', () => abandon('end', 'length'));
    it('drops the connection (content length), and nothing is stored', () => abandon('destroy', 'length'));
    it('drops the connection (chunked), and nothing is stored', () => abandon('destroy', 'chunked'));
  });

  it('accepts hostile file names, stores under its own keys and shows them sanitised', async () => {
    const names = [
      '../../../../etc/passwd.jpg',
      '..\\..\\windows\\system32\\config.jpg',
      '/absolute/path/to/file.jpg',
      '..',
      'bell\u0007null\u0000escape\u001b[31mred\u007f.jpg',
      'tab\there.jpg',
      'spoof\u202egpj.exe',
      `${'n'.repeat(1000)}.jpg`,
      'snow ☃ 猫 🐈 é.jpg',
      '<img src=x onerror=alert(1)>.jpg',
    ];
    const { status, body } = await post(names.map((name, i) => ({ name, body: i % 2 ? tench : brambling, type: 'image/jpeg' })).slice(0, MAX_FILES));
    const second = await post(names.slice(MAX_FILES).map((name) => ({ name, body: tench, type: 'image/jpeg' })));
    assert.equal(status, 202, JSON.stringify(body));
    assert.equal(second.status, 202, JSON.stringify(second.body));
    const images = [...body.images, ...second.body.images] as { id: string; name: string }[];
    assert.equal(images.length, names.length);
    const shown = images.map((image) => image.name);
    assert.deepEqual(shown.slice(0, 4), ['../../../../etc/passwd.jpg', '../../windows/system32/config.jpg', '/absolute/path/to/file.jpg', '..']);
    assert.equal(shown[4], 'bellnullescape[31mred.jpg');
    assert.equal(shown[5], 'tabhere.jpg');
    assert.equal(shown[6], 'spoofgpj.exe');
    assert.equal([...shown[7]!].length, 255);
    assert.ok(shown[7]!.endsWith('….jpg'));
    assert.equal(shown[8], 'snow ☃ 猫 🐈 é.jpg');
    assert.equal(shown[9], '<img src=x onerror=alert(1)>.jpg');
    for (const name of shown) assert.doesNotMatch(name, /[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/);

    // Keys are the server's own: batch and image ids, nothing of the name.
    const keys = (await inputKeys()).filter((key) => key.startsWith(`images/${body.batchId}/`) || key.startsWith(`images/${second.body.batchId}/`));
    const expected = [...body.images.map((image: any) => inputKey(body.batchId, image.id)), ...second.body.images.map((image: any) => inputKey(second.body.batchId, image.id))];
    assert.deepEqual(keys.sort(), expected.sort());
    for (const key of keys) assert.match(key, /^images\/[A-Za-z0-9_-]{16}\/[A-Za-z0-9_-]{16}$/);
    // Nothing was written outside the data folder's buckets.
    await assert.rejects(readFile(path.join(temp.dir, 'etc', 'passwd.jpg')));

    // The stored image comes back with a safe download name.
    const input = await fetch(`${url}/api/images/${images[0]!.id}/input`);
    assert.equal(input.status, 200);
    assert.equal(input.headers.get('content-type'), 'image/jpeg');
    assert.equal(input.headers.get('content-disposition'), "inline; filename*=UTF-8''passwd.jpg");
    const spoof = await fetch(`${url}/api/images/${images[6]!.id}/input`);
    assert.equal(spoof.headers.get('content-disposition'), "inline; filename*=UTF-8''spoofgpj.exe");
    // The batch shows the same sanitised names.
    const batch = (await (await fetch(`${url}/api/batches/${body.batchId}`)).json()) as any;
    assert.deepEqual(batch.images.map((image: any) => image.name), shown.slice(0, MAX_FILES));
    await drainQueue(runtime.queues.launch);
  });
});
