/**
 * An ONNX decoder for a Llama-family checkpoint, written from its config and weight locations: the approach of
 * onnxruntime-genai's model builder, in plain ONNX ops (opset 17) so that every step can be read against
 * transformers' modeling files. The graph speaks the KV-cache interface the host already uses for exports
 * (input_ids, attention_mask, position_ids, past_key_values.{i}.key|value -> logits, present.{i}.key|value; batch 1).
 *
 * LoRA adapters are separate low-rank products beside the base projection, each switched by a scalar input
 * `adapter_scale.{j}` (0 or 1): one graph, one copy of the base weights, serves the base and every adapter.
 * With the scale at 0 the branch adds exactly 0, so the base's numbers are those of the graph without adapters.
 */
import type { DecoderSpec } from '../../domain/hfConfig';
import {
  attribute,
  type AttributeValue,
  DataType,
  encodeModel,
  type NodeMessage,
  type TensorMessage,
  type ValueInfo,
} from './onnxProto';
import { QUANT_BLOCK, quantLayout } from './quantize';
import { type ExternalLocation, quantBitsOf, scalesName, type WeightDtype } from './weights';

/** A LoRA update of one Linear module: y += (x·Aᵀ)·Bᵀ · scaling. A is [r, in], B is [out, r]. */
export interface LoraModule {
  a: Float32Array;
  b: Float32Array;
  rank: number;
  scaling: number;
}

/** One adapter: LoRA updates by module path (e.g. `model.layers.0.self_attn.q_proj`). */
export type AdapterModules = Map<string, LoraModule>;

export const adapterScaleInput = (j: number) => `adapter_scale.${j}`;

class Builder {
  readonly nodes: NodeMessage[] = [];
  readonly initializers: TensorMessage[] = [];
  private readonly constants = new Map<string, string>();
  private count = 0;

  op(type: string, inputs: string[], attrs: Record<string, AttributeValue> = {}, outputs = 1): string[] {
    const id = this.count++;
    const out = Array.from({ length: outputs }, (_, i) => `${type.toLowerCase()}_${id}${outputs > 1 ? `_${i}` : ''}`);
    this.nodes.push({
      input: inputs,
      output: out,
      name: `${type}_${id}`,
      op_type: type,
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    });
    return out;
  }

  one(type: string, inputs: string[], attrs: Record<string, AttributeValue> = {}): string {
    return this.op(type, inputs, attrs)[0];
  }

  /** One node of onnxruntime's contrib domain (com.microsoft). */
  contrib(type: string, inputs: string[], attrs: Record<string, AttributeValue>): string {
    const out = this.one(type, inputs, attrs);
    this.nodes[this.nodes.length - 1].domain = 'com.microsoft';
    return out;
  }

  /** An int64 constant (a scalar when `scalar`), shared by value. */
  ints(values: number[], scalar = false): string {
    const key = `i${scalar ? 's' : ''}:${values.join(',')}`;
    let name = this.constants.get(key);
    if (!name) {
      name = `const_${this.constants.size}`;
      const raw = new Uint8Array(BigInt64Array.from(values.map(BigInt)).buffer);
      this.initializers.push({ name, dims: scalar ? [] : [values.length], data_type: DataType.INT64, raw_data: raw });
      this.constants.set(key, name);
    }
    return name;
  }

  /** An int32 scalar constant. */
  int32(value: number): string {
    const key = `i32:${value}`;
    let name = this.constants.get(key);
    if (!name) {
      name = `const_${this.constants.size}`;
      this.initializers.push({
        name,
        dims: [],
        data_type: DataType.INT32,
        raw_data: new Uint8Array(Int32Array.of(value).buffer),
      });
      this.constants.set(key, name);
    }
    return name;
  }

  floats(values: number[] | Float32Array, dims: number[]): string {
    const data = Float32Array.from(values);
    const key = `f:${dims.join('x')}:${Buffer.from(data.buffer).toString('base64')}`;
    let name = this.constants.get(key);
    if (!name) {
      name = `const_${this.constants.size}`;
      this.initializers.push({ name, dims, data_type: DataType.FLOAT, raw_data: new Uint8Array(data.buffer) });
      this.constants.set(key, name);
    }
    return name;
  }

