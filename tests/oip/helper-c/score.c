/* A C module that exercises the helper's 16-bit floats and byte strings,
 * on tests/oip/make_models.py's halves model. Built by
 * tests/tests/e2e/oip.rs. run() ignores its body: it runs the model on
 * FP16 H = [[1.5, 0.1]] and BF16 B = [[2.0, -3.0]] made with
 * ws_tensor_half, reads H2 (FP16) with ws_tensor_half_data and HF
 * (float32) with ws_tensor_f32_data, and makes a string tensor of bytes
 * that are not UTF-8 with ws_tensor_bytes and reads it back. */
#include <stdlib.h>
#include <string.h>

#include "wasmscore.h"

static ws_model model;

ws_status init(void) { return ws_model_load("model.onnx", &model); }

static ws_status halves(ws_out *out) {
    uint64_t shape[2] = {1, 2};
    const float h[2] = {1.5f, 0.1f}, b[2] = {2.0f, -3.0f};
    ws_tensor in[2], got[2];
    ws_status s = ws_tensor_half(WS_FLOAT16, shape, 2, h, &in[0]);
    if (s) return s;
    s = ws_tensor_half(WS_BFLOAT16, shape, 2, b, &in[1]);
    if (s) {
        ws_tensor_free(in[0]);
        return s;
    }
    const char *names[] = {"H", "B"}, *wanted[] = {"H2", "HF"};
    s = ws_model_run(model, 2, names, in, 2, wanted, got);
    ws_tensor_free(in[0]);
    ws_tensor_free(in[1]);
    if (s) return s;
    float *h2 = NULL, *hf = NULL;
    size_t n2 = 0, nf = 0;
    ws_half type = WS_BFLOAT16;
    s = ws_tensor_half_data(got[0], &type, &h2, &n2);
    if (!s) s = ws_tensor_f32_data(got[1], &hf, &nf);
    /* A float32 tensor is not a 16-bit one: WS_BAD_INPUT. */
    float *none;
    size_t nn;
    ws_status refused = s ? WS_OK : ws_tensor_half_data(got[1], NULL, &none, &nn);
    ws_tensor_free(got[0]);
    ws_tensor_free(got[1]);
    if (!s) s = ws_out_printf(out, "\"type\": %d, \"refused\": %d, \"H2\": ", (int)type, (int)refused);
    if (!s) s = ws_out_json_floats(out, h2, n2);
    if (!s) s = ws_out_printf(out, ", \"HF\": ");
    if (!s) s = ws_out_json_floats(out, hf, nf);
    free(h2);
    free(hf);
    return s;
}

static ws_status bytes(ws_out *out) {
    static uint8_t png[] = {0x89, 'P', 'N', 'G', 0x00, 0xff}, text[] = {'t', 0xc3, 0xa9, 'x', 't'};
    ws_bytes elements[2] = {{png, sizeof png}, {text, sizeof text}};
    uint64_t shape[1] = {2};
    ws_tensor t;
    ws_status s = ws_tensor_bytes(shape, 1, elements, &t);
    if (s) return s;
    ws_bytes *back;
    size_t n;
    s = ws_tensor_bytes_data(t, &back, &n);
    ws_tensor_free(t);
    if (s) return s;
    s = ws_out_printf(out, ", \"bytes\": [");
    for (size_t i = 0; i < n && !s; i++) {
        s = ws_out_printf(out, "%s[", i ? "," : "");
        for (size_t j = 0; j < back[i].len && !s; j++) s = ws_out_printf(out, "%s%d", j ? "," : "", back[i].ptr[j]);
        if (!s) s = ws_out_printf(out, "]");
    }
    if (!s) s = ws_out_printf(out, "]");
    ws_bytes_free(back, n);
    return s;
}

/* Text that is not UTF-8 where the host takes a string: a log line and a
 * metric's name in Latin-1, and an error whose message is cut by the
 * helper's 1024-byte buffer in the middle of a character. */
static ws_status latin1(void) {
    ws_log(WS_INFO, "caf\xe9 au lait");
    ws_record("caf\xe9", 1.0);
    char pad[1018]; /* "caf? " and 1017 bytes: the last byte kept is 0xc3 */
    memset(pad, 'a', sizeof pad - 1);
    pad[sizeof pad - 1] = 0;
    return ws_bad_input("caf\xe9 %s\xc3\xa9", pad);
}

ws_status run(const char *body, size_t len, ws_out *out) {
    if (len == 6 && memcmp(body, "latin1", 6) == 0) return latin1();
    ws_status s = ws_out_printf(out, "{");
    if (!s) s = halves(out);
    if (!s) s = bytes(out);
    return s ? s : ws_out_printf(out, "}");
}
