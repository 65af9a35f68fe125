/**
 * The icaas page: upload many images, follow their classification live, watch the
 * worker tier scale. It talks only to the public HTTP API.
 */
import { getJson, ApiError } from './api.js';
import { batchToCsv, batchToJson } from './csv.js';
import { Dashboard } from './dashboard.js';
import { byId, frameScheduler, h, setText } from './dom.js';
import { formatBytes, formatCount, formatDuration, formatRate, plural, shortId } from './format.js';
import { VirtualGrid } from './grid.js';
import { Live, type ConnectionState } from './live.js';
import { BatchState, filterIds } from './state.js';
import type { ApiBatch, ImageStatus, Rejection, StatusSnapshot } from './types.js';
import { droppedEntries, expandEntries, filesFromInput, Uploader, type NamedFile, type Pending } from './upload.js';

type Filter = ImageStatus | 'all';

const RECENT_KEY = 'icaas.recent';
const MAX_RECENT = 8;
const MAX_TRANSFER_ROWS = 30;
const MAX_REJECTION_ROWS = 200;

let batch: BatchState | undefined;
/** The batch the current run of uploads adds to; it sticks until the run ends. */
let uploadBatch: string | undefined;
let filter: Filter = 'all';
let query = '';
let filtered: string[] = [];
let filterStale = true;
let serverOffsetMs = 0;
let lastAnnounced = 0;
let announcedComplete = false;
let rejectionCount = 0;

const grid = new VirtualGrid(byId<HTMLOListElement>('grid'), (id) => batch?.images.get(id));
const dashboard = new Dashboard();
const render = frameScheduler(renderPage);

const live = new Live({
  image(image) {
    if (batch?.apply(image)) changed();
  },
  status(status: StatusSnapshot) {
    serverOffsetMs = status.at - Date.now();
    dashboard.update(status, (imageId) => batch?.images.get(imageId)?.name);
  },
  resync() {
    void resync();
  },
  state: showConnection,
});

const uploader = new Uploader({
  target: () => uploadBatch ?? (batch && !batch.complete ? batch.batchId : undefined),
  accepted(batchId, images) {
    if (batch?.batchId !== batchId) openBatch(batchId);
    uploadBatch = batchId;
    for (const image of images) batch!.apply({ ...image, batchId });
    changed();
  },
  rejected: addRejections,
  batchGone(batchId) {
    if (uploadBatch === batchId) uploadBatch = undefined;
    if (batch?.batchId === batchId) closeBatch();
  },
  changed() {
    if (!uploader.active) uploadBatch = undefined;
    render();
  },
});

function changed(): void {
  filterStale = true;
  render();
}

// ---- batches -------------------------------------------------------------------------

function openBatch(batchId: string): void {
  batch = new BatchState(batchId);
  filterStale = true;
  announcedComplete = false;
  lastAnnounced = 0;
  grid.clear();
  if (location.hash !== `#batch=${batchId}`) history.replaceState(null, '', `#batch=${encodeURIComponent(batchId)}`);
  live.follow(batchId);
  render();
}

function closeBatch(): void {
  batch = undefined;
  grid.clear();
  history.replaceState(null, '', location.pathname + location.search);
  live.follow(undefined);
  changed();
}

async function resync(): Promise<void> {
  const current = batch;
  if (!current) return;
  try {
    const snapshot = await getJson<ApiBatch>(`/api/batches/${encodeURIComponent(current.batchId)}`);
    if (batch !== current) return;
    if (snapshot.createdAt !== undefined) current.createdAt = snapshot.createdAt;
    for (const image of snapshot.images) current.apply(image);
    remember(current);
    changed();
  } catch (error) {
    if (batch !== current) return;
    if (error instanceof ApiError && error.status === 404) {
      // The server does not know the batch (a mistyped link, or its data was removed).
      closeBatch();
      setText(byId('empty-title'), 'Batch not found');
      setText(byId('empty-text'), `The server has no batch ${current.batchId}.`);
    }
  }
}

function remember(state: BatchState): void {
  const recent = readRecent().filter((entry) => entry.id !== state.batchId);
  recent.unshift({ id: state.batchId, at: state.createdAt ?? Date.now(), total: state.total });
  try {
    localStorage.setItem(RECENT_KEY, JSON.stringify(recent.slice(0, MAX_RECENT)));
  } catch {
    // Without storage the list of recent batches simply stays empty.
  }
  renderRecent();
}