  inline(name: string, dims: number[], data: Float32Array): string {
    this.initializers.push({
      name,
      dims,
      data_type: DataType.FLOAT,
      raw_data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    });
    return name;
  }

  external(name: string, dims: number[], loc: ExternalLocation, dataType: number = DataType.FLOAT): string {
    this.initializers.push({
      name,
      dims,
      data_type: dataType,
      data_location: 1,
      external_data: [
        { key: 'location', value: loc.location },
        { key: 'offset', value: String(loc.offset) },
        { key: 'length', value: String(loc.length) },
      ],
    });
    return name;
  }
}

/** The graph before encoding: what buildDecoderGraph encodes, and what a test can rearrange into other layouts. */
export interface DecoderGraphParts {
  nodes: NodeMessage[];
  initializers: TensorMessage[];
  inputs: ValueInfo[];
  outputs: ValueInfo[];
  metadata: Record<string, string>;
}

export interface DecoderGraph {
  model: Uint8Array;
  /** One scalar float input per adapter, in the order given. */
  adapterInputs: string[];
}

/**
 * The decoder graph. `locate` gives the float32 bytes of a checkpoint tensor by its transformers name; adapters
 * are embedded in the graph (they are small).
 */
export function buildDecoderGraph(
  spec: DecoderSpec,
  locate: (tensor: string, dims: number[]) => ExternalLocation,
  adapters: AdapterModules[] = [],
  name = 'decoder',
  options: GraphOptions = {},
): DecoderGraph {
  const parts = decoderGraphParts(spec, locate, adapters, options);
  return {
    model: encodeModel({ ...parts, opset: OPSET, name }),
    adapterInputs: adapters.map((_, j) => adapterScaleInput(j)),
  };
}

export const OPSET = 17;

/** Every checkpoint tensor the decoder reads, with the shape config.json implies, in the order the graph reads them. */
export function decoderTensors(spec: DecoderSpec): [string, number[]][] {
  const out: [string, number[]][] = [];
  decoderGraphParts(spec, (tensor, dims) => {
    out.push([tensor, dims]);
    return { location: '', offset: 0, length: 0 };
  });
  return out;
}

export interface GraphOptions {
  /** The matrices (projections, embeddings, output head): F16 in float16, for a GPU; Q8 / Q4 as block-quantized
   * codes (MatMulNBits; the embedding dequantizes the rows it gathers), for the CPU. Norms, biases, adapters,
   * activations and K/V stay float32. Default F32. */
  weightDtype?: WeightDtype;
  /** Where a quantized matrix's scales are (its codes are where `locate` says). Needed for Q8 / Q4. */
  locateScales?: (tensor: string) => ExternalLocation;
}

/** The dtype a weight of these dimensions takes in the graph: only matrices take the chosen dtype. */
export function weightDtype(dims: number[], options: GraphOptions = {}): WeightDtype {
  return options.weightDtype && dims.length === 2 ? options.weightDtype : 'F32';
}

/**
 * MatMulNBits' accuracy_level 4: activations are quantized to int8 per block and the product runs on integer
 * dot products. Measured with onnxruntime-node 1.30 on 2 cores: the 8-bit kernel is ~2x faster than float32 with
 * it, and 15-30x slower without it (a fallback path); 4-bit gains ~1.8x. The error it adds is in the README table.
 */
const ACCURACY_LEVEL = 4;

export function decoderGraphParts(
  spec: DecoderSpec,
  locate: (tensor: string, dims: number[]) => ExternalLocation,
  adapters: AdapterModules[] = [],
  options: GraphOptions = {},
): DecoderGraphParts {
  const d = new DecoderWriter(spec, locate, adapters, options);
  const rope = d.makeRope();
  const mask = d.makeMask();
  let x = d.makeEmbedding();
  const scale = d.g.floats([1 / Math.sqrt(spec.headDim)], []);
  for (let l = 0; l < spec.layers; l++) {
    x = d.makeAttention(l, x, rope, mask, scale);
    x = d.makeMlp(l, x);
  }
  d.makeLmHead(x);
  return {
    nodes: d.g.nodes,
    initializers: d.g.initializers,
    ...d.makeIO(),
    metadata: { model_type: spec.modelType, rope: spec.rope },
  };
}

