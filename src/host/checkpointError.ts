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
