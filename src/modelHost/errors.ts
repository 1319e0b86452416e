/** The host's own errors: a request it refuses (a bad prompt, span or layer), and one the client cancelled. */
export class CancelledError extends Error {
  constructor() {
    super('cancelled');
    this.name = 'CancelledError';
  }
}

export class BadRequestError extends Error {}