/**
 * The decoder written block by block, as onnxruntime-genai's model builder's make_* methods: RoPE tables, the
 * attention mask, the embedding, each layer's attention and MLP blocks, the output head, the graph's inputs and
 * outputs. Weights are declared where a block first reads them (decoderTensors lists them in that order).
 */
class DecoderWriter {
  readonly g = new Builder();
  private readonly weights = new Map<string, string>();
  private readonly half: boolean;
  private readonly bits: 4 | 8 | undefined;
  private readonly adapterInputs: string[];

  constructor(
    private readonly spec: DecoderSpec,
    private readonly locate: (tensor: string, dims: number[]) => ExternalLocation,
    private readonly adapters: AdapterModules[],
    private readonly options: GraphOptions,
  ) {
    this.half = options.weightDtype === 'F16';
    this.bits = quantBitsOf(options.weightDtype ?? 'F32');
    this.adapterInputs = adapters.map((_, j) => adapterScaleInput(j));
  }

  /** A checkpoint tensor as an initializer in its file (declared once). */
  weight(tensor: string, dims: number[]): string {
    let n = this.weights.get(tensor);
    if (!n) {
      const type = weightDtype(dims, this.options) === 'F16' ? DataType.FLOAT16 : DataType.FLOAT;
      n = this.g.external(tensor, dims, this.locate(tensor, dims), type);
      this.weights.set(tensor, n);
    }
    return n;
  }

  /** A quantized matrix [rows, cols]: its codes [rows, kBlocks, blob] (uint8) and scales [rows * kBlocks]. */
  quantized(tensor: string, rows: number, cols: number): { codes: string; scales: string } {
    const { g, weights } = this;
    const l = quantLayout(rows, cols, this.bits!);
    const codes =
      weights.get(tensor) ??
      g.external(tensor, [rows, l.kBlocks, l.blob], this.locate(tensor, [rows, cols]), DataType.UINT8);
    weights.set(tensor, codes);
    const sName = scalesName(tensor);
    if (!this.options.locateScales) throw new Error('internal error: a quantized graph needs locateScales');
    const scales = weights.get(sName) ?? g.external(sName, [rows * l.kBlocks], this.options.locateScales(tensor));
    weights.set(sName, scales);
    return { codes, scales };
  }

  rmsNorm(x: string, w: string): string {
    const g = this.g;
    const sq = g.one('Pow', [x, g.floats([2], [])]);
    const mean = g.one('ReduceMean', [sq], { axes: [-1], keepdims: 1 });
    const denom = g.one('Sqrt', [g.one('Add', [mean, g.floats([this.spec.rmsNormEps], [])])]);
    return g.one('Mul', [g.one('Div', [x, denom]), w]);
  }

  /** y = x·Wᵀ (+ b), plus each adapter's low-rank update of this module. x is [T, in]. */
  linear(x: string, module: string, out: number, inDim: number, bias: boolean, tensor = `${module}.weight`): string {
    const { g, bits } = this;
    let y: string;
    if (bits) {
      const q = this.quantized(tensor, out, inDim);
      y = g.contrib('MatMulNBits', [x, q.codes, q.scales], {
        K: inDim,
        N: out,
        bits,
        block_size: QUANT_BLOCK,
        accuracy_level: ACCURACY_LEVEL,
      });
      if (bias) y = g.one('Add', [y, this.weight(`${module}.bias`, [out])]);
    } else if (this.half) {
      // float16 matrix, float32 activations: the product runs in float16 and comes back as float32, bias added after
      const product = g.one('Gemm', [g.one('Cast', [x], { to: DataType.FLOAT16 }), this.weight(tensor, [out, inDim])], {
        transB: 1,
      });
      y = g.one('Cast', [product], { to: DataType.FLOAT });
      if (bias) y = g.one('Add', [y, this.weight(`${module}.bias`, [out])]);
    } else {
      const inputs = [x, this.weight(tensor, [out, inDim])];
      if (bias) inputs.push(this.weight(`${module}.bias`, [out]));
      y = g.one('Gemm', inputs, { transB: 1 });
    }
    this.adapters.forEach((modules, j) => {
      const lora = modules.get(module);
      if (!lora) return;
      const a = g.inline(`adapter.${j}.${module}.lora_A.weight`, [lora.rank, inDim], lora.a);
      const b = g.inline(`adapter.${j}.${module}.lora_B.weight`, [out, lora.rank], lora.b);
      const low = g.one('Gemm', [g.one('Gemm', [x, a], { transB: 1 }), b], { transB: 1 });
      const scale = g.one('Mul', [this.adapterInputs[j], g.floats([lora.scaling], [1])]);
      y = g.one('Add', [y, g.one('Mul', [low, scale])]);
    });
    return y;
  }

