/** A checkpoint that cannot be opened: the file at fault and the cause, in one line. */
export class CheckpointError extends Error {
  constructor(
    message: string,
    readonly file: string,
  ) {
    super(`${file}: ${message}`);
    this.name = 'CheckpointError';
  }
}

/** A checkpoint that opens but cannot be paired with the base (other layer count, heads, head size, vocabulary). */
export class IncompatibleCheckpointError extends CheckpointError {
  constructor(message: string, file: string) {
    super(message, file);
    this.name = 'IncompatibleCheckpointError';
  }
}
