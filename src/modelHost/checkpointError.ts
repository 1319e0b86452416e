// The checkpoint errors live in the domain (the editor's pickers run the same checks as a load): re-exported here
// for the host's modules.
export { CheckpointError, IncompatibleCheckpointError } from '../domain/checkpointError';
