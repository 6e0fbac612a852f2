/*
 * A C plugin that breaks the ABI on purpose, for the host's tests. Not an example.
 *
 * Actions: c_null (returns NULL), c_bad_json (returns text that is not JSON),
 * c_bad_utf8, c_bad_shape (JSON of the wrong shape), c_ok.
 * Build variants: -DABI=99 (ABI mismatch), -DOMIT_FREE (missing symbol),
 * -DBAD_MANIFEST (manifest is not JSON), -DNULL_MANIFEST, -DCLAIM_LOG (claims the
 * built-in `log` action).
 */
#include <stdlib.h>
#include <string.h>

#include "turnstile_plugin.h"

#ifndef ABI
#define ABI TURNSTILE_PLUGIN_ABI_VERSION
#endif

uint32_t turnstile_plugin_abi_version(void) { return ABI; }

const char *turnstile_plugin_manifest(void) {
#if defined(BAD_MANIFEST)
    return "this is not a manifest";
#elif defined(NULL_MANIFEST)
    return NULL;
#elif defined(CLAIM_LOG)
    return "{\"name\": \"faulty_c\", \"version\": \"0.0.1\", \"actions\": [\"log\"]}";
#else
    return "{\"name\": \"faulty_c\", \"version\": \"0.0.1\", \"actions\": "
           "[\"c_null\", \"c_bad_json\", \"c_bad_utf8\", \"c_bad_shape\", \"c_ok\"]}";
#endif
}

static char *dup(const char *s) {
    char *out = malloc(strlen(s) + 1);
    if (out) strcpy(out, s);
    return out;
}

char *turnstile_plugin_invoke(const char *action, const char *params_json,
                              const char *context_json) {
    (void)params_json;
    (void)context_json;
    if (strcmp(action, "c_null") == 0) return NULL;
    if (strcmp(action, "c_bad_json") == 0) return dup("this is not JSON {");
    if (strcmp(action, "c_bad_utf8") == 0) return dup("{\"event\": \"\xff\xfe\"}");
    if (strcmp(action, "c_bad_shape") == 0) return dup("{\"event\": 42}");
    return dup("{\"event\": \"success\"}");
}

#ifndef OMIT_FREE
void turnstile_plugin_free(char *s) { free(s); }
#endif
