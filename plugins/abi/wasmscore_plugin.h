/*
 * wasmscore device plugin ABI, version 1.0. The source of truth for the
 * contract between the wasmscore host and a device plugin (a shared
 * library). Modelled on Triton's backend API and ONNX Runtime's plugin EP
 * ABI: opaque handles, a MAJOR/MINOR handshake, `abi_version` first in the
 * function table, the table grows only at its end, errors are returned
 * objects (NULL = ok), memory kinds are explicit. Only the symbol
 * `wasmscore_plugin_get_api` is exported (link with plugins/abi/plugin.map).
 *
 * Lifecycle (the same words as the host's):
 *   initialize (once per process) -> version_init (per model version using
 *   the device) -> instance_init (per replica instance) -> execute (per op)
 *   -> instance_fini -> version_fini -> finalize.
 *
 * Threading: execute may be called concurrently on different instances,
 * never concurrently on one instance. The lifecycle calls (version_init,
 * instance_init, instance_fini, version_fini) are never called at once:
 * the host runs one at a time per library file (several devices loaded
 * from one file included), though execute may run on other
 * instances meanwhile. initialize and finalize are lifecycle calls too.
 */
#ifndef WASMSCORE_PLUGIN_H
#define WASMSCORE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WASMSCORE_PLUGIN_ABI_MAJOR 1u
#define WASMSCORE_PLUGIN_ABI_MINOR 0u
#define WASMSCORE_PLUGIN_ABI_VERSION ((WASMSCORE_PLUGIN_ABI_MAJOR << 16) | WASMSCORE_PLUGIN_ABI_MINOR)

typedef enum ws_dtype {
  WS_DTYPE_FLOAT32 = 1,
  WS_DTYPE_FLOAT64 = 2,
  WS_DTYPE_INT8 = 3,
  WS_DTYPE_INT16 = 4,
  WS_DTYPE_INT32 = 5
} ws_dtype;

typedef enum ws_op {
  /* C[m,n] = A[m,k] x B[k,n]; int8/int16 inputs give int32 outputs. */
  WS_OP_MATMUL = 1,
  /* C = alpha * op(A) x op(B) + beta * bias; params: alpha, beta, trans_a, trans_b. */
  WS_OP_GEMM = 2,
  /* NCHW x OIHW -> NCHW, stride and padding in params; no dilation, groups 1. */
  WS_OP_CONV2D = 3
} ws_op;

/* Where a tensor's bytes are. A plugin declares which it accepts. */
typedef enum ws_memory_kind {
  WS_MEMORY_HOST = 0,       /* ordinary host memory, any alignment */
  WS_MEMORY_HOST_PINNED = 1,/* page-locked host memory (DMA-able) */
  WS_MEMORY_DEVICE = 2      /* the device's own memory (a handle in data) */
} ws_memory_kind;

typedef enum ws_status {
  WS_STATUS_INVALID_ARGUMENT = 1, /* the caller's fault: shape, dtype, params */
  WS_STATUS_UNSUPPORTED = 2,      /* not in the plugin's capabilities */
  WS_STATUS_DEVICE_ERROR = 3,     /* the device failed */
  WS_STATUS_INTERNAL = 4
} ws_status;

/* A returned error; the host frees it with the table's error_free. */
typedef struct ws_error {
  ws_status code;
  const char* message; /* UTF-8, owned by the error */
} ws_error;

typedef struct ws_tensor {
  ws_dtype dtype;
  ws_memory_kind memory;
  uint32_t rank;
  const int64_t* shape; /* rank entries */
  void* data;           /* row-major elements; for outputs, preallocated by the host */
  size_t bytes;         /* size of data */
} ws_tensor;

/* One thing a plugin can do: an op on a dtype, within limits. */
typedef struct ws_capability {
  ws_op op;
  ws_dtype dtype;
  uint32_t max_rank;
  int64_t max_dim;        /* largest single dimension */
  uint32_t memory_kinds;  /* bit (1 << ws_memory_kind) per accepted kind */
} ws_capability;

typedef struct ws_op_params {
  float alpha, beta;          /* gemm */
  uint8_t trans_a, trans_b;   /* gemm */
  uint32_t stride[2];         /* conv2d (h, w) */
  uint32_t pad[2];            /* conv2d (h, w), symmetric */
} ws_op_params;

/* What one execute did, for service show and metrics. */
typedef struct ws_exec_stats {
  uint64_t device_cycles;     /* the device's own count (a simulator: its model) */
  uint64_t device_ns;         /* device time, if known; else 0 */
} ws_exec_stats;

typedef struct ws_plugin_api {
  uint32_t abi_version;       /* WASMSCORE_PLUGIN_ABI_VERSION the plugin was built against */
  const char* name;           /* device name, e.g. "fpga-sim" */
  const char* description;

  ws_error* (*initialize)(const char* config_json, void** plugin);
  ws_error* (*capabilities)(void* plugin, const ws_capability** caps, size_t* count);
  ws_error* (*version_init)(void* plugin, const char* version, void** version_state);
  ws_error* (*instance_init)(void* version_state, void** instance);
  /* Required. inputs: matmul 2, gemm 2 or 3 (bias), conv2d 2 or 3 (bias). */
  ws_error* (*execute)(void* instance, ws_op op, const ws_op_params* params,
                       const ws_tensor* inputs, size_t n_inputs,
                       ws_tensor* output, ws_exec_stats* stats);
  void (*instance_fini)(void* instance);
  void (*version_fini)(void* version_state);
  void (*finalize)(void* plugin);
  void (*error_free)(ws_error* error);
  /* New entries go here, at the end, with a MINOR bump. */
} ws_plugin_api;

/* The one exported symbol. The host passes its MAJOR; a plugin that cannot
 * serve it returns NULL. The host refuses a table whose MAJOR differs from
 * its own or whose MINOR is newer. */
const ws_plugin_api* wasmscore_plugin_get_api(uint32_t host_abi_major);

#ifdef __cplusplus
}
#endif
#endif /* WASMSCORE_PLUGIN_H */