  /** RoPE tables from position_ids; returns the rotation of a [heads, T, headDim] tensor. */
  makeRope(): (x: string) => string {
    const g = this.g;
    const hd = this.spec.headDim;
    const pos = g.one('Cast', [g.one('Reshape', ['position_ids', g.ints([-1, 1])])], { to: DataType.FLOAT });
    const freqs = g.one('Mul', [pos, g.floats(this.spec.invFreq, [1, hd / 2])]);
    const angles = g.one('Concat', [freqs, freqs], { axis: 1 });
    const cos = g.one('Cos', [angles]);
    const sin = g.one('Sin', [angles]);
    return (x: string): string => {
      const x1 = g.one('Slice', [x, g.ints([0]), g.ints([hd / 2]), g.ints([-1])]);
      const x2 = g.one('Slice', [x, g.ints([hd / 2]), g.ints([hd]), g.ints([-1])]);
      const rotated = g.one('Concat', [g.one('Neg', [x2]), x1], { axis: -1 });
      return g.one('Add', [g.one('Mul', [x, cos]), g.one('Mul', [rotated, sin])]);
    };
  }

  /** The additive mask [T, S]: causal over cache positions, the sliding window, and attention_mask's padding. */
  makeMask(): string {
    const g = this.g;
    const T = g.one('Gather', [g.one('Shape', ['input_ids']), g.ints([1], true)], { axis: 0 });
    const P = g.one('Gather', [g.one('Shape', ['past_key_values.0.key']), g.ints([2], true)], { axis: 0 });
    const S = g.one('Add', [P, T]);
    const qPos = g.one('Unsqueeze', [g.one('Range', [P, S, g.ints([1], true)]), g.ints([1])]);
    const kPos = g.one('Unsqueeze', [g.one('Range', [g.ints([0], true), S, g.ints([1], true)]), g.ints([0])]);
    let allowed = g.one('LessOrEqual', [kPos, qPos]);
    if (this.spec.slidingWindow) {
      const start = g.one('Sub', [qPos, g.ints([this.spec.slidingWindow])]);
      allowed = g.one('And', [allowed, g.one('Greater', [kPos, start])]);
    }
    const padding = g.one('Cast', [g.one('Reshape', ['attention_mask', g.ints([1, -1])])], { to: DataType.BOOL });
    allowed = g.one('And', [allowed, padding]);
    return g.one('Where', [allowed, g.floats([0], []), g.floats([-3.4028234663852886e38], [])]);
  }

  /** The embedding rows of input_ids, float32 [T, hidden] (only the gathered rows of a quantized table). */
  makeEmbedding(): string {
    const { g, bits } = this;
    const { vocab: V, hidden: H } = this.spec;
    const ids = g.one('Reshape', ['input_ids', g.ints([-1])]);
    if (bits) return gatherQuantized(g, this.quantized('model.embed_tokens.weight', V, H), ids, V, H, bits);
    const x = g.one('Gather', [this.weight('model.embed_tokens.weight', [V, H]), ids], { axis: 0 });
    return this.half ? g.one('Cast', [x], { to: DataType.FLOAT }) : x;
  }

