// Opens, uses and drops SQLite databases and statements through the project's driver, then
// has the garbage collector free them all; prints how many it opened. Run with --expose-gc.
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import Database from '../src/sqlite-driver.js';

const ROUNDS = 40;
const DATABASES_PER_ROUND = 500;

let opened = 0;
for (let round = 0; round < ROUNDS; round += 1) {
  for (let i = 0; i < DATABASES_PER_ROUND; i += 1, opened += 1) {
    const db = new Database(':memory:');
    db.prepare('SELECT ?').get(i);
    // Half are left open, so the collector also frees databases nobody closed.
    if (i % 2 === 0) db.close();
  }
  // Collections also run between rounds, outside this loop's JavaScript.
  await yieldToLoop();
}
(globalThis as { gc?: () => void }).gc?.();
console.log(JSON.stringify({ opened }));
