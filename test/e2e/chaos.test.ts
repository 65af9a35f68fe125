/**
 * A short chaos run inside the test suite (the long one is `npm run chaos`): 80 images by
 * 10 concurrent clients into the embedded service run as separate processes, while a
 * random worker is killed every second and the web tier and the controllers are each
 * killed and restarted once. See test/chaos/checks.ts for what is checked. Two shorter variants
 * run two controller processes at once, and step every process's wall clock back 30 s.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { formatReport, runChaos, type ChaosReport } from '../chaos/run.js';

describe('chaos', () => {
  it('keeps every invariant while instances, the web tier and the controllers are killed', async (t) => {
    const report = await runChaos({
      images: 80,
      clients: 10,
      durationSeconds: 20,
      maxInstances: 6,
      killEveryMs: 1000,
      // Room for one 30 s launch-visibility wait: an instance killed between receiving an
      // image and telling the monitor leaves that image hidden for that long.
      timeoutSeconds: 75,
    });
    for (const line of formatReport(report).split('\n')) t.diagnostic(line);
    assert.deepEqual(report.failures, [], formatReport(report));
    assert.equal(report.accepted, 80);
    assert.equal(report.final, 80);
    assert.equal(report.stream.shownTwice, 0);
    assert.ok(report.instances.peakRegistry <= 6 && report.instances.peakStatus <= 6 && report.instances.peakProcesses <= 6);
    assert.ok(report.killed.workers >= 10, `${report.killed.workers} workers killed`);
    assert.equal(report.killed.web, 1);
    assert.equal(report.killed.controllers, 1);
    assert.ok(report.stream.resets >= 1, 'the clients went through a web-tier restart');
    assertAttemptsWithinLimit(report);
  });

  it('keeps every invariant with two controller processes at once', async (t) => {
    const report = await runChaos({
      images: 40,
      clients: 8,
      durationSeconds: 12,
      maxInstances: 6,
      // Fewer kills than above: each one between receiving an image and telling the monitor
      // costs a 30 s wait, and this variant is about the controllers.
      killEveryMs: 2000,
      controllers: 2,
      restartWeb: false,
      timeoutSeconds: 75,
    });
    for (const line of formatReport(report).split('\n')) t.diagnostic(line);
    assert.deepEqual(report.failures, [], formatReport(report));
    assert.equal(report.final, 40);
    assert.ok(report.instances.peakRegistry <= 6 && report.instances.peakStatus <= 6 && report.instances.peakProcesses <= 6);
    assert.equal(report.killed.controllers, 1, 'one of the two was killed and restarted while the other ran on');
    assertAttemptsWithinLimit(report);
  });

  it('keeps every invariant when every process\'s wall clock steps back 30 s mid-run', async (t) => {
    const report = await runChaos({
      images: 40,
      clients: 8,
      durationSeconds: 10,
      maxInstances: 6,
      killEveryMs: 2000,
      clockStepMs: -30_000,
      restartWeb: false,
      restartControllers: false,
      // The queue's time stands still for the 30 s of the step (see src/queue/sqlite.ts).
      timeoutSeconds: 90,
    });
    for (const line of formatReport(report).split('\n')) t.diagnostic(line);
    assert.deepEqual(report.failures, [], formatReport(report));
    assert.equal(report.final, 40);
    assert.notEqual(report.clockSteppedAt, null);
    assertAttemptsWithinLimit(report);
  });
});

function assertAttemptsWithinLimit(report: ChaosReport): void {
  assert.equal(report.attempts.overLimit, 0);
  assert.ok(report.attempts.maxSeen >= 1 && report.attempts.maxSeen <= report.attempts.limit, `at most ${report.attempts.limit} attempts, saw ${report.attempts.maxSeen}`);
}
