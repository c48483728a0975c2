/* Iris scoring module in C, Azure ML style: init() once per replica,
 * run() per request. Build: wasmscore build examples/iris-c -o iris-c.wasm */
#include <stdlib.h>

#include "wasmscore.h"

static ws_model model;

ws_status init(void) {
    /* model.onnx ships with the version (`wasmscore deploy --model examples/iris/model.onnx`). */
    return ws_model_load("model.onnx", &model);
}

ws_status run(const char *body, size_t len, ws_out *out) {
    float *data;
    size_t rows, cols;
    ws_status s = ws_json_matrix(body, len, "data", &data, &rows, &cols); /* malformed JSON -> 400 */
    if (s) return s;
    if (rows == 0 || cols != 4) {
        free(data);
        return ws_bad_input("each row of \"data\" needs 4 numbers");
    }
    uint64_t shape[2] = {rows, 4};
    ws_tensor x, probs;
    s = ws_tensor_f32(shape, 2, data, &x);
    free(data);
    if (s) return s;
    const char *in[] = {"X"}, *wanted[] = {"probabilities"};
    s = ws_model_run(model, 1, in, &x, 1, wanted, &probs);
    ws_tensor_free(x);
    if (s) return s;
    float *p;
    size_t n;
    s = ws_tensor_f32_data(probs, &p, &n);
    ws_tensor_free(probs);
    if (s) return s;
    s = ws_out_printf(out, "{\"probabilities\": [");
    for (size_t r = 0; r < rows && !s; r++) {
        if (r) s = ws_out_printf(out, ",");
        if (!s) s = ws_out_json_floats(out, p + r * 3, 3);
    }
    if (!s) s = ws_out_printf(out, "]}");
    free(p);
    return s;
}
