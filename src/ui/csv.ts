/** Batch export as CSV and JSON, built in the browser from GET /api/batches/:id. */
import { isError, isOk, type ApiBatch } from './types.js';

/**
 * One CSV cell. Text that a spreadsheet would read as a formula (leading = + - @, tab or
 * carriage return) gets a leading apostrophe, so a hostile file name stays inert text.
 */
export function csvCell(value: string | number | undefined | null): string {
  if (value === undefined || value === null) return '';
  if (typeof value === 'number') return Number.isFinite(value) ? String(value) : '';
  let text = value;
  if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\r\n]/.test(text) || text !== text.trim() ? `"${text.replace(/"/g, '""')}"` : text;
}

export function toCsv(rows: (string | number | undefined | null)[][]): string {
  return rows.map((row) => row.map(csvCell).join(',')).join('\r\n') + '\r\n';
}

export const CSV_COLUMNS = ['image_id', 'file', 'status', 'label', 'probability', 'top5', 'attempts', 'instance', 'error'] as const;

const round = (p: number) => Number(p.toFixed(6));

export function batchToCsv(batch: ApiBatch): string {
  const rows: (string | number | undefined)[][] = [CSV_COLUMNS.slice()];
  for (const image of batch.images) {
    const result = image.result;
    rows.push([
      image.id,
      image.name,
      image.status,
      isOk(result) ? result.label : undefined,
      isOk(result) ? round(result.probability) : undefined,
      isOk(result) ? result.top5.map((p) => `${p.label} ${round(p.probability)}`).join('; ') : undefined,
      image.attempts ?? 0,
      isOk(result) ? result.instanceId : image.instanceId,
      isError(result) ? result.error : undefined,
    ]);
  }
  return toCsv(rows);
}

export function batchToJson(batch: ApiBatch): string {
  return JSON.stringify(batch, null, 2) + '\n';
}
