/*
 * proto.h - the public interface of proto/: command codes and the two protocols that run on
 * engine streams: file transfer and ping-pong.
 *
 * File transfer, one file at a time per stream (client -> server unless noted):
 *   FILE_OPEN  buffer = the file's name, arg = its size       -> READY | FAIL (EINVAL: a name
 *              eng_safe_name refuses; ENOSPC: more than the output file system has free;
 *              EBUSY: being received on another stream; ESHUTDOWN; or why the file could
 *              not be created)
 *   FILE_DATA  buffer = the next bytes, arg = their offset     (no reply; FAIL on error)
 *   FILE_END   arg = XXH3-64 of (name, NUL, size as 8 bytes LE, the whole file)
 *                                                           -> DONE (arg = size) | FAIL
 *   FAIL       arg = errno, buffer (optional) = a message for the user
 * The server writes to a temporary file in its output directory and renames it to the final
 * name only when size and checksum agree; on any failure, the client's disappearance or a
 * shutdown, the temporary file is removed. Nothing partial ever carries a final name.
 *
 * Any process of the user can rewrite any byte of the segment at any time, file data in
 * flight included. So each side reads a byte of the segment once: the client hashes the bytes
 * it read from the file in its own memory and then copies them into the loan; the server
 * copies a payload out of the segment once and hashes and writes only that copy. A byte
 * changed in flight makes the two hashes disagree (FAIL "checksum mismatch"); it can never
 * reach a final name.
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
 * A FILE_FAIL's arg: the errno in the low 32 bits and, in bits 32..39, what failed (one of
 * ENG_XFER_WHY_*). Its text travels in a buffer the server loans, which it cannot have when
 * the arena is full (a client's chunks fill it); the code then still names the reason.
 */
enum {
        ENG_XFER_WHY_OTHER = 0,
        ENG_XFER_WHY_CHECKSUM = 1, /* checksum mismatch */
        ENG_XFER_WHY_SIZE = 2,     /* size mismatch */
};

/*
 * The reason of a FILE_FAIL m for the user, into out (always NUL-terminated): the server's
 * text (copied once from the segment and escaped), else what its code says, else fallback.
 * Returns the errno it carries.
 */
ENG_API int eng_xfer_fail_reason(const eng_msg_t *m, const char *fallback, char *out,
                                 size_t outlen);

/*
 * Reduce a client-supplied name to a safe basename: the part after the last '/'. Refused
 * (-EINVAL, *why set to a sentence saying which rule) if the whole input is not valid UTF-8
 * (overlong forms, surrogates, beyond U+10FFFF, truncated or stray bytes) or contains a NUL,
 * a C0 control or DEL, a C1 control (U+0080..U+009F), a bidirectional control (U+061C, U+200E,
 * U+200F, U+202A..U+202E, U+2066..U+2069) or an invisible format character (U+00AD, U+180E,
 * U+200B..U+200D, U+2028, U+2029, U+2060..U+2064, U+206A..U+206F, U+FEFF, U+FFF9..U+FFFB,
 * tags U+E0001 and U+E0020..U+E007F); or if the basename is empty, starts with '.', is longer
 * than ENG_NAME_MAX bytes, or is only whitespace (U+0020, U+00A0, U+1680, U+2000..U+200A,
 * U+202F, U+205F, U+3000). out receives the basename, NUL-terminated. in is read more than
 * once: pass a private copy, never bytes in the segment.
 */
ENG_API int eng_safe_name(const char *in, size_t len, char *out, size_t outlen, const char **why);

/*
 * Render len bytes for a log line so that they cannot forge it: printable ASCII and valid
 * printable UTF-8 pass unchanged, '\' is doubled, every other byte (C0 controls, DEL, bytes
 * that are not valid UTF-8) becomes \xNN and every C1 control, bidirectional control or
 * invisible format character (the sets eng_safe_name refuses) becomes \u{NNNN}. out is always
 * NUL-terminated (if outlen > 0) and holds a prefix of the rendering that never ends inside an
 * escape or a UTF-8 sequence. Returns the length of the whole rendering (without the NUL),
 * as snprintf does: a result >= outlen means out was truncated.
 */
ENG_API size_t eng_log_escape(const void *in, size_t len, char *out, size_t outlen);

/* Room for a name of ENG_NAME_MAX bytes escaped by eng_log_escape (longer renderings, of
 * refused names, are cut and end with "..."). */