function readRecent(): { id: string; at: number; total: number }[] {
  try {
    const parsed: unknown = JSON.parse(localStorage.getItem(RECENT_KEY) ?? '[]');
    if (!Array.isArray(parsed)) return [];
    return parsed.filter((entry): entry is { id: string; at: number; total: number } =>
      typeof entry?.id === 'string' && /^[A-Za-z0-9_-]{1,64}$/.test(entry.id) && typeof entry.at === 'number' && typeof entry.total === 'number');
  } catch {
    return [];
  }
}

function renderRecent(): void {
  const select = byId<HTMLSelectElement>('recent');
  const recent = readRecent();
  const time = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  select.replaceChildren(
    h('option', { text: recent.length ? 'Recent batches' : 'No recent batches', attrs: { value: '' } }),
    ...recent.map((entry) => h('option', { text: `${time.format(entry.at)} · ${plural(entry.total, 'image')} · ${shortId(entry.id)}`, attrs: { value: entry.id } })));
  select.value = '';
  select.disabled = recent.length === 0;
}

// ---- rendering -----------------------------------------------------------------------

function renderPage(): void {
  renderTransfers();
  renderUploadTarget();
  renderBatch();
}

function renderBatch(): void {
  const results = byId('results');
  const total = batch?.total ?? 0;
  const counts = batch?.counts ?? { queued: 0, processing: 0, done: 0, error: 0 };
  const finished = counts.done + counts.error;
  results.dataset.batchId = batch?.batchId ?? '';
  results.dataset.total = String(total);
  results.dataset.finished = String(finished);

  setText(byId('batch-title'), batch ? `Batch ${shortId(batch.batchId)}` : 'Results');
  const sub = !batch ? 'No batch yet' : batch.complete ? `Finished · ${plural(total, 'image')}` : total === 0 ? 'Starting…' : `Running · ${plural(total, 'image')}`;
  setText(byId('batch-sub'), sub);
  byId('batch-title').title = batch?.batchId ?? '';

  setText(byId('stat-done'), `${formatCount(counts.done)} / ${formatCount(total)}`);
  setText(byId('stat-errors'), formatCount(counts.error));
  byId('stat-errors').classList.toggle('has-errors', counts.error > 0);
  const elapsed = batch?.elapsedMs(Date.now() + serverOffsetMs);
  setText(byId('stat-elapsed'), elapsed === undefined ? '–' : formatDuration(elapsed));
  setText(byId('stat-rate'), elapsed && finished > 0 ? formatRate(finished / (elapsed / 1000)) : '–');

  const share = (n: number) => (total > 0 ? (n / total) * 100 : 0);
  byId('p-done').style.width = `${share(counts.done)}%`;
  byId('p-error').style.width = `${share(counts.error)}%`;
  byId('p-processing').style.width = `${share(counts.processing)}%`;
  const progress = byId('progress');
  progress.setAttribute('aria-valuenow', String(Math.round(share(finished))));
  progress.setAttribute('aria-valuetext', `${formatCount(finished)} of ${formatCount(total)} images finished`);

  for (const key of ['queued', 'processing', 'done', 'error'] as const) setText(byId(`count-${key}`), formatCount(counts[key]));
  setText(byId('count-all'), formatCount(total));

  for (const id of ['export-csv', 'export-json']) byId<HTMLButtonElement>(id).disabled = !batch || total === 0;
  byId<HTMLButtonElement>('new-batch').disabled = !batch || uploader.active;

  announce(finished, total, counts.error, elapsed);

  if (filterStale) {
    filtered = batch ? filterIds(batch, filter, query) : [];
    filterStale = false;
    grid.setIds(filtered);
  }
  const empty = byId('empty');
  empty.hidden = filtered.length > 0;
  if (batch && filtered.length === 0) {
    setText(byId('empty-title'), total === 0 ? 'Waiting for the first images' : 'No images match');
    setText(byId('empty-text'), total === 0 ? 'Cards appear as soon as the server accepts the files.' : 'Try another filter or search.');
  } else if (!batch && byId('empty-title').textContent !== 'Batch not found') {
    setText(byId('empty-title'), 'Nothing here yet');
    setText(byId('empty-text'), 'Drop images above; each one gets a card that fills in as it is classified.');
  }
  grid.layout();
}

/** Screen readers hear progress at a calm pace, and the end of the batch at once. */
function announce(finished: number, total: number, errors: number, elapsed: number | undefined): void {
  const region = byId('live-summary');
  if (!batch || total === 0) return;
  if (batch.complete) {
    if (announcedComplete) return;
    announcedComplete = true;
    region.textContent = `Batch finished: ${plural(total, 'image')}, ${plural(errors, 'error')}${elapsed !== undefined ? `, in ${formatDuration(elapsed)}` : ''}.`;
    return;
  }
  announcedComplete = false;
  if (Date.now() - lastAnnounced < 5000) return;
  lastAnnounced = Date.now();
  region.textContent = `${formatCount(finished)} of ${plural(total, 'image')} classified, ${plural(errors, 'error')}.`;
}

