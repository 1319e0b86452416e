/**
 * The audit as one pipeline, shared by the CLI and the editor, in four rooms: a template with its tokenizer and
 * audit (template.ts), datasets rendered through it (dataset.ts), the workspace scan that pairs datasets with the
 * model folder they belong to (workspace.ts), and the folder audit that runs them all (folder.ts).
 */
export * from './template';
export * from './dataset';
export * from './workspace';
export * from './folder';
export * from './trainer';
export * from './trainerTemplate';
