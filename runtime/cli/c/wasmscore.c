/* wasmscore.c: the helper behind wasmscore.h, and the world's exports
 * (init and run) that call the module's init() and run(). Compiled into
 * every C module by `wasmscore build`. */
#include "wasmscore.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- text ------------------------------------------------------------- */

/* A WIT string must be UTF-8: the host traps the instance on one that is
 * not. The module's text that is not (a Latin-1 name, a message cut in the
 * middle of a character) goes with each bad byte as '?'. */

/* The length of the valid UTF-8 sequence at p (n bytes left), or 0. */
static size_t utf8_seq(const uint8_t *p, size_t n) {
    uint8_t c = p[0];
    size_t len;
    uint8_t lo = 0x80, hi = 0xbf;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else return 0;
    if (n < len || p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (p[i] < 0x80 || p[i] > 0xbf) return 0;
    return len;
}

static bool utf8_valid(const char *s, size_t n) {
    const uint8_t *p = (const uint8_t *)s;
    for (size_t i = 0, k; i < n; i += k)
        if (!(k = utf8_seq(p + i, n - i))) return false;
    return true;
}

/* Replaces each byte that is not part of valid UTF-8 with '?'. */
static void utf8_fix(char *s, size_t n) {
    uint8_t *p = (uint8_t *)s;
    for (size_t i = 0, k; i < n; i += k)
        if (!(k = utf8_seq(p + i, n - i))) {
            p[i] = '?';
            k = 1;
        }
}

/* Fixed copies of the module's text live until its call returns. */
static char **fixed;
static size_t n_fixed, cap_fixed;

static void fixed_free(void) {
    for (size_t i = 0; i < n_fixed; i++) free(fixed[i]);
    n_fixed = 0;
}

/* The module's text as a WIT string: as it is, or a fixed copy. Out of
 * memory for the copy, its valid start. */
static scorer_string_t str(const char *s) {
    size_t n = strlen(s);
    scorer_string_t r = {(uint8_t *)s, n};
    if (utf8_valid(s, n)) return r;
    if (n_fixed == cap_fixed) {
        size_t cap = cap_fixed ? cap_fixed * 2 : 8;
        char **more = realloc(fixed, cap * sizeof *more);
        if (more) {
            fixed = more;
            cap_fixed = cap;
        }
    }
    char *copy = n_fixed < cap_fixed ? malloc(n + 1) : NULL;
    if (!copy) {
        size_t i = 0, k;
        while (i < n && (k = utf8_seq((const uint8_t *)s + i, n - i))) i += k;
        r.len = i;
        return r;
    }
    memcpy(copy, s, n + 1);
    utf8_fix(copy, n);
    fixed[n_fixed++] = copy;
    r.ptr = (uint8_t *)copy;
    return r;
}

/* ---- errors ----------------------------------------------------------- */

static char last_error[1024];

static ws_status record(ws_status s, const char *fmt, va_list ap) {
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    /* A message cut at the buffer's end may end mid-character. */
    utf8_fix(last_error, strlen(last_error));
    return s;
}

ws_status ws_bad_input(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ws_status s = record(WS_BAD_INPUT, fmt, ap);
    va_end(ap);
    return s;
}

ws_status ws_failed(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ws_status s = record(WS_FAILED, fmt, ap);
    va_end(ap);
    return s;
}

const char *ws_last_error(void) { return last_error; }

/* A host call's error: its message becomes the last error, its kind the status. */
static ws_status host_error(scorer_error_t *err) {
    bool bad = err->tag == WASMSCORE_SCORING_TYPES_ERROR_BAD_INPUT;
    scorer_string_t *m = bad ? &err->val.bad_input : &err->val.failed;
    ws_status s = (bad ? ws_bad_input : ws_failed)("%.*s", (int)m->len, (const char *)m->ptr);
    scorer_error_free(err);
    return s;
}

static void to_wit_error(ws_status s, scorer_error_t *err) {
    const char *msg = last_error[0] ? last_error : "the module returned an error without a message";
    if (s == WS_BAD_INPUT) {
        err->tag = WASMSCORE_SCORING_TYPES_ERROR_BAD_INPUT;
        scorer_string_dup(&err->val.bad_input, msg);
    } else {
        err->tag = WASMSCORE_SCORING_TYPES_ERROR_FAILED;
        scorer_string_dup(&err->val.failed, msg);
    }
}

/* ---- the response ----------------------------------------------------- */

struct ws_out {
    uint8_t *data;
    size_t len, cap;
    char *content_type;
};

ws_status ws_out_write(ws_out *out, const void *data, size_t len) {
    if (out->len + len > out->cap) {
        size_t cap = out->cap ? out->cap : 256;
        while (cap < out->len + len) cap *= 2;
        uint8_t *p = realloc(out->data, cap);
        if (!p) return ws_failed("out of memory for a %zu-byte response", out->len + len);
        out->data = p;
        out->cap = cap;
    }
    memcpy(out->data + out->len, data, len);
    out->len += len;
    return WS_OK;
}

ws_status ws_out_printf(ws_out *out, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return ws_failed("ws_out_printf: bad format");
    if ((size_t)n < sizeof small) return ws_out_write(out, small, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big) return ws_failed("out of memory for a %d-byte string", n);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    ws_status s = ws_out_write(out, big, (size_t)n);
    free(big);
    return s;
}

ws_status ws_out_json_floats(ws_out *out, const float *values, size_t n) {
    ws_status s = ws_out_write(out, "[", 1);
    for (size_t i = 0; i < n && !s; i++) {
        if (i) s = ws_out_write(out, ",", 1);
        if (s) break;
        /* %.9g keeps every float32 exactly; JSON has no NaN or infinity. */
        s = isfinite(values[i]) ? ws_out_printf(out, "%.9g", (double)values[i]) : ws_out_write(out, "null", 4);
    }
    return s ? s : ws_out_write(out, "]", 1);
}

ws_status ws_out_content_type(ws_out *out, const char *content_type) {
    char *c = strdup(content_type);
    if (c) utf8_fix(c, strlen(c));
    if (!c) return ws_failed("out of memory");
    free(out->content_type);
    out->content_type = c;
    return WS_OK;
}

/* ---- tensors ---------------------------------------------------------- */

static ws_status create(const uint64_t *shape, size_t rank, wasmscore_scoring_tensors_tensor_data_t *data,
                        ws_tensor *out) {
    scorer_list_u64_t s = {(uint64_t *)shape, rank};
    scorer_error_t err;
    if (!wasmscore_scoring_tensors_static_tensor_create(&s, data, &out->handle, &err)) return host_error(&err);
    return WS_OK;
}

static size_t elements_of(const uint64_t *shape, size_t rank) {
    size_t n = 1;
    for (size_t i = 0; i < rank; i++) n *= (size_t)shape[i];
    return n;
}

_Static_assert(sizeof(ws_bytes) == sizeof(scorer_list_u8_t) && offsetof(ws_bytes, len) == offsetof(scorer_list_u8_t, len),
               "ws_bytes is laid out as list<u8>");

ws_status ws_tensor_f32(const uint64_t *shape, size_t rank, const float *data, ws_tensor *out) {
    size_t n = elements_of(shape, rank);
    wasmscore_scoring_tensors_tensor_data_t d;
    d.tag = WASMSCORE_SCORING_TYPES_TENSOR_DATA_FLOAT32;
    d.val.float32.ptr = (float *)data;
    d.val.float32.len = n;
    return create(shape, rank, &d, out);
}

ws_status ws_tensor_i64(const uint64_t *shape, size_t rank, const int64_t *data, ws_tensor *out) {
    size_t n = elements_of(shape, rank);
    wasmscore_scoring_tensors_tensor_data_t d;
    d.tag = WASMSCORE_SCORING_TYPES_TENSOR_DATA_INT64;
    d.val.int64.ptr = (int64_t *)data;
    d.val.int64.len = n;
    return create(shape, rank, &d, out);
}

static wasmscore_scoring_tensors_borrow_tensor_t borrow(ws_tensor t) {
    return wasmscore_scoring_tensors_borrow_tensor(t.handle);
}

ws_status ws_tensor_shape(ws_tensor t, uint64_t *shape, size_t max, size_t *rank) {
    scorer_list_u64_t s;
    wasmscore_scoring_tensors_method_tensor_shape(borrow(t), &s);
    *rank = s.len;
    for (size_t i = 0; i < s.len && i < max; i++) shape[i] = s.ptr[i];
    scorer_list_u64_free(&s);
    return *rank > max ? ws_failed("the tensor has %zu dimensions, more than the %zu asked for", *rank, max) : WS_OK;
}

ws_status ws_tensor_f32_data(ws_tensor t, float **data, size_t *len) {
    wasmscore_scoring_tensors_tensor_data_t d;
    wasmscore_scoring_tensors_method_tensor_data(borrow(t), &d);
    if (d.tag != WASMSCORE_SCORING_TYPES_TENSOR_DATA_FLOAT32) {
        wasmscore_scoring_tensors_tensor_data_free(&d);
        return ws_failed("the tensor is not float32 (dtype tag %d)", d.tag);
    }
    /* The list was allocated in our memory by the call: hand it over. */
    *data = d.val.float32.ptr;
    *len = d.val.float32.len;
    return WS_OK;
}

void ws_tensor_free(ws_tensor t) { wasmscore_scoring_tensors_tensor_drop_own(t.handle); }

ws_status ws_tensor_half(ws_half type, const uint64_t *shape, size_t rank, const float *data, ws_tensor *out) {
    scorer_list_u64_t s = {(uint64_t *)shape, rank};
    scorer_list_f32_t v = {(float *)data, elements_of(shape, rank)};
    wasmscore_scoring_half_floats_half_type_t ty =
        type == WS_BFLOAT16 ? WASMSCORE_SCORING_HALF_FLOATS_HALF_TYPE_BFLOAT16 : WASMSCORE_SCORING_HALF_FLOATS_HALF_TYPE_FLOAT16;
    scorer_error_t err;
    if (!wasmscore_scoring_half_floats_from_f32(ty, &s, &v, &out->handle, &err)) return host_error(&err);
    return WS_OK;
}

ws_status ws_tensor_half_data(ws_tensor t, ws_half *type, float **data, size_t *len) {
    wasmscore_scoring_half_floats_half_type_t ty;
    bool half = wasmscore_scoring_half_floats_type_of(borrow(t), &ty);
    scorer_list_f32_t v;
    scorer_error_t err;
    if (!wasmscore_scoring_half_floats_to_f32(borrow(t), &v, &err)) return host_error(&err);
    if (type && half) *type = ty == WASMSCORE_SCORING_HALF_FLOATS_HALF_TYPE_BFLOAT16 ? WS_BFLOAT16 : WS_FLOAT16;
    /* The list was allocated in our memory by the call: hand it over. */
    *data = v.ptr;
    *len = v.len;
    return WS_OK;
}

ws_status ws_tensor_bytes(const uint64_t *shape, size_t rank, const ws_bytes *elements, ws_tensor *out) {
    scorer_list_u64_t s = {(uint64_t *)shape, rank};
    /* ws_bytes has the layout of the bindings' list<u8>. */
    scorer_list_list_u8_t e = {(scorer_list_u8_t *)elements, elements_of(shape, rank)};
    scorer_error_t err;
    if (!wasmscore_scoring_byte_strings_from_bytes(&s, &e, &out->handle, &err)) return host_error(&err);
    return WS_OK;
}

ws_status ws_tensor_bytes_data(ws_tensor t, ws_bytes **elements, size_t *n) {
    scorer_list_list_u8_t e;
    scorer_error_t err;
    if (!wasmscore_scoring_byte_strings_to_bytes(borrow(t), &e, &err)) return host_error(&err);
    *elements = (ws_bytes *)e.ptr;
    *n = e.len;
    return WS_OK;
}

void ws_bytes_free(ws_bytes *elements, size_t n) {
    for (size_t i = 0; i < n; i++) free(elements[i].ptr);
    free(elements);
}

/* ---- models ----------------------------------------------------------- */

ws_status ws_model_load(const char *file, ws_model *out) {
    scorer_string_t name = str(file);
    scorer_error_t err;
    if (!wasmscore_scoring_inference_static_model_load(&name, &out->handle, &err)) return host_error(&err);
    return WS_OK;
}

ws_status ws_model_load_on(const char *file, const char *device, ws_model *out) {
    scorer_string_t name = str(file), dev = str(device);
    scorer_error_t err;
    if (!wasmscore_scoring_inference_static_model_load_on(&name, &dev, &out->handle, &err)) return host_error(&err);
    return WS_OK;
}

ws_status ws_model_run(ws_model m, size_t n_in, const char *const *in_names, const ws_tensor *inputs,
                       size_t n_out, const char *const *out_names, ws_tensor *outputs) {
    wasmscore_scoring_inference_tuple2_string_borrow_tensor_t *ins = calloc(n_in ? n_in : 1, sizeof *ins);
    scorer_string_t *wanted = calloc(n_out ? n_out : 1, sizeof *wanted);
    if (!ins || !wanted) {
        free(ins);
        free(wanted);
        return ws_failed("out of memory");
    }
    for (size_t i = 0; i < n_in; i++) {
        ins[i].f0 = str(in_names[i]);
        ins[i].f1 = borrow(inputs[i]);
    }
    for (size_t i = 0; i < n_out; i++) wanted[i] = str(out_names[i]);
    wasmscore_scoring_inference_list_tuple2_string_borrow_tensor_t in_list = {ins, n_in};
    scorer_list_string_t out_list = {wanted, n_out};
    wasmscore_scoring_inference_list_tuple2_string_own_tensor_t got;
    scorer_error_t err;
    bool ok = wasmscore_scoring_inference_method_model_run(wasmscore_scoring_inference_borrow_model(m.handle),
                                                            &in_list, &out_list, &got, &err);
    free(ins);
    free(wanted);
    if (!ok) return host_error(&err);
    ws_status s = WS_OK;
    /* The host answers in the order asked for; match by name all the same. */
    for (size_t i = 0; i < n_out; i++) {
        size_t j = 0;
        while (j < got.len && (got.ptr[j].f0.len != strlen(out_names[i]) ||
                               memcmp(got.ptr[j].f0.ptr, out_names[i], got.ptr[j].f0.len) != 0))
            j++;
        if (j == got.len) {
            s = ws_failed("the model gave no output named %s", out_names[i]);
            break;
        }
        outputs[i].handle = got.ptr[j].f1;
        got.ptr[j].f1.__handle = 0;
    }
    for (size_t j = 0; j < got.len; j++) {
        if (got.ptr[j].f1.__handle) wasmscore_scoring_tensors_tensor_drop_own(got.ptr[j].f1);
        scorer_string_free(&got.ptr[j].f0);
    }
    free(got.ptr);
    return s;
}

/* ---- ops -------------------------------------------------------------- */

static scorer_string_t *device_arg(const char *device, scorer_string_t *buf) {
    if (!device) return NULL;
    *buf = str(device);
    return buf;
}

#define OP_RESULT(call)                  \
    do {                                 \
        scorer_error_t err;              \
        if (!(call)) return host_error(&err); \
        return WS_OK;                    \
    } while (0)

ws_status ws_matmul(ws_tensor a, ws_tensor b, const char *device, ws_tensor *out) {
    scorer_string_t d;
    OP_RESULT(wasmscore_scoring_ops_matmul(borrow(a), borrow(b), device_arg(device, &d), &out->handle, &err));
}

ws_status ws_add(ws_tensor a, ws_tensor b, const char *device, ws_tensor *out) {
    scorer_string_t d;
    OP_RESULT(wasmscore_scoring_ops_add(borrow(a), borrow(b), device_arg(device, &d), &out->handle, &err));
}

ws_status ws_relu(ws_tensor x, const char *device, ws_tensor *out) {
    scorer_string_t d;
    OP_RESULT(wasmscore_scoring_ops_relu(borrow(x), device_arg(device, &d), &out->handle, &err));
}

ws_status ws_softmax(ws_tensor x, int32_t axis, const char *device, ws_tensor *out) {
    scorer_string_t d;
    OP_RESULT(wasmscore_scoring_ops_softmax(borrow(x), axis, device_arg(device, &d), &out->handle, &err));
}

/* ---- logs ------------------------------------------------------------- */

void ws_log(ws_level level, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    utf8_fix(line, strlen(line));
    scorer_string_t m = str(line);
    wasmscore_scoring_log_log((wasmscore_scoring_log_level_t)level, &m);
}

/* ---- reported numbers -------------------------------------------------- */

void ws_record(const char *name, double value) {
    scorer_string_t n = str(name);
    wasmscore_scoring_metrics_record(&n, value);
}

/* ---- collected data ---------------------------------------------------- */

void ws_collect(ws_designation designation, const char *name, const char *data) {
    scorer_string_t n = str(name);
    scorer_string_t d = str(data);
    wasmscore_scoring_data_collection_collect((wasmscore_scoring_data_collection_designation_t)designation, &n, &d);
}

/* ---- JSON ------------------------------------------------------------- */

/* A cursor over the body; every reader reports where JSON went wrong. */
typedef struct {
    const char *p, *start, *end;
} json;

static void ws(json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static ws_status malformed(json *j, const char *what) {
    return ws_bad_input("malformed JSON at byte %zu: %s", (size_t)(j->p - j->start), what);
}

static ws_status skip_value(json *j, int depth);
static ws_status each_member(json *j, int depth,
                             ws_status (*each)(json *, int, const char *, size_t, void *), void *ctx);
static ws_status skip_member(json *j, int depth, const char *name, size_t n, void *ctx);

static ws_status read_string(json *j, const char **s, size_t *n) {
    if (j->p >= j->end || *j->p != '"') return malformed(j, "expected a string");
    const char *begin = ++j->p;
    while (j->p < j->end && *j->p != '"') {
        if ((unsigned char)*j->p < 0x20) return malformed(j, "control character in a string");
        if (*j->p == '\\') {
            j->p++;
            if (j->p >= j->end) break;
            if (*j->p == 'u') {
                for (int k = 1; k <= 4; k++)
                    if (j->p + k >= j->end || !strchr("0123456789abcdefABCDEF", j->p[k]) || !j->p[k])
                        return malformed(j, "bad \\u escape");
                j->p += 4;
            } else if (!strchr("\"\\/bfnrt", *j->p) || !*j->p) {
                return malformed(j, "bad escape");
            }
        }
        j->p++;
    }
    if (j->p >= j->end) return malformed(j, "unterminated string");
    *s = begin;
    *n = (size_t)(j->p - begin);
    j->p++;
    return WS_OK;
}

static ws_status read_number(json *j, double *v) {
    const char *b = j->p;
    if (j->p < j->end && *j->p == '-') j->p++;
    if (j->p >= j->end || *j->p < '0' || *j->p > '9') return malformed(j, "expected a number");
    if (*j->p == '0') j->p++;
    else
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    if (j->p < j->end && *j->p == '.') {
        j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9') return malformed(j, "expected digits after '.'");
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9') return malformed(j, "expected an exponent");
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    }
    char buf[64];
    size_t n = (size_t)(j->p - b);
    if (n >= sizeof buf) return malformed(j, "number too long");
    memcpy(buf, b, n);
    buf[n] = 0;
    *v = strtod(buf, NULL);
    return WS_OK;
}

static ws_status literal(json *j, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0) return malformed(j, "unexpected character");
    j->p += n;
    return WS_OK;
}

/* After an item of an array or object: a ',' (more follow) or CLOSE (*DONE). */
static ws_status next_item(json *j, char close, const char *in, bool *done) {
    ws(j);
    *done = j->p < j->end && *j->p == close;
    if (*done || (j->p < j->end && *j->p == ',')) {
        j->p++;
        return WS_OK;
    }
    char what[64];
    if (j->p < j->end) snprintf(what, sizeof what, "expected ',' or '%c' in %s", close, in);
    else snprintf(what, sizeof what, "the body ends inside %s", in);
    return malformed(j, what);
}

/* Calls EACH for every element of an array (the cursor on the element). */
static ws_status each_element(json *j, int depth, ws_status (*each)(json *, int, void *), void *ctx) {
    j->p++; /* '[' */
    ws(j);
    if (j->p < j->end && *j->p == ']') {
        j->p++;
        return WS_OK;
    }
    for (;;) {
        ws(j);
        ws_status s = each(j, depth + 1, ctx);
        if (s) return s;
        bool done;
        if ((s = next_item(j, ']', "an array", &done)) || done) return s;
    }
}

static ws_status skip_each(json *j, int depth, void *ctx) {
    (void)ctx;
    return skip_value(j, depth);
}

/* Calls EACH for every member of an object with its name (NAME, N bytes,
 * escapes left as they are) and the cursor on its value. */
static ws_status each_member(json *j, int depth,
                             ws_status (*each)(json *, int, const char *, size_t, void *), void *ctx) {
    j->p++; /* '{' */
    ws(j);
    if (j->p < j->end && *j->p == '}') {
        j->p++;
        return WS_OK;
    }
    for (;;) {
        const char *name;
        size_t n;
        ws(j);
        ws_status s = read_string(j, &name, &n);
        if (s) return s;
        ws(j);
        if (j->p >= j->end || *j->p != ':') return malformed(j, "expected ':'");
        j->p++;
        ws(j);
        if ((s = each(j, depth + 1, name, n, ctx))) return s;
        bool done;
        if ((s = next_item(j, '}', "an object", &done)) || done) return s;
    }
}

static ws_status skip_member(json *j, int depth, const char *name, size_t n, void *ctx) {
    (void)name, (void)n, (void)ctx;
    return skip_value(j, depth);
}

static ws_status skip_value(json *j, int depth) {
    if (depth > 64) return malformed(j, "nested deeper than 64 levels");
    ws(j);
    if (j->p >= j->end) return malformed(j, "unexpected end");
    const char *s;
    size_t n;
    double v;
    switch (*j->p) {
    case '"': return read_string(j, &s, &n);
    case '[': return each_element(j, depth, skip_each, NULL);
    case '{': return each_member(j, depth, skip_member, NULL);
    case 't': return literal(j, "true");
    case 'f': return literal(j, "false");
    case 'n': return literal(j, "null");
    default: return read_number(j, &v);
    }
}

/* The matrix being read: numbers appended row by row. */
typedef struct {
    float *values;
    size_t len, cap, rows, cols, in_row;
    const char *key;
    bool found;
} matrix;

static ws_status push_number(json *j, int depth, void *ctx) {
    (void)depth;
    matrix *m = ctx;
    double v;
    if (j->p < j->end && (*j->p == '[' || *j->p == '{' || *j->p == '"' || *j->p == 't' || *j->p == 'f' || *j->p == 'n'))
        return ws_bad_input("\"%s\" must hold rows of numbers: [[1.0, 2.0], ...]", m->key);
    ws_status s = read_number(j, &v);
    if (s) return s;
    if (m->len == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 64;
        float *p = realloc(m->values, m->cap * sizeof *p);
        if (!p) return ws_failed("out of memory for %zu numbers", m->cap);
        m->values = p;
    }
    m->values[m->len++] = (float)v;
    m->in_row++;
    return WS_OK;
}

static ws_status push_row(json *j, int depth, void *ctx) {
    matrix *m = ctx;
    if (j->p >= j->end || *j->p != '[')
        return ws_bad_input("\"%s\" must be a list of rows: [[1.0, 2.0], ...]", m->key);
    m->in_row = 0;
    ws_status s = each_element(j, depth, push_number, m);
    if (s) return s;
    if (m->rows == 0) m->cols = m->in_row;
    else if (m->in_row != m->cols)
        return ws_bad_input("row %zu of \"%s\" has %zu numbers, the first has %zu", m->rows, m->key, m->in_row, m->cols);
    m->rows++;
    return WS_OK;
}

/* The member KEY as rows; any other member skipped. */
static ws_status matrix_member(json *j, int depth, const char *name, size_t n, void *ctx) {
    matrix *m = ctx;
    if (m->found || n != strlen(m->key) || memcmp(name, m->key, n) != 0) return skip_value(j, depth);
    m->found = true;
    if (j->p >= j->end || *j->p != '[')
        return ws_bad_input("\"%s\" must be a list of rows: [[1.0, 2.0], ...]", m->key);
    return each_element(j, depth, push_row, m);
}

ws_status ws_json_matrix(const char *body, size_t len, const char *key, float **values, size_t *rows,
                         size_t *cols) {
    json j = {body, body, body + len};
    matrix m = {.key = key};
    ws_status s;
    ws(&j);
    if (j.p >= j.end || *j.p != '{') s = malformed(&j, "expected an object");
    else s = each_member(&j, 0, matrix_member, &m);
    if (!s) {
        ws(&j);
        if (j.p != j.end) s = malformed(&j, "trailing characters after the object");
        else if (!m.found) s = ws_bad_input("the body needs \"%s\": [[...], ...]", key);
    }
    if (s) {
        free(m.values);
        return s;
    }
    *values = m.values;
    *rows = m.rows;
    *cols = m.cols;
    return WS_OK;
}

/* ---- the world's exports ---------------------------------------------- */

bool exports_scorer_init(scorer_error_t *err) {
    last_error[0] = 0;
    ws_status s = init();
    fixed_free();
    if (s == WS_OK) return true;
    to_wit_error(s, err);
    return false;
}

bool exports_scorer_run(scorer_request_t *request, scorer_response_t *ret, scorer_error_t *err) {
    ws_out out = {0};
    last_error[0] = 0;
    ws_status s = run((const char *)request->body.ptr, request->body.len, &out);
    scorer_request_free(request);
    fixed_free();
    if (s != WS_OK) {
        free(out.data);
        free(out.content_type);
        to_wit_error(s, err);
        return false;
    }
    ret->body.ptr = out.data;
    ret->body.len = out.len;
    if (out.content_type) {
        ret->content_type.ptr = (uint8_t *)out.content_type;
        ret->content_type.len = strlen(out.content_type);
    } else {
        scorer_string_dup(&ret->content_type, "application/json");
    }
    ret->tensors.ptr = NULL;
    ret->tensors.len = 0;
    return true;
}