function renderUploadTarget(): void {
  const target = uploadBatch ?? (batch && !batch.complete ? batch.batchId : undefined);
  const text = uploader.active && target
    ? `Uploading into batch ${shortId(target)}; more files join it.`
    : target
      ? `New images join the running batch ${shortId(target)}.`
      : 'New images start a new batch.';
  setText(byId('upload-target'), text);
}

const transferRows = new Map<number, { li: HTMLLIElement; fill: HTMLSpanElement; state: HTMLSpanElement }>();

function renderTransfers(): void {
  const panel = byId('transfers');
  panel.hidden = !uploader.active;
  if (!uploader.active) {
    transferRows.clear();
    byId('transfer-list').replaceChildren();
    return;
  }
  const sentBytes = uploader.doneBytes + uploader.inFlightBytes;
  const seconds = (performance.now() - uploader.startedAt) / 1000;
  const speed = seconds > 1 ? ` · ${formatBytes(sentBytes / seconds)}/s` : '';
  setText(byId('transfer-summary'),
    `Uploading ${formatCount(uploader.doneFiles)} of ${plural(uploader.totalFiles, 'file')} · ${formatBytes(sentBytes)} of ${formatBytes(uploader.totalBytes)}${speed}`);
  byId('transfer-bar').style.width = `${uploader.totalBytes > 0 ? (sentBytes / uploader.totalBytes) * 100 : 0}%`;
  setText(byId('transfer-notice'), uploader.notice ?? '');

  const shown = uploader.pending.slice(0, MAX_TRANSFER_ROWS);
  const keep = new Set(shown.map((item) => item.uid));
  for (const uid of transferRows.keys()) if (!keep.has(uid)) transferRows.delete(uid);
  const items: HTMLElement[] = shown.map((item) => {
    let row = transferRows.get(item.uid);
    if (!row) {
      const fill = h('span');
      const state = h('span', { class: 't-state' });
      const li = h('li', {},
        h('span', { class: 't-name', text: item.name, attrs: { title: item.name } }),
        h('span', { class: 't-size', text: formatBytes(item.file.size) }),
        h('span', { class: 'meter small', attrs: { 'aria-hidden': 'true' } }, fill),
        state);
      row = { li, fill, state };
      transferRows.set(item.uid, row);
    }
    row.li.dataset.state = item.state;
    row.fill.style.width = `${Math.round(item.progress * 100)}%`;
    setText(row.state, transferState(item));
    return row.li;
  });
  const more = uploader.pending.length - shown.length;
  if (more > 0) items.push(h('li', { class: 'more', text: `and ${plural(more, 'more file')} waiting` }));
  byId('transfer-list').replaceChildren(...items);
}

function transferState(item: Pending): string {
  switch (item.state) {
    case 'waiting':
      return 'waiting';
    case 'sending':
      return `${Math.round(item.progress * 100)}%`;
    case 'checking':
      return 'checking';
  }
}

function addRejections(rejections: Rejection[]): void {
  if (rejections.length === 0) return;
  const list = byId('rejected-list');
  for (const rejection of rejections) {
    rejectionCount++;
    if (rejectionCount > MAX_REJECTION_ROWS) continue;
    list.append(h('li', {}, h('span', { class: 'r-name', text: rejection.name }), h('span', { class: 'r-reason', text: rejection.reason })));
  }
  const hidden = rejectionCount - Math.min(rejectionCount, MAX_REJECTION_ROWS);
  setText(byId('rejected-title'), `Not accepted (${formatCount(rejectionCount)})${hidden > 0 ? `, ${formatCount(hidden)} not listed` : ''}`);
  byId('rejections').hidden = false;
}

const CONNECTION_TEXT: Record<ConnectionState, string> = {
  idle: 'Idle',
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
};

function showConnection(state: ConnectionState): void {
  const element = byId('connection');
  element.dataset.state = state;
  setText(byId('connection-text'), CONNECTION_TEXT[state]);
}

// ---- export --------------------------------------------------------------------------

