/**
 * Writing ONNX models: the ModelProto messages a decoder graph needs, encoded with protobufjs. Field numbers are
 * those of onnx/onnx.proto (IR version 8); fields this builder never writes are left out of the schema.
 */
import * as protobuf from 'protobufjs';

const SCHEMA = `
syntax = "proto2";
package onnx;
message StringStringEntryProto { optional string key = 1; optional string value = 2; }
message OperatorSetIdProto { optional string domain = 1; optional int64 version = 2; }
message TensorProto {
  repeated int64 dims = 1;
  optional int32 data_type = 2;
  optional string name = 8;
  optional bytes raw_data = 9;
  repeated StringStringEntryProto external_data = 13;
  optional int32 data_location = 14;
}
message AttributeProto {
  optional string name = 1;
  optional float f = 2;
  optional int64 i = 3;
  optional bytes s = 4;
  optional TensorProto t = 5;
  optional GraphProto g = 6;
  repeated float floats = 7;
  repeated int64 ints = 8;
  optional int32 type = 20;
}
message NodeProto {
  repeated string input = 1;
  repeated string output = 2;
  optional string name = 3;
  optional string op_type = 4;
  repeated AttributeProto attribute = 5;
  optional string domain = 7;
}
message TensorShapeProto {
  message Dimension { optional int64 dim_value = 1; optional string dim_param = 2; }
  repeated Dimension dim = 1;
}
message TypeProto {
  message Tensor { optional int32 elem_type = 1; optional TensorShapeProto shape = 2; }
  optional Tensor tensor_type = 1;
}
message ValueInfoProto { optional string name = 1; optional TypeProto type = 2; }
message GraphProto {
  repeated NodeProto node = 1;
  optional string name = 2;
  repeated TensorProto initializer = 5;
  repeated ValueInfoProto input = 11;
  repeated ValueInfoProto output = 12;
}
message ModelProto {
  optional int64 ir_version = 1;
  optional string producer_name = 2;
  optional string producer_version = 3;
  optional GraphProto graph = 7;
  repeated OperatorSetIdProto opset_import = 8;
  repeated StringStringEntryProto metadata_props = 14;
}
`;

/** onnx.TensorProto.DataType values used here. */
export const DataType = { FLOAT: 1, UINT8: 2, INT32: 6, INT64: 7, BOOL: 9, FLOAT16: 10 } as const;
/** onnx.AttributeProto.AttributeType values used here. */
const AttributeType = { FLOAT: 1, INT: 2, STRING: 3, GRAPH: 5, FLOATS: 6, INTS: 7 } as const;

export type AttributeValue =
  | number
  | string
  | number[]
  | { float: number }
  | { floats: number[] }
  | { graph: GraphMessage };

export interface TensorMessage {
  name: string;
  dims: number[];
  data_type: number;
  raw_data?: Uint8Array;
  external_data?: { key: string; value: string }[];
  data_location?: number;
}

export interface NodeMessage {
  input: string[];
  output: string[];
  name: string;
  op_type: string;
  domain?: string;
  attribute: object[];
}

/** A subgraph (an If node's branch): its nodes and outputs; it reads the outer graph's names. */
export interface GraphMessage {
  name: string;
  node: NodeMessage[];
  output: object[];
}

export interface ValueInfo {
  name: string;
  elemType: number;
  /** A number is a fixed size, a string a symbolic one. */
  shape: (number | string)[];
}

let modelType: protobuf.Type | undefined;

export const valueInfo = (v: ValueInfo) => ({
  name: v.name,
  type: {
    tensor_type: {
      elem_type: v.elemType,
      shape: { dim: v.shape.map((d) => (typeof d === 'number' ? { dim_value: d } : { dim_param: d })) },
    },
  },
});

/** Integers are INT / INTS attributes; use `{ float }` / `{ floats }` for floating-point ones. */
export function attribute(name: string, value: AttributeValue): object {
  if (typeof value === 'string') return { name, type: AttributeType.STRING, s: Buffer.from(value, 'utf8') };
  if (typeof value === 'number') return { name, type: AttributeType.INT, i: value };
  if (Array.isArray(value)) return { name, type: AttributeType.INTS, ints: value };
  if ('float' in value) return { name, type: AttributeType.FLOAT, f: value.float };
  if ('graph' in value) return { name, type: AttributeType.GRAPH, g: value.graph };
  return { name, type: AttributeType.FLOATS, floats: value.floats };
}

export function encodeModel(model: {
  nodes: NodeMessage[];
  initializers: TensorMessage[];
  inputs: ValueInfo[];
  outputs: ValueInfo[];
  opset: number;
  metadata: Record<string, string>;
  name: string;
}): Uint8Array {
  modelType ??= protobuf.parse(SCHEMA, { keepCase: true }).root.lookupType('onnx.ModelProto');
  const message = {
    ir_version: 8,
    producer_name: 'piggyback-lens',
    producer_version: '1',
    // com.microsoft: onnxruntime's contrib ops (MatMulNBits for quantized matrices)
    opset_import: [
      { domain: '', version: model.opset },
      { domain: 'com.microsoft', version: 1 },
    ],
    metadata_props: Object.entries(model.metadata).map(([key, value]) => ({ key, value })),
    graph: {
      name: model.name,
      node: model.nodes,
      initializer: model.initializers,
      input: model.inputs.map(valueInfo),
      output: model.outputs.map(valueInfo),
    },
  };
  const err = modelType.verify(message);
  if (err) throw new Error(`internal error: invalid ONNX model message (${err})`);
  return modelType.encode(modelType.fromObject(message)).finish();
}
