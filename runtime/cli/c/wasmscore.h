/* wasmscore.h: the wasmscore host API for C scoring modules.
 *
 * A module defines two functions, as in Azure ML's score.py:
 *
 *     #include "wasmscore.h"
 *
 *     static ws_model model;
 *
 *     ws_status init(void) {
 *         return ws_model_load("model.onnx", &model);   // ships with the version
 *     }
 *
 *     ws_status run(const char *body, size_t len, ws_out *out) {
 *         float *x; size_t rows, cols;
 *         ws_status s = ws_json_matrix(body, len, "data", &x, &rows, &cols);
 *         if (s) return s;                              // malformed JSON -> 400
 *         ...
 *         return ws_out_printf(out, "{\"probabilities\": ...}");
 *     }
 *
 * `wasmscore build DIR -o module.wasm` compiles every .c in DIR with this
 * helper and the world's bindings (wit-bindgen) into a component.
 *
 * Errors: every call returns WS_OK (0) or an error status. Return
 * `ws_bad_input("...")` for the client's mistakes (HTTP 400) and
 * `ws_failed("...")` for the module's (HTTP 500); both take printf
 * formats. An error a host call returned passes through as it is. A trap
 * (abort(), __builtin_trap()) is a 500 too, and the host replaces the
 * instance.
 *
 * Memory: tensors live on the host; a ws_tensor is a handle, released
 * with ws_tensor_free. Arrays a call hands back (ws_tensor_f32_data,
 * ws_json_matrix) are malloc'd: free() them. One request at a time runs
 * in an instance, so module-level state needs no locks.
 */
#ifndef WASMSCORE_H
#define WASMSCORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "scorer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    WS_OK = 0,
    /* The request is wrong: HTTP 400. */
    WS_BAD_INPUT = 1,
    /* The module failed: HTTP 500. */
    WS_FAILED = 2,
} ws_status;

