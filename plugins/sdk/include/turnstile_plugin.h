/*
 * turnstile_plugin.h: the C ABI of Turnstile plugins (ABI version 1).
 *
 * A plugin is a shared library (.so / .dylib / .dll) that exports the four functions
 * below with C linkage. Turnstile loads it with `turnstile run --plugins DIR` or a
 * config's `plugins:` key, calls turnstile_plugin_abi_version() first, then
 * turnstile_plugin_manifest(), and registers the action types the manifest lists.
 *
 * Every string crossing the boundary is NUL-terminated UTF-8 JSON.
 *
 * Threads: turnstile_plugin_invoke() is called on Turnstile's blocking threads, possibly
 * from several threads at once (one call per running action). Keep it thread-safe: no
 * unsynchronised global state.
 *
 * Time: each call has a time limit (the action's `timeout:` parameter, default 30 s).
 * A call that runs past it is reported as a timeout and its result is thrown away when
 * it finally returns; the thread cannot be stopped, so a plugin must not hang for ever.
 *
 * Memory: whoever allocates frees. The manifest string belongs to the plugin and must
 * stay valid for the life of the process (a static string is ideal). Every string
 * returned by turnstile_plugin_invoke() is handed back exactly once to
 * turnstile_plugin_free() of the same library, so allocate it with the allocator your
 * free function uses (malloc/free in C). The three arguments of invoke belong to
 * Turnstile and are only valid during the call: copy what you keep.
 *
 * Libraries are never unloaded. A changed library file is loaded again from a fresh
 * copy and swapped in; calls already running finish in the old copy.
 *
 * Full guide: docs/plugins.md in the Turnstile repository.
 */
#ifndef TURNSTILE_PLUGIN_H
#define TURNSTILE_PLUGIN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version this header describes. */
#define TURNSTILE_PLUGIN_ABI_VERSION 1u

/* Export macro for the four functions. */
#if defined(_WIN32)
#define TURNSTILE_PLUGIN_EXPORT __declspec(dllexport)
#else
#define TURNSTILE_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

/*
 * Returns TURNSTILE_PLUGIN_ABI_VERSION. Called first; a library that returns any other
 * number is refused before anything else of it is called.
 */
TURNSTILE_PLUGIN_EXPORT uint32_t turnstile_plugin_abi_version(void);

/*
 * Returns the manifest, a JSON object owned by the plugin and valid for ever:
 *
 *   {"name": "my_plugin", "version": "1.0.0",
 *    "actions": ["my_action", {"name": "other", "params": ["url", "success"]}]}
 *
 * `name` names the plugin in logs, errors and the turnstile_plugin_info metric.
 * `actions` lists the action types it provides (YAML `type:`). An entry may be an object
 * with `params`, the parameter names it accepts: `turnstile validate` then warns about any
 * other (the host's own `timeout`, `success`, `error` and `timeout_event` are always
 * accepted). Action types must not clash with built-in actions or other plugins.
 */
TURNSTILE_PLUGIN_EXPORT const char *turnstile_plugin_manifest(void);

/*
 * Runs one action.
 *
 *   action        the action type, e.g. "my_action"
 *   params_json   the action's parameters as a JSON object, {placeholders} already
 *                 resolved against the machine's context
 *   context_json  the machine's context as a JSON object; the payload of the last event
 *                 from outside is at event_data.payload
 *
 * Returns a newly allocated JSON object, freed later by turnstile_plugin_free():
 *
 *   success:  {"event": "done", "context": {"key": "value"}, "log": "optional line"}
 *             `event` (may be null or absent: no event) is processed next by the machine;
 *             `context` entries are set in the machine's context; `log` is logged.
 *   failure:  {"error": {"type": "not_found", "message": "what went wrong"},
 *              "event": "optional event", "context": {...}}
 *             The failure is logged and counted (errors_total); the machine then gets
 *             `event`, or the action's `error:` parameter, or "error".
 *
 * Returning NULL, text that is not JSON or JSON of another shape is reported as a plugin
 * error; the engine keeps running.
 */
TURNSTILE_PLUGIN_EXPORT char *turnstile_plugin_invoke(const char *action,
                                                      const char *params_json,
                                                      const char *context_json);

/* Frees a string returned by turnstile_plugin_invoke(). Called exactly once per string. */
TURNSTILE_PLUGIN_EXPORT void turnstile_plugin_free(char *s);

#ifdef __cplusplus
}
#endif

#endif /* TURNSTILE_PLUGIN_H */
