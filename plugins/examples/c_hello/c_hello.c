/*
 * c_hello: a Turnstile plugin written in C (the ABI in plugins/sdk/include/turnstile_plugin.h).
 *
 * Action `c_hello`: counts the bytes of its parameters and of the machine context, puts a
 * greeting in the context and returns the `success` parameter's event (default "success").
 *
 * Build:  cc -shared -fPIC -O2 -I plugins/sdk/include -o libc_hello.so plugins/examples/c_hello/c_hello.c
 * Use:    turnstile run --plugins DIR machine.yaml   (DIR holds libc_hello.so)
 *
 * A real C plugin would parse the JSON with a library (cJSON, jansson, yyjson); this one
 * only extracts a string value by key, enough to show the ABI.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "turnstile_plugin.h"

/* The version in the manifest (the tests build two versions to check the hot swap). */
#ifndef C_HELLO_VERSION
#define C_HELLO_VERSION "1.0.0"
#endif

uint32_t turnstile_plugin_abi_version(void) { return TURNSTILE_PLUGIN_ABI_VERSION; }

const char *turnstile_plugin_manifest(void) {
    /* Owned by the library, valid for ever: a string literal. */
    return "{\"name\": \"c_hello\", \"version\": \"" C_HELLO_VERSION "\","
           " \"actions\": [{\"name\": \"c_hello\", \"params\": []}]}";
}

/*
 * Copies the string value of "key": "..." from a flat JSON object into out (at most
 * cap - 1 bytes); returns 1 when found. Escapes are not decoded: event names need none.
 */
static int string_value(const char *json, const char *key, char *out, size_t cap) {
    char pattern[128];
    int n = snprintf(pattern, sizeof pattern, "\"%s\"", key);
    if (n < 0 || (size_t)n >= sizeof pattern) return 0;
    const char *p = strstr(json, pattern);
    if (!p) return 0;
    p += n;
    while (*p == ' ' || *p == ':') p++;
    if (*p != '"') return 0;
    p++;
    size_t i = 0;
    while (*p && *p != '"' && *p != '\\' && i + 1 < cap) out[i++] = *p++;
    out[i] = '\0';
    return *p == '"';
}

char *turnstile_plugin_invoke(const char *action, const char *params_json,
                              const char *context_json) {
    const char *fmt;
    char event[64] = "success";
    if (!action || !params_json || !context_json) return NULL; /* reported by the host */
    if (strcmp(action, "c_hello") != 0) {
        fmt = "{\"error\": {\"type\": \"unknown_action\", \"message\": \"c_hello has no such action\"}}";
        char *out = malloc(strlen(fmt) + 1);
        if (out) strcpy(out, fmt);
        return out;
    }
    string_value(params_json, "success", event, sizeof event);
    fmt = "{\"event\": \"%s\", \"context\": {\"c_hello\": \"Hello from C " C_HELLO_VERSION "\","
          " \"c_params_bytes\": %zu, \"c_context_bytes\": %zu},"
          " \"log\": \"Hello from C (%zu bytes of params)\"}";
    size_t np = strlen(params_json), nc = strlen(context_json);
    int len = snprintf(NULL, 0, fmt, event, np, nc, np);
    if (len < 0) return NULL;
    char *out = malloc((size_t)len + 1);
    if (!out) return NULL;
    snprintf(out, (size_t)len + 1, fmt, event, np, nc, np);
    return out;
}

void turnstile_plugin_free(char *s) { free(s); }
