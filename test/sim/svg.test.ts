/** The chart is a well-formed standalone SVG: balanced tags, a viewBox, no external resources. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { simulate } from '../../src/sim/engine.js';
import { preset } from '../../src/sim/presets.js';
import { chart } from '../../src/sim/svg.js';
import { parseTrace } from '../../src/sim/traces.js';

/** Checks that every element closes in order and returns the root's attributes. */
function parseXml(text: string): { root: string; attributes: Record<string, string>; elements: string[] } {
  const stack: string[] = [];
  const elements: string[] = [];
  let root: string | undefined;
  let rootAttributes: Record<string, string> = {};
  const tag = /<(\/?)([a-zA-Z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g;
  let position = 0;
  for (let match = tag.exec(text); match; match = tag.exec(text)) {
    const between = text.slice(position, match.index);
    assert.doesNotMatch(between, /[<>]/, `stray markup before ${match[0]}`);
    assert.doesNotMatch(between, /&(?!amp;|lt;|gt;|quot;)/, 'bare ampersand');
    position = tag.lastIndex;
    const [, closing, name, attributeText, selfClosing] = match;
    if (closing) {
      assert.equal(stack.pop(), name, `</${name}> closes what was opened`);
      continue;
    }
    elements.push(name!);
    if (root === undefined) {
      root = name!;
      rootAttributes = Object.fromEntries([...attributeText!.matchAll(/([\w:-]+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!]));
    } else {
      assert.ok(stack.length > 0, `<${name}> outside the root`);
    }
    if (!selfClosing) stack.push(name!);
  }
  assert.doesNotMatch(text.slice(position), /[<>]/, 'stray markup at the end');
  assert.deepEqual(stack, [], 'every element closed');
  return { root: root!, attributes: rootAttributes, elements };
}

describe('chart', () => {
  it('is well-formed, with a viewBox, axes labels and a panel per policy', () => {
    const p = preset('local');
    const runs = ['queue-match', 'drain-time'].map((policy) => simulate({
      trace: parseTrace('burst:100', 1), policy, max: p.max, capacity: 2, startup: p.startup, service: p.service,
      startCostMs: p.startCostMs, startupPriorMs: p.startupPriorMs, idleWaitMs: 5000, launchIntervalMs: 500, seed: 1,
    }));
    const svg = chart(runs, 'burst:100 <local> & "friends"');
    const { root, attributes, elements } = parseXml(svg);
    assert.equal(root, 'svg');
    assert.equal(attributes.xmlns, 'http://www.w3.org/2000/svg');
    const [x, y, width, height] = attributes.viewBox!.split(' ').map(Number);
    assert.deepEqual([x, y], [0, 0]);
    assert.equal(width, Number(attributes.width));
    assert.equal(height, Number(attributes.height));
    assert.equal(elements.filter((name) => name === 'polyline').length, 8, 'four lines per policy');
    assert.match(svg, />time \(s\)</);
    assert.match(svg, />instances</);
    assert.match(svg, />images waiting</);
    assert.match(svg, />queue-match</);
    assert.match(svg, />drain-time</);
    assert.match(svg, /burst:100 &lt;local&gt; &amp; &quot;friends&quot;/);
    assert.doesNotMatch(svg, /href|<image|<script|url\(/, 'no external resources');
  });
});
