/** A CLI command: its usage line, what it does, the options it takes, and what it runs. main dispatches to it. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Args, OptionName } from './options';

export interface Command {
  name: string;
  /** Usage line(s), shown by `piggyback help <command>` and in the usage of all commands. */
  usage: string;
  about: string;
  /** The options it takes besides the global ones; any other is a usage error naming it. */
  options: OptionName[];
  /** The exit code: 0 clean, 1 an error-level finding or a failure, 2 bad usage (by throwing UsageError). */
  run(args: Args, out: (s: string) => void): Promise<number> | number;
}

/** The dataset scan worker's bundle beside this one (dist/); without it datasets are scanned in this thread. */
export const SCAN_WORKER = fs.existsSync(path.join(__dirname, 'datasetScanWorker.js'))
  ? path.join(__dirname, 'datasetScanWorker.js')
  : undefined;
