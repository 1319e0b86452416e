// ONNX exports of the organisms in the layouts real exporters write, for the layout tests: optimum's merged decoder
// (an If on use_cache_branch) in the root layout with external data, graphs with num_logits_to_keep or without
// logits trimming, transformers.js variant files, symbolic K/V dimensions, and an input the host cannot feed.
// Built from the organisms' Hugging Face weights with the host's graph builder (whose numerics are checked against
// PyTorch and torch.onnx exports elsewhere); what these tests check is the host's handling of each layout.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readDecoderSpec } from '../src/domain/hfConfig';
import { decoderGraphParts, type DecoderGraphParts, OPSET } from '../src/modelHost/hf/graph';
import { attribute, DataType, encodeModel, type NodeMessage, valueInfo } from '../src/modelHost/hf/onnxProto';
import { WeightIndex } from '../src/modelHost/hf/weights';
import { ROOT, tempDir } from './helpers';

export const ORGANISMS = path.join(ROOT, 'examples', 'organisms');

export interface LayoutOptions {
  /** Where the graph goes, relative to the export folder (e.g. onnx/model_q4.onnx, decoder_model_merged.onnx). */
  graph: string;
  merged?: boolean;
  /** The logits-trimming input's name, or false for a graph that returns every position's logits. */
  logitsToKeep?: 'logits_to_keep' | 'num_logits_to_keep' | false;
  symbolicKv?: boolean;
  extraInput?: string;
  /** Rewrites config.json (e.g. drop head_dim); null leaves config.json out. */
  config?: ((c: Record<string, unknown>) => Record<string, unknown>) | null;
  /** Data file beside the graph. */
  dataFile?: string;
}

/** An ONNX export of organism `name` in a fresh folder laid out as `o` says; returns the folder. */
export function organismExport(
  name: 'base' | 'treft',
  o: LayoutOptions,
  dir = path.join(tempDir('piggyback-layout-'), name),
): string {
  const src = path.join(ORGANISMS, name);
  const spec = readDecoderSpec(src);
  const index = WeightIndex.open(src);
  const graphFile = path.join(dir, o.graph);
  const dataFile = o.dataFile ?? 'model.onnx_data';
  fs.mkdirSync(path.dirname(graphFile), { recursive: true });
  // the safetensors data section is the external data: same bytes, same offsets
  fs.copyFileSync(path.join(src, 'model.safetensors'), path.join(path.dirname(graphFile), dataFile));
  const parts = decoderGraphParts(spec, (t) => {
    const r = index.get(t)!;
    return { location: dataFile, offset: r.begin, length: r.end - r.begin };
  });
  if (o.logitsToKeep === false) {
    parts.inputs = parts.inputs.filter((i) => i.name !== 'logits_to_keep');
    parts.initializers.push({
      name: 'logits_to_keep',
      dims: [],
      data_type: DataType.INT64,
      raw_data: new Uint8Array(8),
    });
  } else if (o.logitsToKeep === 'num_logits_to_keep') rename(parts, 'logits_to_keep', 'num_logits_to_keep');
  if (o.symbolicKv) {
    for (const v of [...parts.inputs, ...parts.outputs])
      if (/^(past_key_values|present)\./.test(v.name))
        v.shape = [v.shape[0], 'num_key_value_heads', v.shape[2], 'head_dim'];
  }
  if (o.extraInput) parts.inputs.push({ name: o.extraInput, elemType: DataType.INT64, shape: [1, 'sequence_length'] });
  const nodes = o.merged ? mergedDecoder(parts) : parts.nodes;
  if (o.merged) parts.inputs.push({ name: 'use_cache_branch', elemType: DataType.BOOL, shape: [1] });
  fs.writeFileSync(
    graphFile,
    encodeModel({
      nodes,
      initializers: parts.initializers,
      inputs: parts.inputs,
      outputs: parts.outputs,
      opset: OPSET,
      metadata: parts.metadata,
      name: 'organism',
    }),
  );
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(src, f), path.join(dir, f));
  if (o.config !== null) {
    const c = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(o.config ? o.config(c) : c, null, 2));
  }
  return dir;
}

function rename(parts: DecoderGraphParts, from: string, to: string): void {
  for (const v of parts.inputs) if (v.name === from) v.name = to;
  for (const n of parts.nodes) n.input = n.input.map((i) => (i === from ? to : i));
}

/**
 * optimum's merged decoder: one If on use_cache_branch whose branches compute the decoder (here both branches are
 * the same graph, which reads an empty past when there is none). Names made inside a branch get the branch's prefix
 * so that nothing shadows the outer graph's outputs.
 */
function mergedDecoder(parts: DecoderGraphParts): NodeMessage[] {
  const outer = new Set([...parts.inputs.map((i) => i.name), ...parts.initializers.map((i) => i.name)]);
  const branch = (prefix: string) => {
    const local = (x: string) => (outer.has(x) || x === '' ? x : `${prefix}/${x}`);
    return {
      name: prefix,
      node: parts.nodes.map((n) => ({
        ...n,
        name: `${prefix}/${n.name}`,
        input: n.input.map(local),
        output: n.output.map(local),
      })),
      output: parts.outputs.map((v) => valueInfo({ ...v, name: local(v.name) })),
    };
  };
  return [
    {
      name: 'optimum::if',
      op_type: 'If',
      input: ['use_cache_branch'],
      output: parts.outputs.map((v) => v.name),
      attribute: [
        attribute('then_branch', { graph: branch('with_past') }),
        attribute('else_branch', { graph: branch('without_past') }),
      ],
    },
  ];
}