async function exportBatch(kind: 'csv' | 'json'): Promise<void> {
  if (!batch) return;
  const snapshot = await getJson<ApiBatch>(`/api/batches/${encodeURIComponent(batch.batchId)}`);
  // A BOM lets spreadsheet programs read the UTF-8 file names correctly.
  const blob = kind === 'csv'
    ? new Blob(['\ufeff', batchToCsv(snapshot)], { type: 'text/csv;charset=utf-8' })
    : new Blob([batchToJson(snapshot)], { type: 'application/json' });
  const url = URL.createObjectURL(blob);
  const link = h('a', { attrs: { href: url, download: `icaas-batch-${snapshot.batchId}.${kind}` } });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// ---- input ---------------------------------------------------------------------------

function enqueue(files: NamedFile[]): void {
  if (files.length === 0) return;
  uploader.enqueue(files);
}

function wireInput(): void {
  const fileInput = byId<HTMLInputElement>('file-input');
  const folderInput = byId<HTMLInputElement>('folder-input');
  byId('dropzone').addEventListener('click', () => fileInput.click());
  byId('choose-folder').addEventListener('click', () => folderInput.click());
  for (const input of [fileInput, folderInput]) {
    input.addEventListener('change', () => {
      enqueue(filesFromInput(input));
      input.value = '';
    });
  }
  // Folder selection is not offered where the browser lacks it (most phones).
  if (!('webkitdirectory' in folderInput)) byId('choose-folder').hidden = true;

  const overlay = byId('drop-overlay');
  const dropzone = byId('dropzone');
  let depth = 0;
  const hasFiles = (event: DragEvent) => Array.from(event.dataTransfer?.types ?? []).includes('Files');
  const hide = () => {
    depth = 0;
    overlay.hidden = true;
    dropzone.classList.remove('dragging');
  };
  window.addEventListener('dragenter', (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth++;
    overlay.hidden = false;
    dropzone.classList.add('dragging');
  });
  window.addEventListener('dragover', (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = 'copy';
  });
  window.addEventListener('dragleave', (event) => {
    if (!hasFiles(event)) return;
    depth = Math.max(0, depth - 1);
    if (depth === 0) hide();
  });
  window.addEventListener('drop', (event) => {
    if (!hasFiles(event) || !event.dataTransfer) return;
    event.preventDefault();
    hide();
    const { entries, files } = droppedEntries(event.dataTransfer);
    const loose = files.map((file) => ({ file, name: file.name }));
    void expandEntries(entries).then((expanded) => enqueue([...expanded, ...loose]));
  });
  document.addEventListener('paste', (event) => {
    const files = Array.from(event.clipboardData?.files ?? []);
    if (files.length === 0) return;
    event.preventDefault();
    enqueue(files.map((file, i) => ({ file, name: file.name && file.name !== 'image.png' ? file.name : `pasted-${Date.now()}-${i + 1}.${file.type.split('/')[1] ?? 'png'}` })));
  });

  byId('cancel-uploads').addEventListener('click', () => uploader.cancel());
  byId('clear-rejections').addEventListener('click', () => {
    rejectionCount = 0;
    byId('rejected-list').replaceChildren();
    byId('rejections').hidden = true;
  });

  for (const radio of document.querySelectorAll<HTMLInputElement>('input[name="filter"]')) {
    radio.addEventListener('change', () => {
      if (!radio.checked) return;
      filter = radio.value as Filter;
      changed();
      window.scrollTo({ top: Math.min(window.scrollY, byId('results').offsetTop) });
    });
  }
  let searchTimer = 0;
  byId<HTMLInputElement>('search').addEventListener('input', (event) => {
    clearTimeout(searchTimer);
    searchTimer = window.setTimeout(() => {
      query = (event.target as HTMLInputElement).value;
      changed();
    }, 120);
  });

  byId('export-csv').addEventListener('click', () => void exportBatch('csv').catch(reportError));
  byId('export-json').addEventListener('click', () => void exportBatch('json').catch(reportError));
  byId('new-batch').addEventListener('click', () => {
    closeBatch();
    byId('dropzone').focus();
  });
  byId<HTMLSelectElement>('recent').addEventListener('change', (event) => {
    const id = (event.target as HTMLSelectElement).value;
    if (id && id !== batch?.batchId) openBatch(id);
  });
  window.addEventListener('hashchange', () => {
    const id = batchFromHash();
    if (id && id !== batch?.batchId) openBatch(id);
  });
}

function reportError(error: unknown): void {
  addRejections([{ name: 'Export', reason: error instanceof Error ? error.message : String(error) }]);
}

function batchFromHash(): string | undefined {
  const match = /^#batch=([A-Za-z0-9_-]{1,64})$/.exec(location.hash);
  return match?.[1];
}

// ---- start ---------------------------------------------------------------------------

wireInput();
renderRecent();
const initial = batchFromHash();
if (initial) openBatch(initial);
else live.follow(undefined);
// Elapsed time moves on its own while a batch runs.
setInterval(() => {
  if (batch && !batch.complete && batch.total > 0) render();
}, 1000);
render();
