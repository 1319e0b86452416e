/**
 * The host's errors in one module: a checkpoint that cannot load (located at its file; shared with the domain,
 * where the editor's pickers run the same checks as a load), a request the host refuses (a bad prompt, span or
 * layer), and one the client cancelled.
 */
export { CheckpointError, IncompatibleCheckpointError } from '../domain/checkpointError';

export class CancelledError extends Error {
  constructor() {
    super('cancelled');
    this.name = 'CancelledError';
  }
}

export class BadRequestError extends Error {}
