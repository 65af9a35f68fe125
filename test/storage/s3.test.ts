import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  BucketAlreadyExists,
  BucketAlreadyOwnedByYou,
  CreateBucketCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  NoSuchBucket,
  NoSuchKey,
  NotFound,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { mockClient } from 'aws-sdk-client-mock';
import S3rver from 's3rver';
import { PreconditionFailedError } from '../../src/storage/port.js';
import { S3ObjectStore } from '../../src/storage/s3.js';
import { makeTempDir } from '../helpers.js';
import { objectStoreContract } from './contract.js';
import { makeS3rverFaithful } from './s3rver-fixes.js';

objectStoreContract('s3 (against s3rver)', async () => {
  const temp = await makeTempDir('icaas-s3rver-');
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: temp.dir });
  makeS3rverFaithful(server);
  const { port } = await server.run();
  const store = new S3ObjectStore({
    region: 'us-east-1',
    endpoint: `http://127.0.0.1:${port}`,
    forcePathStyle: true,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  });
  return {
    store,
    async cleanup() {
      // Destroying the client first closes its keep-alive sockets, which would otherwise
      // hold the server's close() open.
      await store.close();
      server.httpServer?.closeAllConnections();
      await server.close();
      await temp.cleanup();
    },
  };
});

function serviceError(name: string, status: number, message = name): S3ServiceException {
  return new S3ServiceException({ name, $fault: status >= 500 ? 'server' : 'client', $metadata: { httpStatusCode: status }, message });
}

// Paging and everything else the emulators answer is tested over the wire (here on s3rver
// and in s3-emulated.test.ts on fauxqs); the mocks cover what neither produces: refused
// permissions, internal errors, a conflict between concurrent conditional writes, and the
// exact request fields (region constraint, Content-MD5) that the emulators do not check.
describe('S3ObjectStore against a mocked client', () => {
  const setup = (region = 'us-east-1') => {
    const client = new S3Client({ region, credentials: { accessKeyId: 'k', secretAccessKey: 's' } });
    const mock = mockClient(client);
    return { client, mock, store: new S3ObjectStore({ client }) };
  };

  it('reports access denied and other failures naming the operation, bucket and key', async () => {
    const { mock, store } = setup();
    mock.on(PutObjectCommand).rejects(serviceError('AccessDenied', 403, 'Access Denied'));
    mock.on(GetObjectCommand).rejects(serviceError('InternalError', 500, 'We encountered an internal error'));
    mock.on(HeadObjectCommand).rejects(serviceError('Forbidden', 403, 'UnknownError'));
    mock.on(ListObjectsV2Command).rejects(serviceError('AccessDenied', 403));
    await assert.rejects(store.put('bkt', 'images/a.png', Buffer.from('x')), (error: Error) => {
      assert.match(error.message, /S3 put of s3:\/\/bkt\/images\/a\.png failed: access denied/);
      assert.match(error.message, /bucket "bkt"/);
      assert.ok(error.cause instanceof S3ServiceException, 'the SDK error is kept as the cause');
      return true;
    });
    await assert.rejects(store.get('bkt', 'k'), /S3 get of s3:\/\/bkt\/k failed: InternalError \(HTTP 500\): We encountered an internal error/);
    await assert.rejects(store.head('bkt', 'k'), /S3 head of s3:\/\/bkt\/k failed: access denied/);
    await assert.rejects(async () => {
      for await (const _ of store.list('bkt', 'p/')) void _;
    }, /S3 list of s3:\/\/bkt\/p\/\* failed: access denied/);
  });

  it('reports a put into a missing bucket as such', async () => {
    const { mock, store } = setup();
    mock.on(PutObjectCommand).rejects(new NoSuchBucket({ message: 'The specified bucket does not exist', $metadata: { httpStatusCode: 404 } }));
    await assert.rejects(store.put('bkt', 'k', Buffer.from('x')), /S3 put of s3:\/\/bkt\/k failed: bucket "bkt" does not exist/);
  });

  it('sends content type, metadata and an MD5 of the body on put', async () => {
    const { mock, store } = setup();
    mock.on(PutObjectCommand).resolves({});
    await store.put('bkt', 'k', Buffer.from('hello'), { contentType: 'text/plain', metadata: { a: 'b' } });
    const input = mock.commandCalls(PutObjectCommand)[0]?.args[0].input;
    assert.equal(input?.ContentType, 'text/plain');
    assert.deepEqual(input?.Metadata, { a: 'b' });
    assert.equal(input?.ContentMD5, 'XUFAKrxLKna5cZ2REBfFkg==');
    assert.equal(input?.ContentLength, 5);
  });

  it('ensureBucket creates a missing bucket in the client region and tolerates one already created', async () => {
    const { mock, store } = setup('eu-west-1');
    mock.on(HeadBucketCommand).rejectsOnce(new NotFound({ message: 'not found', $metadata: { httpStatusCode: 404 } }));
    mock.on(CreateBucketCommand).rejects(new BucketAlreadyOwnedByYou({ message: 'yours', $metadata: { httpStatusCode: 409 } }));
    await store.ensureBucket('bkt');
    assert.deepEqual(mock.commandCalls(CreateBucketCommand)[0]?.args[0].input, {
      Bucket: 'bkt',
      CreateBucketConfiguration: { LocationConstraint: 'eu-west-1' },
    });
  });

  it('ensureBucket does nothing when the bucket exists and explains a name taken by someone else', async () => {
    const { mock, store } = setup();
    mock.on(HeadBucketCommand).resolves({});
    await store.ensureBucket('bkt');
    assert.equal(mock.commandCalls(CreateBucketCommand).length, 0);

    mock.reset();
    mock.on(HeadBucketCommand).rejects(new NotFound({ message: 'not found', $metadata: { httpStatusCode: 404 } }));
    mock.on(CreateBucketCommand).rejects(new BucketAlreadyExists({ message: 'taken', $metadata: { httpStatusCode: 409 } }));
    await assert.rejects(store.ensureBucket('bkt'), /bucket "bkt" already exists and belongs to another account/);

    mock.reset();
    mock.on(HeadBucketCommand).rejects(serviceError('Forbidden', 403));
    await assert.rejects(store.ensureBucket('bkt'), /S3 check bucket of s3:\/\/bkt failed: access denied/);
  });

  it('leaves a client it was given for the caller to destroy', async () => {
    const { client, store } = setup();
    let destroyed = 0;
    client.destroy = () => {
      destroyed++;
    };
    await store.close();
    assert.equal(destroyed, 0);
  });

  it('fills in defaults when a response omits content type and metadata', async () => {
    const { mock, store } = setup();
    mock.on(HeadObjectCommand).resolves({ ContentLength: 3 });
    assert.deepEqual(await store.head('bkt', 'k'), {
      key: 'k',
      size: 3,
      contentType: 'application/octet-stream',
      metadata: {},
      lastModified: new Date(0),
      etag: '',
    });
  });

  it('sends the condition headers and maps S3\'s refusals to PreconditionFailedError', async () => {
    const { mock, store } = setup();
    mock.on(PutObjectCommand, { Key: 'created' }).resolves({ ETag: '"abc"' });
    mock.on(PutObjectCommand, { Key: 'taken' }).rejects(serviceError('PreconditionFailed', 412, 'At least one of the pre-conditions you specified did not hold'));
    mock.on(PutObjectCommand, { Key: 'raced' }).rejects(serviceError('ConditionalRequestConflict', 409));
    mock.on(PutObjectCommand, { Key: 'gone' }).rejects(new NoSuchKey({ message: 'no key', $metadata: { httpStatusCode: 404 } }));
    mock.on(PutObjectCommand, { Key: 'denied' }).rejects(serviceError('AccessDenied', 403));
    assert.deepEqual(await store.put('bkt', 'created', Buffer.from('x'), { ifNoneMatch: '*' }), { etag: '"abc"' });
    assert.equal(mock.commandCalls(PutObjectCommand)[0]?.args[0].input.IfNoneMatch, '*');
    await store.put('bkt', 'created', Buffer.from('x'), { ifMatch: '"abc"' });
    assert.equal(mock.commandCalls(PutObjectCommand)[1]?.args[0].input.IfMatch, '"abc"');
    await store.put('bkt', 'created', Buffer.from('x'));
    const plain = mock.commandCalls(PutObjectCommand)[2]?.args[0].input;
    assert.equal('IfNoneMatch' in (plain ?? {}) || 'IfMatch' in (plain ?? {}), false, 'an unconditional put sends no condition');
    await assert.rejects(store.put('bkt', 'taken', Buffer.from('x'), { ifNoneMatch: '*' }), PreconditionFailedError);
    await assert.rejects(store.put('bkt', 'raced', Buffer.from('x'), { ifMatch: '"abc"' }), PreconditionFailedError);
    await assert.rejects(store.put('bkt', 'gone', Buffer.from('x'), { ifMatch: '"abc"' }), PreconditionFailedError);
    await assert.rejects(store.put('bkt', 'denied', Buffer.from('x'), { ifNoneMatch: '*' }), /access denied/);
  });
});

