/**
 * Accuracy floor over the shared ImageNet sample. The set has known hard and mislabelled
 * images (its README expects about 80% top-1), so this checks a floor, never every image.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { LABELS_FILE, MODEL_FILE } from '../../src/classifier/model.js';
import { createOnnxClassifier } from '../../src/classifier/onnx.js';
import { sharedImagesDir, sharedModelsDir } from '../helpers.js';

interface Row {
  file: string;
  classIndex: number;
  label: string;
}

async function readLabelsCsv(): Promise<Row[]> {
  const lines = (await readFile(path.join(sharedImagesDir, 'labels.csv'), 'utf8')).trim().split(/\r?\n/);
  const header = lines[0]!.split(',');
  const col = (name: string): number => {
    const at = header.indexOf(name);
    assert.notEqual(at, -1, `labels.csv has no column ${name}`);
    return at;
  };
  const [file, classIndex, label] = [col('file'), col('class_index'), col('label')];
  return lines.slice(1).map((line) => {
    const cells = line.split(',');
    return { file: cells[file]!, classIndex: Number(cells[classIndex]), label: cells[label]! };
  });
}

test('top-1 and top-5 accuracy over the 100 shared ImageNet images', async (t) => {
  const rows = await readLabelsCsv();
  assert.equal(rows.length, 100);
  const labels: string[] = JSON.parse(await readFile(path.join(sharedModelsDir, LABELS_FILE), 'utf8'));
  // The CSV names classes as the labels JSON does; compare by name, as a user would.
  for (const row of rows) assert.equal(labels[row.classIndex], row.label, `${row.file}: CSV label and labels JSON disagree`);

  const classifier = await createOnnxClassifier({ modelPath: path.join(sharedModelsDir, MODEL_FILE), labelsPath: path.join(sharedModelsDir, LABELS_FILE) });
  let top1 = 0;
  let top5 = 0;
  const misses: string[] = [];
  try {
    for (const row of rows) {
      const predictions = await classifier.classify(await readFile(path.join(sharedImagesDir, row.file)), 5);
      if (predictions[0]?.label === row.label) top1++;
      else misses.push(`${row.file}: ${predictions[0]?.label}`);
      if (predictions.some((p) => p.label === row.label)) top5++;
    }
  } finally {
    await classifier.close();
  }
  const top1Rate = top1 / rows.length;
  const top5Rate = top5 / rows.length;
  t.diagnostic(`top-1 ${(top1Rate * 100).toFixed(0)}% (${top1}/${rows.length}), top-5 ${(top5Rate * 100).toFixed(0)}% (${top5}/${rows.length})`);
  assert.ok(top1Rate >= 0.75, `top-1 ${top1Rate} below 0.75; misses:\n${misses.join('\n')}`);
  assert.ok(top5Rate >= 0.9, `top-5 ${top5Rate} below 0.9`);
});
