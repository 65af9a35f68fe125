import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadClassifier } from '../../src/classifier/index.js';
import { LabelsError } from '../../src/classifier/labels.js';
import { LABELS_FILE, MODEL_FILE } from '../../src/classifier/model.js';
import { ModelLoadError, createOnnxClassifier } from '../../src/classifier/onnx.js';
import { ImageDecodeError, type Classifier } from '../../src/classifier/port.js';
import { makeTempDir, sharedImagesDir, sharedModelsDir } from '../helpers.js';
import { capturingLogger, logged, showLog } from '../log-capture.js';

const modelPath = path.join(sharedModelsDir, MODEL_FILE);
const labelsPath = path.join(sharedModelsDir, LABELS_FILE);
/** An image the default model gets right with a wide margin. */
const BRAMBLING = 'n01530575_brambling.JPEG';

describe('createOnnxClassifier', () => {
  let classifier: Classifier;
  let brambling: Buffer;

  before(async () => {
    classifier = await createOnnxClassifier({ modelPath, labelsPath });
    brambling = await readFile(path.join(sharedImagesDir, BRAMBLING));
  });
  after(() => classifier.close());

  it('describes itself by model file and size', () => {
    assert.equal(classifier.description, 'mobilenetv2-12-int8.onnx (3.5 MB)');
  });

  it('returns the top 5 labels, most probable first, with softmax probabilities', async () => {
    const predictions = await classifier.classify(brambling);
    assert.equal(predictions.length, 5);
    assert.deepEqual(
      { label: predictions[0]!.label, index: predictions[0]!.index },
      { label: 'brambling', index: 10 },
    );
    assert.ok(predictions[0]!.probability > 0.5, `brambling probability ${predictions[0]!.probability}`);
    for (let i = 1; i < predictions.length; i++) assert.ok(predictions[i - 1]!.probability >= predictions[i]!.probability);
    const total = predictions.reduce((sum, p) => sum + p.probability, 0);
    assert.ok(total > 0 && total <= 1 + 1e-6);
  });

  it('honours topK and refuses a bad one', async () => {
    assert.equal((await classifier.classify(brambling, 1)).length, 1);
    assert.equal((await classifier.classify(brambling, 2000)).length, 1000);
    await assert.rejects(classifier.classify(brambling, 0), RangeError);
  });

  it('gives the same answer for the same image, also when called concurrently', async () => {
    const first = await classifier.classify(brambling);
    const again = await Promise.all([classifier.classify(brambling), classifier.classify(brambling), classifier.classify(brambling)]);
    for (const result of again) assert.deepEqual(result, first);
  });

  it('passes on ImageDecodeError for bytes that are not an image', async () => {
    await assert.rejects(classifier.classify(Buffer.from('GIF89a but not really')), ImageDecodeError);
  });

  it('applies maxPixels', async () => {
    const small = await createOnnxClassifier({ modelPath, labelsPath, maxPixels: 1000 });
    try {
      await assert.rejects(small.classify(brambling), (error: unknown) => error instanceof ImageDecodeError && /over the limit of 1000 pixels/.test(error.message));
    } finally {
      await small.close();
    }
  });

  it('refuses to classify after close', async () => {
    const short = await createOnnxClassifier({ modelPath, labelsPath });
    await short.close();
    await short.close();
    await assert.rejects(short.classify(brambling), /closed/);
  });
});

describe('loading errors', () => {
  let temp: { dir: string; cleanup(): Promise<void> };
  before(async () => {
    temp = await makeTempDir('icaas-onnx-');
  });
  after(() => temp.cleanup());

  it('refuses labels that do not match the model output size', async () => {
    const labels: string[] = JSON.parse(await readFile(labelsPath, 'utf8'));
    const short = path.join(temp.dir, 'short.json');
    await writeFile(short, JSON.stringify(labels.slice(0, 999)));
    await assert.rejects(createOnnxClassifier({ modelPath, labelsPath: short }), (error: unknown) => {
      assert.ok(error instanceof LabelsError);
      assert.match(error.message, /has 999 class names but the model has 1000 outputs/);
      return true;
    });
  });

  it('refuses a labels file that is not a JSON array of names', async () => {
    const bad = path.join(temp.dir, 'bad.json');
    await writeFile(bad, '{"0": "tench"}');
    await assert.rejects(createOnnxClassifier({ modelPath, labelsPath: bad }), /must hold a JSON array/);
    await writeFile(bad, '["tench", 7]');
    await assert.rejects(createOnnxClassifier({ modelPath, labelsPath: bad }), /entry 1 is 7/);
  });

  it('names the file when the model is not a valid ONNX model', async () => {
    const fake = path.join(temp.dir, 'fake.onnx');
    await writeFile(fake, 'not a model');
    await assert.rejects(createOnnxClassifier({ modelPath: fake, labelsPath }), (error: unknown) => {
      assert.ok(error instanceof ModelLoadError);
      assert.match(error.message, /cannot load model .*fake\.onnx/);
      return true;
    });
  });

  it('refuses a thread count that is not a positive whole number', async () => {
    await assert.rejects(createOnnxClassifier({ modelPath, labelsPath, threads: 0 }), RangeError);
  });
});

describe('loadClassifier', () => {
  it('finds the shared model when nothing is configured and reports where it came from', async () => {
    const temp = await makeTempDir('icaas-load-');
    const { log, entries } = capturingLogger();
    try {
      const { classifier, modelPath: found, source } = await loadClassifier({ model: '', labels: '', cacheDir: temp.dir, log });
      try {
        assert.equal(source, 'shared');
        assert.equal(found, modelPath);
        const [loaded] = logged(entries, { msg: 'classifier loaded', source: 'shared', modelPath });
        assert.match(String(loaded?.classifier), /mobilenetv2-12-int8\.onnx \(3\.5 MB\)/, showLog(entries));
      } finally {
        await classifier.close();
      }
    } finally {
      await temp.cleanup();
    }
  });
});