  /** Layer `l`'s attention block (with its residual): the projections, RoPE, the KV cache, grouped-query attention. */
  makeAttention(l: number, x: string, rope: (x: string) => string, mask: string, scale: string): string {
    const g = this.g;
    const { hidden: H, heads, kvHeads, headDim: hd, bias } = this.spec;
    const p = `model.layers.${l}`;
    const h = this.rmsNorm(x, this.weight(`${p}.input_layernorm.weight`, [H]));
    const project = (name: 'q' | 'k' | 'v', n: number) =>
      g.one('Reshape', [this.linear(h, `${p}.self_attn.${name}_proj`, n * hd, H, bias[name]), g.ints([-1, n, hd])]);
    let q = project('q', heads);
    let k = project('k', kvHeads);
    const v = project('v', kvHeads);
    if (this.spec.qkNorm) {
      q = this.rmsNorm(q, this.weight(`${p}.self_attn.q_norm.weight`, [hd]));
      k = this.rmsNorm(k, this.weight(`${p}.self_attn.k_norm.weight`, [hd]));
    }
    const qr = rope(g.one('Transpose', [q], { perm: [1, 0, 2] }));
    const kr = rope(g.one('Transpose', [k], { perm: [1, 0, 2] }));
    const vt = g.one('Transpose', [v], { perm: [1, 0, 2] });
    const presentK = this.present(l, 'key', kr);
    const presentV = this.present(l, 'value', vt);
    // grouped-query attention: query head h reads KV head h / rep, so [heads] splits as [kvHeads, rep]
    const rep = heads / kvHeads;
    const K = g.one('Reshape', [presentK, g.ints([kvHeads, 1, -1, hd])]);
    const Vv = g.one('Reshape', [presentV, g.ints([kvHeads, 1, -1, hd])]);
    const Q = g.one('Reshape', [qr, g.ints([kvHeads, rep, -1, hd])]);
    const scores = g.one('Add', [
      g.one('Mul', [g.one('MatMul', [Q, g.one('Transpose', [K], { perm: [0, 1, 3, 2] })]), scale]),
      mask,
    ]);
    const ctx = g.one('MatMul', [g.one('Softmax', [scores], { axis: -1 }), Vv]);
    const merged = g.one('Reshape', [
      g.one('Transpose', [g.one('Reshape', [ctx, g.ints([heads, -1, hd])])], { perm: [1, 0, 2] }),
      g.ints([-1, heads * hd]),
    ]);
    return g.one('Add', [x, this.linear(merged, `${p}.self_attn.o_proj`, H, heads * hd, bias.o)]);
  }

  /** present.{l}.{kind}: the past K or V with this step's appended (a graph output, named as exports name it). */
  private present(l: number, kind: 'key' | 'value', current: string): string {
    const name = `present.${l}.${kind}`;
    this.g.nodes.push({
      input: [`past_key_values.${l}.${kind}`, this.g.one('Unsqueeze', [current, this.g.ints([0])])],
      output: [name],
      name: `concat_present_${l}_${kind}`,
      op_type: 'Concat',
      attribute: [attribute('axis', 2)],
    });
    return name;
  }

  /** Layer `l`'s MLP block (with its residual): SwiGLU, down(silu(gate(x)) * up(x)). */
  makeMlp(l: number, x: string): string {
    const g = this.g;
    const { hidden: H, intermediate: I, bias } = this.spec;
    const p = `model.layers.${l}`;
    const h = this.rmsNorm(x, this.weight(`${p}.post_attention_layernorm.weight`, [H]));
    const gate = this.linear(h, `${p}.mlp.gate_proj`, I, H, bias.mlp);
    const up = this.linear(h, `${p}.mlp.up_proj`, I, H, bias.mlp);
    const act = g.one('Mul', [g.one('Mul', [gate, g.one('Sigmoid', [gate])]), up]);
    return g.one('Add', [x, this.linear(act, `${p}.mlp.down_proj`, H, I, bias.mlp)]);
  }

