// Minimal page: upload, then follow the batch over server-sent events.
interface ApiImage {
  id: string;
  name: string;
  status: string;
  result?: { label?: string; probability?: number; error?: string };
}

const form = document.querySelector<HTMLFormElement>('#upload')!;
const input = document.querySelector<HTMLInputElement>('#files')!;
const tbody = document.querySelector<HTMLTableSectionElement>('#results')!;
const summary = document.querySelector<HTMLElement>('#summary')!;
const rejectedList = document.querySelector<HTMLUListElement>('#rejected')!;
const rows = new Map<string, HTMLTableRowElement>();

function render(image: ApiImage): void {
  let row = rows.get(image.id);
  if (!row) {
    row = tbody.insertRow();
    for (let i = 0; i < 4; i++) row.insertCell();
    rows.set(image.id, row);
  }
  const cells = row.cells;
  cells[0]!.textContent = image.name;
  cells[1]!.textContent = image.status;
  cells[2]!.textContent = image.result?.label ?? image.result?.error ?? '';
  cells[3]!.textContent = image.result?.probability !== undefined ? `${(image.result.probability * 100).toFixed(1)}%` : '';
}

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const files = input.files;
  if (!files || files.length === 0) return;
  const body = new FormData();
  for (const file of Array.from(files)) body.append('images', file, file.name);
  summary.textContent = `Uploading ${files.length} files…`;
  const response = await fetch('/api/images', { method: 'POST', body });
  const outcome = (await response.json()) as { batchId?: string; images?: ApiImage[]; rejected?: { name: string; reason: string }[]; error?: string };
  for (const rejection of outcome.rejected ?? []) {
    const item = document.createElement('li');
    item.textContent = `${rejection.name}: ${rejection.reason}`;
    rejectedList.append(item);
  }
  if (!outcome.batchId) {
    summary.textContent = outcome.error ?? 'Upload failed';
    return;
  }
  for (const image of outcome.images ?? []) render(image);
  summary.textContent = `Batch ${outcome.batchId}: ${outcome.images?.length ?? 0} queued`;
  const events = new EventSource(`/api/events?batch=${encodeURIComponent(outcome.batchId)}`);
  events.addEventListener('image', (message) => render(JSON.parse((message as MessageEvent<string>).data) as ApiImage));
});
