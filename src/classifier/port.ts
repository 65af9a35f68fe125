export interface Prediction {
  label: string;
  /** Softmax probability, 0-1. */
  probability: number;
  /** Index into the model's label list. */
  index: number;
}

/** Classifier port: image bytes in, the top-k labels with probabilities out. */
export interface Classifier {
  classify(image: Buffer, topK?: number): Promise<Prediction[]>;
  /** A short description for logs, e.g. the model's file and size. */
  readonly description: string;
  close(): Promise<void>;
}

/** The image could not be decoded or is not usable; retrying will not help. */
export class ImageDecodeError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ImageDecodeError';
  }
}
