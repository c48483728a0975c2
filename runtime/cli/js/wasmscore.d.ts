// Types for the wasmscore host API that score.js modules import:
//
//     import { loadModel, tensor, BadInput } from "wasmscore";
//
// An ambient module: add this file to a jsconfig.json / tsconfig.json
// ("include") or reference it (/// <reference path="...wasmscore.d.ts" />)
// to type-check a score.js with `// @ts-check` or to write it in TypeScript
// and compile it to an ES module first. A module exports
//
//     export function init(): void | Promise<void>;            // optional
//     export function run(rawData: string): unknown | Promise<unknown>;
//
// run() returns a JSON-serializable value (Tensors serialize as their nested
// lists) or a Uint8Array (sent as application/octet-stream).

declare module "wasmscore" {
  /** Element types; "bool" is ONNX's boolean; float16 and bfloat16 are
   * made from and read as float32 values. */
  export type Dtype =
    | "float32"
    | "float64"
    | "float16"
    | "bfloat16"
    | "int8"
    | "int16"
    | "int32"
    | "int64"
    | "uint8"
    | "uint16"
    | "uint32"
    | "uint64"
    | "bool"
    | "string";

  export type Scalar = number | bigint | boolean | string;

  /** A single value, a typed array, or arrays nested to any depth. */
  export type TensorData = Scalar | ArrayLike<unknown> | NestedArray;
  export interface NestedArray extends ReadonlyArray<Scalar | NestedArray | ArrayLike<unknown>> {}

  /** Throw from run() when the request is wrong: the client gets 400. */
  export class BadInput extends Error {
    constructor(message?: string, options?: ErrorOptions);
    name: "BadInput";
  }

  /**
   * A host tensor. Tensors made during a run() are freed when it returns,
   * unless kept with keep(); tensors made in init() live until disposed.
   */
  export class Tensor {
    /** The WIT `tensor` resource, for calling the bindings directly. */
    readonly handle: unknown;
    /** The shape, as Numbers. */
    readonly shape: number[];
    readonly dtype: Dtype;
    /** The device that holds the data ("cpu", ...). */
    readonly device: string;
    /**
     * The elements in row-major order: the dtype's typed array
     * (BigInt64Array / BigUint64Array for int64 / uint64, Float32Array for
     * float16 and bfloat16), or an array for bool and string (a string
     * element that is not UTF-8, an image say, is a Uint8Array).
     */
    flat():
      | Float32Array
      | Float64Array
      | Int8Array
      | Int16Array
      | Int32Array
      | BigInt64Array
      | Uint8Array
      | Uint16Array
      | Uint32Array
      | BigUint64Array
      | boolean[]
      | (string | Uint8Array)[];
    /**
     * The elements as nested arrays of the tensor's shape (the element itself
     * for shape []); 64-bit integers become Numbers.
     */
    toList(): any;
    /** JSON.stringify writes a tensor as toList(). */
    toJSON(): any;
    /** Keeps this tensor after the run() that made it returns. */
    keep(): this;
    /** Frees the host's copy now; the tensor cannot be used afterwards. */
    dispose(): void;
    [Symbol.dispose](): void;
  }

  /** One input or output of a model; -1 in shape is a dynamic dimension. */
  export interface TensorInfo {
    name: string;
    dtype: Dtype;
    shape: number[];
  }

  /** A model that ships with the version, run by the host. */
  export class Model {
    readonly handle: unknown;
    readonly inputs: TensorInfo[];
    readonly outputs: TensorInfo[];
    /**
     * Runs the model on named inputs; data that is not a Tensor becomes a
     * tensor of the input's dtype. `outputs` names the outputs wanted (empty
     * for all).
     */
    run(
      inputs: Record<string, Tensor | TensorData> | Map<string, Tensor | TensorData>,
      outputs?: readonly string[],
    ): Record<string, Tensor>;
  }

  /**
   * Makes a host tensor. The shape is inferred from the nesting (a typed
   * array is one dimension) unless given; then `data` may be flat or nested
   * any way with that many elements. Ragged arrays, elements that do not fit
   * the dtype and an unknown dtype throw BadInput.
   */
  export function tensor(data: TensorData, dtype?: Dtype, shape?: ArrayLike<number | bigint>): Tensor;

  /**
   * Makes a string tensor from its elements' bytes (Uint8Array, or strings,
   * which go as UTF-8): for data that is not text, such as an image in an
   * Open Inference Protocol BYTES tensor. The shape defaults to one dimension.
   */
  export function bytesTensor(elements: ArrayLike<Uint8Array | string>, shape?: ArrayLike<number | bigint>): Tensor;

  /** Loads a model file shipped with the version ("model.onnx"). Call it in init(). */
  export function loadModel(name: string): Model;

  /** The same model on a named device ("cpu", "cuda", a plugin's name). */
  export function loadModelOn(name: string, device: string): Model;

  export type LogLevel = "debug" | "info" | "warn" | "error";

  /** Reports a number (a click, a score) for `wasmscore endpoint compare`. */
  export function record(name: string, value: number): void;
  /** Collects data for analysis when the version collects and the request is sampled. */
  export function collect(
    data: unknown,
    designation?: "inputs" | "predictions" | "labels" | "signals" | "general",
    name?: string,
  ): void;
  /** Writes a line to the version's logs (console.* does too, as info etc.). */
  export function log(message: unknown, level?: LogLevel): void;

  type Input = Tensor | TensorData;

  /**
   * Single tensor ops on a device (undefined: the version's device).
   * Arguments that are not Tensors become float32 tensors.
   */
  export const ops: {
    /** [m, k] x [k, n] -> [m, n]. */
    matmul(a: Input, b: Input, device?: string): Tensor;
    /** alpha * op(a) * op(b) + beta * c, as ONNX Gemm; c broadcasts to [m, n]. */
    gemm(
      a: Input,
      b: Input,
      options?: { c?: Input; alpha?: number; beta?: number; transA?: boolean; transB?: boolean; device?: string },
    ): Tensor;
    /** Element-wise sum; b may have the shape of a suffix of a's shape (a bias). */
    add(a: Input, b: Input, device?: string): Tensor;
    relu(x: Input, device?: string): Tensor;
    /** Softmax along axis (negative counts from the end; default -1). */
    softmax(x: Input, axis?: number, device?: string): Tensor;
    /**
     * 2-D convolution, NCHW: x [n, c, h, w], w [o, c, kh, kw], bias [o];
     * strides (default [1, 1]) and pads (default [0, 0]) are [h, w].
     */
    conv2d(
      x: Input,
      w: Input,
      options?: { bias?: Input; strides?: [number, number]; pads?: [number, number]; device?: string },
    ): Tensor;
  };
}
