/* A C scoring module that misbehaves on request, for the sandbox tests
 * (tests/tests/e2e/languages.rs). The body names what it tries: "file"
 * (read /etc/passwd), "dir" (list /), "env" (the environment), "trap"
 * (__builtin_trap), "abort", "fail" (an error the module returns),
 * "bad" (an error the client caused), "alloc" (1 MiB at a time until
 * refused), "loop"; anything else is echoed. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasmscore.h"

extern char **environ;

ws_status init(void) { return WS_OK; }

static int is(const char *body, size_t len, const char *word) {
    return len == strlen(word) && memcmp(body, word, len) == 0;
}

ws_status run(const char *body, size_t len, ws_out *out) {
    if (is(body, len, "file")) {
        FILE *f = fopen("/etc/passwd", "r");
        if (!f) return ws_out_printf(out, "{\"file\":\"denied\",\"error\":\"%s\"}", strerror(errno));
        fclose(f);
        return ws_out_printf(out, "{\"file\":\"read\"}");
    }
    if (is(body, len, "dir")) {
        DIR *d = opendir("/");
        if (!d) return ws_out_printf(out, "{\"dir\":\"denied\",\"error\":\"%s\"}", strerror(errno));
        closedir(d);
        return ws_out_printf(out, "{\"dir\":\"listed\"}");
    }
    if (is(body, len, "env")) {
        int n = 0;
        for (char **e = environ; e && *e; e++) n++;
        return ws_out_printf(out, "{\"env_vars\":%d,\"home\":%s}", n, getenv("HOME") ? "true" : "false");
    }
    if (is(body, len, "trap")) __builtin_trap();
    if (is(body, len, "abort")) abort();
    if (is(body, len, "fail")) return ws_failed("asked to fail");
    if (is(body, len, "bad")) return ws_bad_input("asked for a bad input");
    if (is(body, len, "alloc")) {
        for (;;) {
            volatile char *p = malloc(1 << 20);
            if (!p) return ws_failed("malloc returned NULL");
            p[0] = 1;
        }
    }
    if (is(body, len, "loop")) {
        for (volatile unsigned long i = 0;; i++) {
        }
    }
    ws_status s = ws_out_printf(out, "{\"echo\":\"");
    for (size_t i = 0; i < len && !s; i++)
        s = (body[i] == '"' || body[i] == '\\') ? ws_out_printf(out, "\\%c", body[i])
                                                 : ws_out_write(out, body + i, 1);
    return s ? s : ws_out_printf(out, "\"}");
}
