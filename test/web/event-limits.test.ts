/**
 * Live events cannot make the web tier's memory grow without bound: the number of clients
 * is limited, and a client that stops reading is written nothing more than its socket's
 * buffer holds, then disconnected. Real servers, raw sockets that stop reading.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { batchManifestKey, inputKey, type BatchManifest } from '../../src/messages.js';
import { FsObjectStore } from '../../src/storage/fs.js';
import { EventHub } from '../../src/web/events.js';
import { ResultsIndex } from '../../src/web/results.js';
import { startInProcessWebTier, type InProcessWebTier } from './in-process.js';
import { makeTempDir, serverSentEvents, waitFor } from '../helpers.js';

/** A batch of one image with a long name, so that every event about it is large. */
function bigNameManifest(batchId: string, nameBytes: number): BatchManifest {
  const imageId = `${batchId}-image`;
  return { batchId, createdAt: Date.now(), launched: true, images: [{ imageId, name: `${'n'.repeat(nameBytes)}.jpg`, key: inputKey(batchId, imageId), size: 1, contentType: 'image/jpeg' }] };
}

/** Opens an event stream on a raw socket, reads up to the first event, then stops reading. */
async function stalledClient(port: number, batchId: string): Promise<{ socket: net.Socket; closed: Promise<void> }> {
  const socket = net.connect(port, '127.0.0.1');
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.on('error', () => {});
  socket.write(`GET /api/events?batch=${batchId} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
  let text = '';
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      text += chunk.toString('latin1');
      if (!text.includes('event: hello')) return;
      socket.off('data', onData);
      resolve();
    };
    socket.on('data', onData);
    socket.once('close', () => reject(new Error(`closed before the first event: ${text}`)));
  });
  assert.match(text, /^HTTP\/1\.1 200/);
  socket.pause();
  return { socket, closed };
}

describe('live-event limits on the web tier', async () => {
  const temp = await makeTempDir();
  let tier: InProcessWebTier;
  before(async () => {
    tier = await startInProcessWebTier(temp.dir, ['--max-event-clients', '3']);
  });
  after(async () => {
    await tier?.stop();
    await temp.cleanup();
  });

  it('answers 429 with Retry-After and a JSON error at one client over the limit, and takes clients again once one leaves', async () => {
    const controllers = [new AbortController(), new AbortController(), new AbortController()];
    const streams = await Promise.all(controllers.map((controller) => fetch(`${tier.url}/api/events`, { signal: controller.signal })));
    assert.deepEqual(streams.map((stream) => stream.status), [200, 200, 200]);
    await waitFor('three clients', () => tier.web.server.hub.clientCount === 3);
    const refused = await fetch(`${tier.url}/api/events?batch=AAAAAAAAAAAAAAAA`);
    assert.equal(refused.status, 429);
    assert.match(refused.headers.get('retry-after') ?? '', /^\d+$/);
    assert.match(refused.headers.get('content-type') ?? '', /^application\/json/);
    assert.match(refused.headers.get('x-content-type-options') ?? '', /nosniff/);
    assert.match(((await refused.json()) as { error: string }).error, /limit of 3/);
    controllers[0]!.abort();
    await waitFor('a client to leave', () => tier.web.server.hub.clientCount === 2);
    const again = new AbortController();
    const admitted = await fetch(`${tier.url}/api/events`, { signal: again.signal });
    assert.equal(admitted.status, 200);
    again.abort();
    for (const controller of controllers) controller.abort();
    await waitFor('every client to leave', () => tier.web.server.hub.clientCount === 0);
  });

  it('keeps what it buffers for a client that stops reading small, and disconnects it once it falls behind', async () => {
    const { runtime } = tier;
    const manifest = bigNameManifest('STALLEDREADER001', 64 * 1024);
    await runtime.store.put(runtime.config.inputBucket, batchManifestKey(manifest.batchId, 'upload1'), Buffer.from(JSON.stringify(manifest)));
    const { port } = new URL(tier.url);
    const hub = tier.web.server.hub;
    const { socket, closed } = await stalledClient(Number(port), manifest.batchId);
    await waitFor('the client to be attached', () => hub.clientCount === 1);

    // 300 progress notes of about 64 KiB each: some 20 MB for a client that reads nothing.
    const imageId = manifest.images[0]!.imageId;
    let most = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        most = Math.max(most, ...hub.bufferedBytes(), 0);
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    })();
    for (let attempt = 1; attempt <= 300; attempt++) {
      await runtime.queues.output.send(JSON.stringify({ type: 'progress', imageId, batchId: manifest.batchId, instanceId: `i-${attempt}`, attempt, at: Date.now() }));
    }
    await waitFor('the stalled client to be disconnected', () => hub.clientCount === 0, { timeoutMs: 60_000 });
    sampling = false;
    await sampler;
    // The socket's own buffer (16 KiB), one event that filled it, and a status snapshot.
    assert.ok(most > 0, 'something was buffered for the client');
    assert.ok(most <= 16 * 1024 + 70 * 1024 + 16 * 1024, `at most ${most} bytes were buffered`);
    assert.ok(hub.slowDisconnects >= 1);
    socket.resume();
    await closed;
  });
});

describe('a slow event-stream reader', async () => {
  const temp = await makeTempDir();
  const index = new ResultsIndex(new FsObjectStore(temp.dir), 'icaas-input', 'icaas-output');
  let hub: EventHub;
  let server: http.Server;
  let port: number;
  const manifest = bigNameManifest('SLOWREADERBATCH1', 32 * 1024);
  const imageId = manifest.images[0]!.imageId;
  // An image of another batch, whose events the reader must never see.
  const other = bigNameManifest('OTHERBATCH000001', 10);

  const serve = async (options: ConstructorParameters<typeof EventHub>[1]) => {
    hub = new EventHub(index, options);
    server = http.createServer((request, response) => hub.attach(request, response, new URL(request.url!, 'http://x').searchParams.get('batch') ?? undefined, request.headers['last-event-id'] as string | undefined));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as net.AddressInfo).port;
  };
  const close = async () => {
    hub.closeAll();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    index.removeAllListeners();
  };
  before(() => {
    index.addManifest(manifest, false);
    index.addManifest(other, false);
  });
  after(() => temp.cleanup());

  it('gets every event of its batch once and in order when it reads slowly', async () => {
    await serve({ maxBehindBytes: 1024 ** 3 });
    try {
      const controller = new AbortController();
      const response = await fetch(`http://127.0.0.1:${port}/?batch=${manifest.batchId}`, { signal: controller.signal });
      const attempts: number[] = [];
      const reader = (async () => {
        let read = 0;
        for await (const event of serverSentEvents(response.body!)) {
          if (event.event !== 'image') continue;
          const image = JSON.parse(event.data) as { id: string; attempts: number };
          assert.equal(image.id, imageId);
          attempts.push(image.attempts);
          // Reads in fits and starts, so the server's writes keep finding the socket full.
          if (++read % 20 === 0) await new Promise((resolve) => setTimeout(resolve, 50));
          if (attempts.length === 400) break;
        }
      })();
      await waitFor('the client', () => hub.clientCount === 1);
      for (let attempt = 1; attempt <= 400; attempt++) {
        index.recordProgress(imageId, 'i-1', attempt);
        index.recordProgress(other.images[0]!.imageId, 'i-2', attempt);
      }
      await reader;
      controller.abort();
      assert.deepEqual(attempts, Array.from({ length: 400 }, (_, i) => i + 1));
    } finally {
      await close();
    }
  });

  it('does not count a client that left before its stream started', async () => {
    hub = new EventHub(index, {});
    let received!: () => void;
    const arrived = new Promise<void>((resolve) => (received = resolve));
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    let requestClosed!: Promise<void>;
    // As the service does: the batch is read (here: held at the gate) before the stream starts.
    server = http.createServer(async (request, response) => {
      requestClosed = new Promise((resolve) => request.once('close', () => resolve()));
      received();
      await gate;
      hub.attach(request, response, manifest.batchId, undefined);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as net.AddressInfo).port;
    try {
      const socket = net.connect(port, '127.0.0.1');
      socket.on('error', () => {});
      socket.write(`GET /?batch=${manifest.batchId} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
      await arrived;
      socket.destroy();
      await requestClosed;
      open();
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(hub.clientCount, 0);
    } finally {
      await close();
    }
  });

  it('is disconnected once it has taken nothing for longer than the time bound', async () => {
    await serve({ maxBehindBytes: 1024 ** 3, maxBlockedMs: 300 });
    try {
      const { socket, closed } = await stalledClient(port, manifest.batchId);
      await waitFor('the client', () => hub.clientCount === 1);
      // Events until the socket's buffers are full (the kernel's can take tens of MB): its
      // buffer is still full a while after the last write.
      let attempt = 1000;
      await waitFor('the socket to be full', () => {
        if ((hub.bufferedBytes()[0] ?? 0) >= 16 * 1024) return true;
        for (let i = 0; i < 100; i++) index.recordProgress(imageId, 'i-1', ++attempt);
        return false;
      });
      // No more events: only the status broadcasts (every second in the service) go on.
      await waitFor('the blocked client to be disconnected', () => {
        hub.broadcastStatus({ instances: [] });
        return hub.clientCount === 0;
      }, { timeoutMs: 10_000, intervalMs: 100 });
      socket.resume();
      await closed;
    } finally {
      await close();
    }
  });
});
