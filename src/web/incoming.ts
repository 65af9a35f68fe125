/**
 * Uploads still arriving, as the launch controller of the same process sees them. A
 * request's images are queued only once all of them are stored (a failed upload leaves
 * nothing), so without this the first worker would start only then, and every image would
 * wait for its start-up too. Each accepted file updates when its upload is expected to end,
 * from its declared length and the rate its files have arrived at so far. It counts while
 * that end is within the horizon (the workers' idle wait), on either side: a worker started
 * for an upload further off, or one overdue by that much (stalled), would stop for lack of
 * work before its images are queued, and be started again. It counts as the number of
 * images it will hold at its rate of images per byte.
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
    const upload = new IncomingUpload(contentLength, maxImages, this.now, this.horizonMs, () => this.uploads.delete(upload), this.onCounting);
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
  private readonly startedAt: number;
  /** When it is expected to end, as of its last accepted file; unknown without a declared length. */
  private endsAt: number | undefined;
  private counting = false;

  constructor(
    private readonly contentLength: number | undefined,
    private readonly maxImages: number,
    private readonly now: () => number,
    private readonly horizonMs: number,
    private readonly onEnd: () => void,
    private readonly onCounting: () => void,
  ) {
    this.startedAt = now();
  }

  /** One more file of `bytes` was accepted. */
  accepted(bytes: number): void {
    this.images++;
    this.bytes += bytes;
    const length = this.contentLength;
    if (length === undefined || !(length > 0) || this.bytes <= 0) return;
    const now = this.now();
    const elapsed = Math.max(1, now - this.startedAt);
    this.endsAt = now + (Math.max(0, length - this.bytes) / this.bytes) * elapsed;
    const counting = this.expected() > 0;
    if (counting && !this.counting) this.onCounting();
    this.counting = counting;
  }

  /** Its images are queued, or it failed: either way it no longer counts (a second call does nothing). */
  end(): void {
    this.onEnd();
  }

  expected(): number {
    if (this.endsAt === undefined || this.images === 0) return 0;
    const now = this.now();
    if (this.endsAt - now > this.horizonMs || now - this.endsAt > this.horizonMs) return 0;
    return Math.min(this.maxImages, Math.max(this.images, Math.round((this.images * this.contentLength!) / this.bytes)));
  }
}
