/** The class names file: a JSON array of strings, index-aligned with the model's output. */
import { readFile } from 'node:fs/promises';

export class LabelsError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'LabelsError';
  }
}

/** Checks parsed JSON is a non-empty array of non-empty strings; `source` names it in errors. */
export function parseLabels(text: string, source: string, expectedCount?: number): string[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new LabelsError(`labels file ${source} is not valid JSON: ${(error as Error).message}`, { cause: error });
  }
  if (!Array.isArray(parsed)) throw new LabelsError(`labels file ${source} must hold a JSON array of class names, got ${typeof parsed}`);
  const bad = parsed.findIndex((item) => typeof item !== 'string' || item.trim() === '');
  if (bad !== -1) throw new LabelsError(`labels file ${source}: entry ${bad} is ${JSON.stringify(parsed[bad])}, expected a non-empty class name`);
  if (parsed.length === 0) throw new LabelsError(`labels file ${source} is an empty array`);
  if (expectedCount !== undefined && parsed.length !== expectedCount) {
    throw new LabelsError(`labels file ${source} has ${parsed.length} class names but the model has ${expectedCount} outputs; use the labels that belong to this model (--labels / ICAAS_LABELS)`);
  }
  return parsed as string[];
}

export async function readLabels(file: string, expectedCount?: number): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new LabelsError(`cannot read labels file ${file}: ${(error as Error).message}`, { cause: error });
  }
  return parseLabels(text, file, expectedCount);
}
