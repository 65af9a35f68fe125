/**
 * What a deployment still holds when it is torn down: objects in its buckets (a bucket
 * that holds any cannot be deleted, and they are someone's images and results) and worker
 * instances still running on its role.
 */
import { DeleteObjectsCommand, ListObjectsV2Command, ListObjectVersionsCommand, type ObjectIdentifier, type S3Client } from '@aws-sdk/client-s3';
import { DescribeInstancesCommand, TerminateInstancesCommand, type EC2Client } from '@aws-sdk/client-ec2';
import { TAG_DEPLOYMENT, TAG_ROLE, WORKER_ROLE } from '../compute/ec2.js';
import { attempt, AwsProvisionError, errorCode } from './errors.js';

/**
 * How a bucket is listed: by versions on S3, where a bucket with versioning turned on (by
 * hand, say) keeps old versions and delete markers that also stop its deletion; by plain
 * listing on S3-compatible services without versioning.
 */
export type Listing = 'versions' | 'objects';

const PAGE = 1000;

async function listPage(s3: S3Client, bucket: string, listing: Listing, maxKeys: number): Promise<ObjectIdentifier[] | null> {
  try {
    if (listing === 'objects') {
      const page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, MaxKeys: maxKeys }));
      return (page.Contents ?? []).flatMap((object) => (object.Key === undefined ? [] : [{ Key: object.Key }]));
    }
    const page = await s3.send(new ListObjectVersionsCommand({ Bucket: bucket, MaxKeys: maxKeys }));
    return [...(page.Versions ?? []), ...(page.DeleteMarkers ?? [])].flatMap((entry) =>
      entry.Key === undefined ? [] : [{ Key: entry.Key, ...(entry.VersionId && entry.VersionId !== 'null' ? { VersionId: entry.VersionId } : {}) }],
    );
  } catch (error) {
    if (errorCode(error) === 'NoSuchBucket') return null;
    throw error;
  }
}

/** Whether the bucket holds anything; a bucket that is gone holds nothing. */
export async function bucketHoldsObjects(s3: S3Client, bucket: string, listing: Listing): Promise<boolean> {
  const page = await attempt(`listing S3 bucket ${bucket}`, () => listPage(s3, bucket, listing, 1));
  return (page?.length ?? 0) > 0;
}

/**
 * Deletes everything in the bucket (every version and delete marker) and returns how many
 * entries went. Stops at the first page S3 would not delete entirely: what could not be
 * deleted is named, and the caller deletes nothing more.
 */
export async function emptyBucket(s3: S3Client, bucket: string, listing: Listing): Promise<number> {
  let deleted = 0;
  for (;;) {
    const page = await attempt(`listing S3 bucket ${bucket}`, () => listPage(s3, bucket, listing, PAGE));
    if (!page || page.length === 0) return deleted;
    const response = await attempt(`deleting objects of S3 bucket ${bucket}`, () => s3.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: page, Quiet: true } })));
    const errors = response.Errors ?? [];
    if (errors.length > 0) {
      const first = errors[0]!;
      const which = `${first.Key}${first.VersionId ? ` (version ${first.VersionId})` : ''}`;
      throw new AwsProvisionError(
        `could not empty S3 bucket ${bucket}: ${errors.length} of ${page.length} objects were not deleted, e.g. ${which}: ${first.Code} ${first.Message ?? ''}`.trim() +
          `; ${deleted + page.length - errors.length} were deleted. Nothing else was deleted; remove those objects (object lock or a bucket policy may keep them), then run teardown again`,
      );
    }
    deleted += page.length;
  }
}

/** The deployment's worker instances that still exist (by tag), at most a few pages. */
export async function activeWorkers(ec2: EC2Client, deployment: string): Promise<string[]> {
  const ids: string[] = [];
  let nextToken: string | undefined;
  do {
    const command = new DescribeInstancesCommand({
      Filters: [
        { Name: `tag:${TAG_DEPLOYMENT}`, Values: [deployment] },
        { Name: `tag:${TAG_ROLE}`, Values: [WORKER_ROLE] },
        { Name: 'instance-state-name', Values: ['pending', 'running', 'stopping', 'stopped'] },
      ],
      ...(nextToken ? { NextToken: nextToken } : {}),
    });
    const page = await attempt('ec2:DescribeInstances', () => ec2.send(command));
    for (const reservation of page.Reservations ?? []) {
      for (const instance of reservation.Instances ?? []) if (instance.InstanceId) ids.push(instance.InstanceId);
    }
    nextToken = page.NextToken || undefined;
  } while (nextToken);
  return ids;
}

export async function terminateWorkers(ec2: EC2Client, ids: string[]): Promise<void> {
  for (let start = 0; start < ids.length; start += PAGE) {
    const batch = ids.slice(start, start + PAGE);
    await attempt('ec2:TerminateInstances', () => ec2.send(new TerminateInstancesCommand({ InstanceIds: batch })));
  }
}