/* Records an error message (printf format) and returns its status. */
ws_status ws_bad_input(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
ws_status ws_failed(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The message of the last error ("" when none). */
const char *ws_last_error(void);

/* ---- the response ---------------------------------------------------- */

/* The body run() writes; JSON unless ws_out_content_type says otherwise. */
typedef struct ws_out ws_out;
/* Appends formatted text. */
ws_status ws_out_printf(ws_out *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends raw bytes. */
ws_status ws_out_write(ws_out *out, const void *data, size_t len);
/* Appends a JSON array of N floats: [1.5,2,...] (NaN and infinities as null). */
ws_status ws_out_json_floats(ws_out *out, const float *values, size_t n);
/* Sets the content type ("application/json" unless set). */
ws_status ws_out_content_type(ws_out *out, const char *content_type);

/* ---- tensors --------------------------------------------------------- */

typedef struct {
    wasmscore_scoring_tensors_own_tensor_t handle;
} ws_tensor;

/* A float32 tensor of SHAPE (RANK dimensions) from row-major DATA. */
ws_status ws_tensor_f32(const uint64_t *shape, size_t rank, const float *data, ws_tensor *out);
/* An int64 tensor. */
ws_status ws_tensor_i64(const uint64_t *shape, size_t rank, const int64_t *data, ws_tensor *out);
/* The shape: up to MAX dimensions into SHAPE, the rank into *RANK. */
ws_status ws_tensor_shape(ws_tensor t, uint64_t *shape, size_t max, size_t *rank);
/* The elements of a float32 tensor, copied out (free() them). */
ws_status ws_tensor_f32_data(ws_tensor t, float **data, size_t *len);
void ws_tensor_free(ws_tensor t);

/* ---- 16-bit floats and byte strings ---------------------------------- */

/* FP16 (IEEE half precision) and BF16 (bfloat16). */
typedef enum { WS_FLOAT16 = 0, WS_BFLOAT16 = 1 } ws_half;
/* An FP16 or BF16 tensor from float32 DATA, each rounded to the nearest
 * 16-bit float. */
ws_status ws_tensor_half(ws_half type, const uint64_t *shape, size_t rank, const float *data, ws_tensor *out);
/* The elements of an FP16 or BF16 tensor as float32 (exactly), copied out
 * (free() them); *TYPE, when TYPE is not NULL, says which. WS_BAD_INPUT for
 * a tensor of another dtype. */
ws_status ws_tensor_half_data(ws_tensor t, ws_half *type, float **data, size_t *len);

/* One element of a string tensor: bytes that need not be UTF-8 (an image
 * in an Open Inference Protocol BYTES tensor) and need not end in a NUL. */
typedef struct {
    uint8_t *ptr;
    size_t len;
} ws_bytes;
/* A string tensor of SHAPE from its elements' bytes (as many as SHAPE holds). */
ws_status ws_tensor_bytes(const uint64_t *shape, size_t rank, const ws_bytes *elements, ws_tensor *out);
/* A string tensor's elements, exactly: *N of them into *ELEMENTS; release
 * them with ws_bytes_free. WS_BAD_INPUT for a tensor of another dtype. */
ws_status ws_tensor_bytes_data(ws_tensor t, ws_bytes **elements, size_t *n);
void ws_bytes_free(ws_bytes *elements, size_t n);

/* ---- models ---------------------------------------------------------- */

typedef struct {
    wasmscore_scoring_inference_own_model_t handle;
} ws_model;

/* A model file shipped with the version ("model.onnx"); call it in init(). */
ws_status ws_model_load(const char *file, ws_model *out);
/* The same on a named device ("cpu", "cuda", a plugin's name). */
ws_status ws_model_load_on(const char *file, const char *device, ws_model *out);
/* Runs the model on N_IN named inputs and gives the N_OUT named outputs
 * (free each with ws_tensor_free). */
ws_status ws_model_run(ws_model m, size_t n_in, const char *const *in_names, const ws_tensor *inputs,
                       size_t n_out, const char *const *out_names, ws_tensor *outputs);

/* ---- ops (device NULL: the version's device) ------------------------- */

ws_status ws_matmul(ws_tensor a, ws_tensor b, const char *device, ws_tensor *out);
ws_status ws_add(ws_tensor a, ws_tensor b, const char *device, ws_tensor *out);
ws_status ws_relu(ws_tensor x, const char *device, ws_tensor *out);
ws_status ws_softmax(ws_tensor x, int32_t axis, const char *device, ws_tensor *out);

/* ---- logs ------------------------------------------------------------ */

typedef enum { WS_DEBUG = 0, WS_INFO = 1, WS_WARN = 2, WS_ERROR = 3 } ws_level;
/* A line in `wasmscore service logs` (printf format). */
void ws_log(ws_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- reported numbers ------------------------------------------------ */

/* A number (a click, a score) for `wasmscore endpoint compare`. */
void ws_record(const char *name, double value);

/* Model data collection (versions with collect_model_data): DATA is text,
 * usually JSON, kept with the request's correlation id when the request is
 * sampled; otherwise nothing happens. */
typedef enum {
    WS_INPUTS = 0,
    WS_PREDICTIONS = 1,
    WS_LABELS = 2,
    WS_SIGNALS = 3,
    WS_GENERAL = 4,
} ws_designation;
void ws_collect(ws_designation designation, const char *name, const char *data);

/* ---- JSON input ------------------------------------------------------ */

/* Reads BODY (LEN bytes) as a JSON object and its member KEY as a matrix
 * of numbers, [[...], ...], with rows of equal length: *VALUES gets the
 * rows x cols numbers row-major (free() it). Malformed JSON, a missing
 * key, ragged rows or a non-number give WS_BAD_INPUT with the reason. */
ws_status ws_json_matrix(const char *body, size_t len, const char *key, float **values, size_t *rows,
                         size_t *cols);

/* ---- what the module defines ------------------------------------------ */

/* Once per replica, before it serves. */
ws_status init(void);
/* Once per request: BODY is the request body (LEN bytes, not
 * NUL-terminated), OUT the response body. */
ws_status run(const char *body, size_t len, ws_out *out);

#ifdef __cplusplus
}
#endif
#endif
