/**
 * Block-wise weight quantization in the layout of onnxruntime's `MatMulNBits` (com.microsoft): a matrix W [N, K]
 * (a Linear weight, out x in) becomes codes packed along K, `[N, kBlocks, blockSize * bits / 8]` uint8, low bits
 * first, and one float32 scale per block, `[N * kBlocks]`. Dequantized: w = (code - 2^(bits-1)) * scale.
 *
 * Symmetric, as MLAS quantizes it (onnxruntime's own `MatMulNBitsQuantizer` with is_symmetric): in each block the
 * element of largest magnitude maps to the most negative code exactly (scale = that element / -2^(bits-1)), which
 * uses all 2^bits codes. No zero points are stored: the kernel's default (2^(bits-1)) is the symmetric one; a
 * per-block zero point would shift a range that is already centred on weights whose mean is near zero.
 *
 * K that is not a multiple of the block size is padded with zeros in the last block, as the kernel expects.
 */

export type QuantBits = 4 | 8;

/** Block size along K: onnxruntime-genai's and optimum's default for CPU MatMulNBits. */
export const QUANT_BLOCK = 32;

export interface QuantLayout {
  bits: QuantBits;
  rows: number;
  cols: number;
  kBlocks: number;
  /** Bytes of one block's codes. */
  blob: number;
}

export function quantLayout(rows: number, cols: number, bits: QuantBits): QuantLayout {
  return { bits, rows, cols, kBlocks: Math.ceil(cols / QUANT_BLOCK), blob: (QUANT_BLOCK * bits) / 8 };
}

/** Bytes of the packed codes and of the scales of a matrix. */
export function quantBytes(l: QuantLayout): { codes: number; scales: number } {
  return { codes: l.rows * l.kBlocks * l.blob, scales: l.rows * l.kBlocks * 4 };
}

/**
 * Quantizes `rows` consecutive rows of a [*, cols] float32 matrix into `codes` (rows * kBlocks * blob bytes) and
 * `scales` (rows * kBlocks floats), both starting at the first of these rows.
 */
export function quantizeRows(
  src: Float32Array,
  rows: number,
  l: QuantLayout,
  codes: Uint8Array,
  scales: Float32Array,
): void {
  const { cols, kBlocks, blob, bits } = l;
  const zero = 1 << (bits - 1);
  const max = zero - 1;
  codes.fill(0, 0, rows * kBlocks * blob);
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    for (let b = 0; b < kBlocks; b++) {
      const from = row + b * QUANT_BLOCK;
      const to = row + Math.min(cols, (b + 1) * QUANT_BLOCK);
      let peak = 0;
      for (let i = from; i < to; i++) if (Math.abs(src[i]) > Math.abs(peak)) peak = src[i];
      const scale = peak / -zero;
      scales[r * kBlocks + b] = scale;
      const inv = scale === 0 ? 0 : 1 / scale;
      const at = (r * kBlocks + b) * blob;
      for (let i = from; i < to; i++) {
        let q = Math.round(src[i] * inv);
        q = Math.max(-zero, Math.min(q, max)) + zero;
        const j = i - from;
        if (bits === 8) codes[at + j] = q;
        else codes[at + (j >> 1)] |= j & 1 ? q << 4 : q;
      }
      // padding past K dequantizes to 0
      for (let j = to - from; j < QUANT_BLOCK; j++) {
        if (bits === 8) codes[at + j] = zero;
        else codes[at + (j >> 1)] |= j & 1 ? zero << 4 : zero;
      }
    }
  }
}

/** The float32 matrix [rows, cols] that codes and scales stand for (tests and the error measurement). */
export function dequantize(codes: Uint8Array, scales: Float32Array, l: QuantLayout): Float32Array {
  const out = new Float32Array(l.rows * l.cols);
  const zero = 1 << (l.bits - 1);
  for (let r = 0; r < l.rows; r++)
    for (let c = 0; c < l.cols; c++) {
      const b = Math.floor(c / QUANT_BLOCK);
      const j = c % QUANT_BLOCK;
      const at = (r * l.kBlocks + b) * l.blob;
      const code = l.bits === 8 ? codes[at + j] : (codes[at + (j >> 1)] >> ((j & 1) * 4)) & 15;
      out[r * l.cols + c] = (code - zero) * scales[r * l.kBlocks + b];
    }
  return out;
}