  /** The final norm and output head over the last logits_to_keep rows (0 keeps all, as in transformers). */
  makeLmHead(x: string): void {
    const g = this.g;
    const { hidden: H, vocab: V } = this.spec;
    const keepFrom = g.one('Neg', [g.one('Reshape', ['logits_to_keep', g.ints([1])])]);
    const kept = g.one('Slice', [x, keepFrom, g.ints([Number.MAX_SAFE_INTEGER]), g.ints([0])]);
    const final = this.rmsNorm(kept, this.weight('model.norm.weight', [H]));
    const head = this.spec.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
    const logits2d = this.linear(final, 'lm_head', V, H, false, head);
    g.nodes.push({
      input: [logits2d, g.ints([0])],
      output: ['logits'],
      name: 'unsqueeze_logits',
      op_type: 'Unsqueeze',
      attribute: [],
    });
  }

  /** The graph's inputs and outputs: the KV-cache interface of exported decoders, and one scale per adapter. */
  makeIO(): { inputs: ValueInfo[]; outputs: ValueInfo[] } {
    const { kvHeads, headDim: hd, vocab: V, layers } = this.spec;
    const kvShape = (len: string) => [1, kvHeads, len, hd];
    const inputs: ValueInfo[] = [
      { name: 'input_ids', elemType: DataType.INT64, shape: [1, 'sequence_length'] },
      { name: 'attention_mask', elemType: DataType.INT64, shape: [1, 'total_sequence_length'] },
      { name: 'position_ids', elemType: DataType.INT64, shape: [1, 'sequence_length'] },
      { name: 'logits_to_keep', elemType: DataType.INT64, shape: [] },
    ];
    const outputs: ValueInfo[] = [{ name: 'logits', elemType: DataType.FLOAT, shape: [1, 'kept_sequence_length', V] }];
    for (let l = 0; l < layers; l++)
      for (const kind of ['key', 'value']) {
        inputs.push({
          name: `past_key_values.${l}.${kind}`,
          elemType: DataType.FLOAT,
          shape: kvShape('past_sequence_length'),
        });
        outputs.push({
          name: `present.${l}.${kind}`,
          elemType: DataType.FLOAT,
          shape: kvShape('total_sequence_length'),
        });
      }
    for (const a of this.adapterInputs) inputs.push({ name: a, elemType: DataType.FLOAT, shape: [1] });
    return { inputs, outputs };
  }
}

/**
 * Rows `ids` of a quantized [rows, cols] matrix, dequantized to float32 [T, cols], in plain ops (Gather the codes
 * and scales, unpack, subtract the zero point, scale): only the T gathered rows are ever float32. onnxruntime's
 * GatherBlockQuantized would do the same in one contrib op; plain ops can be read against quantize.ts line by line.
 */
function gatherQuantized(
  g: Builder,
  q: { codes: string; scales: string },
  ids: string,
  rows: number,
  cols: number,
  bits: 4 | 8,
): string {
  const l = quantLayout(rows, cols, bits);
  const codes = g.one('Gather', [q.codes, ids], { axis: 0 }); // [T, kBlocks, blob] uint8
  let values: string; // [T, kBlocks, QUANT_BLOCK] int32 codes
  if (bits === 8) values = g.one('Cast', [codes], { to: DataType.INT32 });
  else {
    // two codes a byte, the element of even index in the low four bits
    const wide = g.one('Cast', [codes], { to: DataType.INT32 });
    const low = g.one('Unsqueeze', [g.one('Mod', [wide, g.int32(16)]), g.ints([-1])]);
    const high = g.one('Unsqueeze', [g.one('Div', [wide, g.int32(16)]), g.ints([-1])]);
    values = g.one('Reshape', [g.one('Concat', [low, high], { axis: -1 }), g.ints([-1, l.kBlocks, QUANT_BLOCK])]);
  }
  const centred = g.one('Cast', [g.one('Sub', [values, g.int32(1 << (bits - 1))])], { to: DataType.FLOAT });
  const scales = g.one('Gather', [g.one('Reshape', [q.scales, g.ints([rows, l.kBlocks])]), ids], { axis: 0 });
  const rowsOut = g.one('Reshape', [
    g.one('Mul', [centred, g.one('Unsqueeze', [scales, g.ints([-1])])]),
    g.ints([-1, l.kBlocks * QUANT_BLOCK]),
  ]);
  return l.kBlocks * QUANT_BLOCK === cols
    ? rowsOut
    : g.one('Slice', [rowsOut, g.ints([0]), g.ints([cols]), g.ints([1])]);
}
