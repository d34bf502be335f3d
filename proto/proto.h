/*
 * proto.h - the public interface of proto/: command codes and the two protocols that run on
 * engine streams: file transfer and ping-pong.
 *
 * File transfer, one file at a time per stream (client -> server unless noted):
 *   FILE_OPEN  buffer = the file's name, arg = its size       -> READY | FAIL
 *   FILE_DATA  buffer = the next bytes, arg = their offset     (no reply; FAIL on error)
 *   FILE_END   arg = XXH3-64 of the whole file                 -> DONE (arg = size) | FAIL
 *   FAIL       arg = errno, buffer (optional) = a message for the user
 * The server writes to a temporary file in its output directory and renames it to the final
 * name only when size and checksum agree; on any failure, the client's disappearance or a
 * shutdown, the temporary file is removed. Nothing partial ever carries a final name.
 *
 * Ping-pong: PING (arg = anything, optional buffer) -> PONG (same arg, same buffer back).
 */
#ifndef ENG_PROTO_H
#define ENG_PROTO_H

#include <stdint.h>
#include <sys/types.h>

#include "engine.h"

enum {
        ENG_C_PING = 0x0101,
        ENG_C_FILE_OPEN = 0x0110,
        ENG_C_FILE_DATA = 0x0111,
        ENG_C_FILE_END = 0x0112,

        ENG_S_PONG = 0x0201,
        ENG_S_FILE_READY = 0x0210,
        ENG_S_FILE_DONE = 0x0211,
        ENG_S_FILE_FAIL = 0x0212,
};

#define ENG_NAME_MAX 255

/*
 * Reduce a client-supplied name to a safe basename: the part after the last '/'; refused
 * (-EINVAL, reason in why) if that is empty, starts with '.', is longer than ENG_NAME_MAX, or
 * contains a control character or a NUL.
 */
int eng_safe_name(const char *in, size_t len, char *out, size_t outlen, const char **why);

/* ---- server side -------------------------------------------------------------------- */

typedef struct eng_xfer_result {
        uint32_t stream_id;
        pid_t pid;
        char name[ENG_NAME_MAX + 1];
        uint64_t size;     /* declared size */
        uint64_t received; /* bytes written */
        uint64_t ns;       /* from FILE_OPEN to the end */
        int err;           /* 0 = delivered and verified */
        char why[400];
} eng_xfer_result_t;

typedef struct eng_xfer_server_cfg {
        const char *outdir; /* created if missing */
        mode_t file_mode;   /* mode of received files, default 0644 */
        /* Called once per finished or failed transfer (from a worker thread). */
        void (*report)(const eng_xfer_result_t *r, void *ctx);
        void *report_ctx;
} eng_xfer_server_cfg_t;

typedef struct eng_xfer_server eng_xfer_server_t;

/* why receives a message on failure. */
int eng_xfer_server_new(const eng_xfer_server_cfg_t *cfg, eng_xfer_server_t **out, char *why,
                        size_t whylen);
/* Fill the engine hooks that serve file transfer and ping-pong through x. */
void eng_xfer_server_hooks(eng_xfer_server_t *x, eng_server_hooks_t *hooks);
/* Refuse new files from now on (shutdown): FILE_OPEN gets FAIL ESHUTDOWN. */
void eng_xfer_server_drain(eng_xfer_server_t *x);
/* Transfers in progress right now. */
uint32_t eng_xfer_server_active(eng_xfer_server_t *x);
void eng_xfer_server_free(eng_xfer_server_t *x);

/* ---- client side -------------------------------------------------------------------- */

typedef enum eng_xfer_state {
        ENG_XFER_OPENING,
        ENG_XFER_WAIT_READY,
        ENG_XFER_DATA,
        ENG_XFER_WAIT_DONE,
        ENG_XFER_DONE,
        ENG_XFER_FAILED,
} eng_xfer_state_t;

typedef struct eng_xfer_send eng_xfer_send_t;

/* Open path for sending on stream st as remote_name (NULL: the path's basename), in chunks
 * of at most chunk bytes. Fails with why set if the file cannot be read. */
int eng_xfer_send_new(eng_stream_t *st, const char *path, const char *remote_name, uint32_t chunk,
                      eng_xfer_send_t **out, char *why, size_t whylen);
/* Make whatever progress is possible without blocking. Returns > 0 if something moved,
 * 0 if nothing could, < 0 once the transfer failed (see eng_xfer_send_why). */
int eng_xfer_send_step(eng_xfer_send_t *x);
eng_xfer_state_t eng_xfer_send_state(const eng_xfer_send_t *x);
uint64_t eng_xfer_send_size(const eng_xfer_send_t *x);
uint64_t eng_xfer_send_acked(const eng_xfer_send_t *x); /* bytes handed to the engine */
const char *eng_xfer_send_why(const eng_xfer_send_t *x);
/* Mark it failed with a reason (e.g. the caller's timeout). */
void eng_xfer_send_fail(eng_xfer_send_t *x, int err, const char *why);
void eng_xfer_send_free(eng_xfer_send_t *x);

/* ---- ping-pong ---------------------------------------------------------------------- */

/* n round trips with payload bytes each; rtt_ns[i] receives each one (caller's array). */
int eng_ping(eng_stream_t *st, uint32_t n, uint32_t payload, uint64_t *rtt_ns, int timeout_ms);

#endif
