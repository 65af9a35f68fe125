/**
 * The SQLite driver, better-sqlite3, in the build this Node.js can run. Every module that
 * opens a database imports it from here, never from the package itself.
 *
 * - better-sqlite3 13 is a Node-API 10 addon. A Node.js without Node-API 10 (20.x, and 22
 *   before 22.14) loads it and then crashes the process with a segmentation fault on the
 *   first database it opens.
 * - better-sqlite3 12 (installed as `better-sqlite3-v12`) wraps its databases and statements
 *   in node::ObjectWrap. On Node.js 24 the garbage collector can free such a wrapper while no
 *   JavaScript runs, and its destructor then aborts the process (`Assertion failed: (env) !=
 *   nullptr` in RemoveEnvironmentCleanupHook), at any time: at start-up, under load.
 *
 * So 13 wherever Node-API 10 is available, 12 elsewhere; their JavaScript API is the same.
 */
import type BetterSqlite3 from 'better-sqlite3';
import { createRequire } from 'node:module';

/** The first better-sqlite3 release built on Node-API, and the Node-API version it needs. */
const NODE_API_MAJOR = 13;
const NODE_API_VERSION = 10;
const CURRENT_DRIVER = 'better-sqlite3';
const LEGACY_DRIVER = 'better-sqlite3-v12';

const require = createRequire(import.meta.url);

/**
 * The package to load: `better-sqlite3` unless it is a Node-API build this Node.js cannot
 * run. (An installation made before `better-sqlite3-v12` existed has 12 under the main name.)
 */
export function driverPackage(nodeApiVersion: string | undefined, currentDriverVersion: string): string {
  const nodeApiBuild = Number.parseInt(currentDriverVersion, 10) >= NODE_API_MAJOR;
  return nodeApiBuild && !(Number(nodeApiVersion) >= NODE_API_VERSION) ? LEGACY_DRIVER : CURRENT_DRIVER;
}

function load(name: string): typeof BetterSqlite3 {
  try {
    return require(name) as typeof BetterSqlite3;
  } catch (error) {
    if (name !== LEGACY_DRIVER || (error as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw error;
    // An optional dependency: npm leaves it out where it cannot be built.
    throw new Error(
      `Node.js ${process.version} has Node-API ${process.versions.napi} and so needs ${LEGACY_DRIVER}, which is not installed: ` +
        `run npm install where python3, make and a C++ compiler are available, or use Node.js 22.14 or later`,
      { cause: error },
    );
  }
}

const currentDriverVersion = (require(`${CURRENT_DRIVER}/package.json`) as { version: string }).version;
const Database = load(driverPackage(process.versions.napi, currentDriverVersion));
// The driver's types, under the names the package itself gives them (Database.Statement, ...).
declare namespace Database {
  type Database = BetterSqlite3.Database;
  type Statement<BindParameters extends unknown[] | {} = unknown[], Result = unknown> = BetterSqlite3.Statement<BindParameters, Result>;
  type Transaction<F extends (...params: any[]) => unknown = (...params: any[]) => unknown> = BetterSqlite3.Transaction<F>;
  type Options = BetterSqlite3.Options;
  type RunResult = BetterSqlite3.RunResult;
  type SqliteError = BetterSqlite3.SqliteError;
}
export default Database;
