/**
 * Requests to the service. When the server asks for an API key (401), the page asks the
 * user once, keeps the key for this tab in sessionStorage and retries.
 */
import { byId } from './dom.js';

const KEY_STORAGE = 'icaas.apiKey';

let apiKey: string | undefined = readStoredKey();
let pendingPrompt: Promise<void> | undefined;

function readStoredKey(): string | undefined {
  try {
    return sessionStorage.getItem(KEY_STORAGE) ?? undefined;
  } catch {
    return undefined;
  }
}

export function authHeaders(): Record<string, string> {
  return apiKey ? { authorization: `Bearer ${apiKey}` } : {};
}

/** The URL with the key as a parameter, for requests that cannot send headers (EventSource, img). */
export function withKey(url: string): string {
  if (!apiKey) return url;
  return `${url}${url.includes('?') ? '&' : '?'}key=${encodeURIComponent(apiKey)}`;
}

/** Asks for a key; concurrent callers share one prompt. Resolves once a key is entered. */
export function requestKey(message: string): Promise<void> {
  if (!pendingPrompt) {
    pendingPrompt = promptForKey(message).finally(() => {
      pendingPrompt = undefined;
    });
  }
  return pendingPrompt;
}

function promptForKey(message: string): Promise<void> {
  const dialog = byId<HTMLDialogElement>('key-dialog');
  const form = byId<HTMLFormElement>('key-form');
  const input = byId<HTMLInputElement>('key-input');
  const reason = byId('key-reason');
  reason.textContent = message;
  input.value = '';
  return new Promise((resolve) => {
    const submit = (event: SubmitEvent) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) {
        input.focus();
        return;
      }
      apiKey = value;
      try {
        sessionStorage.setItem(KEY_STORAGE, value);
      } catch {
        // Storage may be disabled; the key then lasts until the page is reloaded.
      }
      form.removeEventListener('submit', submit);
      dialog.close();
      resolve();
    };
    form.addEventListener('submit', submit);
    // Escape would leave the page without a key and every request failing: keep it open.
    dialog.addEventListener('cancel', (event) => event.preventDefault(), { once: true });
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
}

export class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
    this.name = 'ApiError';
  }
}

/** The server's error text from a JSON error body. */
export function errorText(body: unknown, status: number): string {
  if (body && typeof body === 'object' && 'error' in body && typeof (body as { error: unknown }).error === 'string') {
    return (body as { error: string }).error;
  }
  return `the server answered ${status}`;
}

export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  for (;;) {
    const response = await fetch(path, { headers: { accept: 'application/json', ...authHeaders() }, cache: 'no-store', ...(signal ? { signal } : {}) });
    const body: unknown = await response.json().catch(() => undefined);
    if (response.status === 401) {
      await requestKey(errorText(body, 401));
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, errorText(body, response.status));
    return body as T;
  }
}
