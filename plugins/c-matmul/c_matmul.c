/*
 * c-matmul: a device plugin written in C straight against
 * plugins/abi/wasmscore_plugin.h, to show the header is all a platform
 * team needs. It runs float32 MatMul with plain loops on the CPU (it is an
 * example, not an accelerator). Build:
 *
 *   cc -shared -fPIC -O2 -I plugins/abi -Wl,--version-script=plugins/abi/plugin.map \
 *      -o libc_matmul.so plugins/c-matmul/c_matmul.c
 *
 * -DPLUGIN_MAJOR=2 or -DPLUGIN_MINOR=5 build it for another ABI version
 * (the end-to-end tests check that the host refuses those).
 */
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#include "wasmscore_plugin.h"

#ifndef PLUGIN_MAJOR
#define PLUGIN_MAJOR WASMSCORE_PLUGIN_ABI_MAJOR
#endif
#ifndef PLUGIN_MINOR
#define PLUGIN_MINOR WASMSCORE_PLUGIN_ABI_MINOR
#endif

static ws_error* error(ws_status code, const char* message) {
  ws_error* e = malloc(sizeof *e);
  if (e == NULL) return NULL; /* out of memory: nothing better to return */
  size_t n = strlen(message) + 1;
  char* m = malloc(n);
  if (m != NULL) memcpy(m, message, n);
  e->code = code;
  e->message = m;
  return e;
}

static void error_free(ws_error* e) {
  if (e == NULL) return;
  free((void*)e->message);
  free(e);
}

static const ws_capability CAPS[] = {
  {WS_OP_MATMUL, WS_DTYPE_FLOAT32, 2, 4096, 1u << WS_MEMORY_HOST},
};

static ws_error* capabilities(void* plugin, const ws_capability** caps, size_t* count) {
  (void)plugin;
  *caps = CAPS;
  *count = sizeof CAPS / sizeof CAPS[0];
  return NULL;
}

/* Buffers may be unaligned: read and write floats through memcpy. */
static float load(const void* base, size_t i) {
  float v;
  memcpy(&v, (const char*)base + i * sizeof v, sizeof v);
  return v;
}

static void store(void* base, size_t i, float v) {
  memcpy((char*)base + i * sizeof v, &v, sizeof v);
}

static ws_error* execute(void* instance, ws_op op, const ws_op_params* params, const ws_tensor* inputs,
                         size_t n_inputs, ws_tensor* output, ws_exec_stats* stats) {
  (void)instance;
  (void)params;
  char msg[200];
  if (op != WS_OP_MATMUL) return error(WS_STATUS_UNSUPPORTED, "c-matmul runs matmul only");
  if (n_inputs != 2) return error(WS_STATUS_INVALID_ARGUMENT, "matmul takes 2 inputs");
  const ws_tensor* a = &inputs[0];
  const ws_tensor* b = &inputs[1];
  if (a->dtype != WS_DTYPE_FLOAT32 || b->dtype != WS_DTYPE_FLOAT32 || output->dtype != WS_DTYPE_FLOAT32)
    return error(WS_STATUS_UNSUPPORTED, "c-matmul runs float32 only");
  if (a->rank != 2 || b->rank != 2 || output->rank != 2)
    return error(WS_STATUS_INVALID_ARGUMENT, "matmul takes 2-D tensors");
  int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
  if (m < 0 || k < 0 || n < 0 || b->shape[0] != k || output->shape[0] != m || output->shape[1] != n) {
    snprintf(msg, sizeof msg, "matmul: [%lld, %lld] x [%lld, %lld] -> [%lld, %lld] do not fit", (long long)m,
             (long long)k, (long long)b->shape[0], (long long)n, (long long)output->shape[0],
             (long long)output->shape[1]);
    return error(WS_STATUS_INVALID_ARGUMENT, msg);
  }
  if (a->bytes != (size_t)(m * k) * 4 || b->bytes != (size_t)(k * n) * 4 || output->bytes != (size_t)(m * n) * 4)
    return error(WS_STATUS_INVALID_ARGUMENT, "matmul: a buffer's size does not match its shape");
  for (int64_t i = 0; i < m; i++) {
    for (int64_t j = 0; j < n; j++) {
      float acc = 0.0f;
      for (int64_t p = 0; p < k; p++) acc += load(a->data, (size_t)(i * k + p)) * load(b->data, (size_t)(p * n + j));
      store(output->data, (size_t)(i * n + j), acc);
    }
  }
  stats->device_cycles = 0; /* no device of its own: the host's wall time is the time */
  stats->device_ns = 0;
  return NULL;
}

static const ws_plugin_api API = {
  (PLUGIN_MAJOR << 16) | PLUGIN_MINOR,
  "c-matmul",
  "an example plugin in C: float32 matmul with plain loops on the CPU",
  NULL, /* initialize: no state */
  capabilities,
  NULL, /* version_init */
  NULL, /* instance_init */
  execute,
  NULL, /* instance_fini */
  NULL, /* version_fini */
  NULL, /* finalize */
  error_free,
};

const ws_plugin_api* wasmscore_plugin_get_api(uint32_t host_abi_major) {
  /* A plugin serves the major it was built for, and no other. */
  if (host_abi_major != PLUGIN_MAJOR) return NULL;
  return &API;
}
