/** The errors of `icaas aws`: each message says what happened and what to do about it. */

export class AwsProvisionError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AwsProvisionError';
  }
}

/** Teardown found data or running workers and was not forced; nothing was deleted. */
export class TeardownRefusedError extends AwsProvisionError {
  constructor(readonly reasons: string[]) {
    super(`teardown refused, nothing was deleted:\n${reasons.map((reason) => `  - ${reason}`).join('\n')}`);
    this.name = 'TeardownRefusedError';
  }
}

export function errorCode(error: unknown): string {
  const { name, Code } = (error ?? {}) as { name?: unknown; Code?: unknown };
  return typeof Code === 'string' ? Code : typeof name === 'string' ? name : '';
}

export function errorStatus(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
}

const THROTTLING_CODES = new Set(['Throttling', 'ThrottlingException', 'TooManyRequestsException', 'RequestLimitExceeded', 'SlowDown']);

export function isThrottling(error: unknown): boolean {
  return THROTTLING_CODES.has(errorCode(error)) || errorStatus(error) === 429;
}

/** An SDK failure as one line naming the call, with what to check for the usual causes. */
export function describeFailure(call: string, error: unknown): AwsProvisionError {
  if (error instanceof AwsProvisionError) return error;
  const code = errorCode(error);
  const detail = error instanceof Error ? error.message : String(error);
  let hint = '';
  if (/AccessDenied|UnauthorizedOperation|Forbidden|AuthorizationError/.test(code) || errorStatus(error) === 403) {
    hint = ` (the credentials need permission for ${call}; see docs/aws.md for what provisioning needs)`;
  } else if (code === 'CredentialsProviderError' || /InvalidClientTokenId|SignatureDoesNotMatch|ExpiredToken|InvalidAccessKeyId|AuthFailure/.test(code)) {
    hint = ' (run `aws configure`, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)';
  } else if (isThrottling(error)) {
    hint = ' (AWS kept throttling these requests after retries; wait a minute and run the command again)';
  }
  return new AwsProvisionError(`${call} failed: ${code && !detail.startsWith(code) ? `${code}: ` : ''}${detail}${hint}`, { cause: error });
}

/** Runs one SDK call, turning its failure into a described one. */
export async function attempt<T>(call: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (error) {
    throw describeFailure(call, error);
  }
}