describe('s3rver emulation of conditional writes', () => {
  it('judges the condition from the request headers, so a put without them overwrites', async () => {
    const temp = await makeTempDir('icaas-s3rver-');
    const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: temp.dir });
    makeS3rverFaithful(server);
    const { port } = await server.run();
    const client = new S3Client({
      region: 'us-east-1',
      endpoint: `http://127.0.0.1:${port}`,
      forcePathStyle: true,
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
    try {
      await client.send(new CreateBucketCommand({ Bucket: 'wire' }));
      await client.send(new PutObjectCommand({ Bucket: 'wire', Key: 'k', Body: 'one', IfNoneMatch: '*' }));
      await assert.rejects(client.send(new PutObjectCommand({ Bucket: 'wire', Key: 'k', Body: 'two', IfNoneMatch: '*' })), (error: S3ServiceException) => {
        assert.equal(error.$metadata.httpStatusCode, 412);
        assert.equal(error.name, 'PreconditionFailed');
        return true;
      });
      // The same request without the header is an ordinary overwrite: the refusal above came
      // from the header on the wire, not from anything else about the request.
      await client.send(new PutObjectCommand({ Bucket: 'wire', Key: 'k', Body: 'three' }));
      const object = await client.send(new GetObjectCommand({ Bucket: 'wire', Key: 'k' }));
      assert.equal(await object.Body?.transformToString(), 'three');
    } finally {
      client.destroy();
      server.httpServer?.closeAllConnections();
      await server.close();
      await temp.cleanup();
    }
  });
});