#define ENG_NAME_LOG_MAX (4 * ENG_NAME_MAX + 1)

/* ---- server side -------------------------------------------------------------------- */

/*
 * One finished or refused transfer, as the report hook sees it. name and why are already
 * escaped with eng_log_escape (a client chooses the name, and a refused name can hold any
 * byte): they can go into a log line as they are.
 */
typedef struct eng_xfer_result {
        uint32_t stream_id;
        pid_t pid;
        char name[ENG_NAME_LOG_MAX]; /* escaped: the name received, or the name refused */
        uint64_t size;               /* declared size */
        uint64_t received;           /* bytes written */
        uint64_t ns;                 /* from FILE_OPEN to the end */
        int err;                     /* 0 = delivered and verified, else -errno */
        char why[1024];              /* escaped; "" when err == 0 */
} eng_xfer_result_t;

typedef struct eng_xfer_server_cfg {
        const char *outdir; /* created if missing */
        mode_t file_mode;   /* mode of received files, default 0644 */
        /* Called once per finished or failed transfer (from a worker thread). */
        void (*report)(const eng_xfer_result_t *r, void *ctx);
        void *report_ctx;
} eng_xfer_server_cfg_t;

typedef struct eng_xfer_server eng_xfer_server_t;

/*
 * Open (creating it if missing) the output directory and remove, at start, the temporary
 * files dead predecessors left there (see eng_xfer_server_stale_removed). why receives a
 * message on failure.
 */
ENG_API int eng_xfer_server_new(const eng_xfer_server_cfg_t *cfg, eng_xfer_server_t **out,
                                char *why, size_t whylen);
/*
 * How many temporary files eng_xfer_server_new removed from the output directory: regular
 * files named exactly ".eng-<pid>-<n>.part" that no live server holds locked (each server
 * holds an OFD write lock on every temporary file while it writes it) and whose pid is dead,
 * or is this process's own while no other xfer server of this process is open (a
 * predecessor's, whose pid we got), or that nobody touched for an hour (their pid was reused).
 * Nothing else is ever removed; symlinks are never followed.
 */
ENG_API uint32_t eng_xfer_server_stale_removed(const eng_xfer_server_t *x);
/* Fill the engine hooks that serve file transfer and ping-pong through x. */
ENG_API void eng_xfer_server_hooks(eng_xfer_server_t *x, eng_server_hooks_t *hooks);
/* Refuse new files from now on (shutdown): FILE_OPEN gets FAIL ESHUTDOWN. */
ENG_API void eng_xfer_server_drain(eng_xfer_server_t *x);
/* Transfers in progress right now. */
ENG_API uint32_t eng_xfer_server_active(eng_xfer_server_t *x);
ENG_API void eng_xfer_server_free(eng_xfer_server_t *x);

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
ENG_API int eng_xfer_send_new(eng_stream_t *st, const char *path, const char *remote_name,
                              uint32_t chunk, eng_xfer_send_t **out, char *why, size_t whylen);
/* Make whatever progress is possible without blocking. Returns > 0 if something moved,
 * 0 if nothing could, < 0 once the transfer failed (see eng_xfer_send_why). */
ENG_API int eng_xfer_send_step(eng_xfer_send_t *x);
ENG_API eng_xfer_state_t eng_xfer_send_state(const eng_xfer_send_t *x);
ENG_API uint64_t eng_xfer_send_size(const eng_xfer_send_t *x);
ENG_API uint64_t eng_xfer_send_acked(const eng_xfer_send_t *x); /* bytes handed to the engine */
/* Why it failed: one sentence, the text of the errno once; the server's part of it escaped
 * with eng_log_escape (it is the peer's text). */
ENG_API const char *eng_xfer_send_why(const eng_xfer_send_t *x);
/* Mark it failed with a reason (e.g. the caller's timeout). */
ENG_API void eng_xfer_send_fail(eng_xfer_send_t *x, int err, const char *why);
ENG_API void eng_xfer_send_free(eng_xfer_send_t *x);

/* ---- ping-pong ---------------------------------------------------------------------- */

/* n round trips with payload bytes each; rtt_ns[i] receives each one (caller's array). */
ENG_API int eng_ping(eng_stream_t *st, uint32_t n, uint32_t payload, uint64_t *rtt_ns,
                     int timeout_ms);

#endif
