/**
 * Uploads still arriving, as the launch controller of the same process sees them. A
 * request's images are queued only once all of them are stored (a failed upload leaves
 * nothing), so without this the first worker would start only then, and every image would
 * wait for its start-up too. An upload counts here once it is expected to end within the
 * horizon (the workers' idle wait: a worker started for it is still waiting when its images
 * are queued, instead of stopping for lack of work and being started again), judged from
 * its declared length and the rate its files have arrived at so far. It counts as the
 * number of images it will hold at that rate of images per byte.
 */
export class IncomingUploads {
  private readonly uploads = new Set<IncomingUpload>();

  constructor(
    private readonly horizonMs: number,
    /** Told when an upload starts counting, so the launch controller can look at once. */
    private readonly onCounting: () => void = () => {},
    private readonly now: () => number = () => performance.now(),
  ) {}

  /**
   * An upload begins; `contentLength` is its request's declared length, when there is one.
   * The client declares it, so what an upload counts as is bounded by `maxImages`, the
   * files one request may hold, and by the rate its bytes really arrive at.
   */
  begin(contentLength: number | undefined, maxImages: number): IncomingUpload {
    const upload = new IncomingUpload(contentLength, maxImages, this.now(), this.now, this.horizonMs, () => this.uploads.delete(upload), this.onCounting);
    this.uploads.add(upload);
    return upload;
  }

  /** Images expected from the uploads due to end within the horizon. */
  expected(): number {
    let images = 0;
    for (const upload of this.uploads) images += upload.expected();
    return images;
  }
}

export class IncomingUpload {
  private images = 0;
  private bytes = 0;
  private counted = false;

  constructor(
    private readonly contentLength: number | undefined,
    private readonly maxImages: number,
    private readonly startedAt: number,
    private readonly now: () => number,
    private readonly horizonMs: number,
    private readonly onEnd: () => void,
    private readonly onCounting: () => void,
  ) {}

  /** One more file of `bytes` was accepted. */
  accepted(bytes: number): void {
    this.images++;
    this.bytes += bytes;
    if (!this.counted && this.expected() > 0) {
      this.counted = true;
      this.onCounting();
    }
  }

  /** Its images are queued, or it failed: either way it no longer counts (a second call does nothing). */
  end(): void {
    this.onEnd();
  }

  expected(): number {
    const length = this.contentLength;
    // Without a declared length there is no telling when it ends.
    if (length === undefined || !(length > 0) || this.images === 0 || this.bytes <= 0) return 0;
    const elapsed = Math.max(1, this.now() - this.startedAt);
    const left = Math.max(0, length - this.bytes);
    if ((left / this.bytes) * elapsed > this.horizonMs) return 0;
    return Math.min(this.maxImages, Math.max(this.images, Math.round((this.images * length) / this.bytes)));
  }
}
