/*
 * engine.h - the public interface of engine/: a shared-memory segment, streams between one
 * server and many clients, messages with loaned zero-copy buffers.
 *
 * Concurrency contracts:
 *   - an eng_client_t and its streams are used by one thread at a time (the caller serialises);
 *     a process may hold several clients;
 *   - a server stream (eng_sstream_t) is only touched from inside the server's callbacks for
 *     that stream, which the engine never runs on two workers at once.
 *
 * Errors: 0 or -errno. Expected outcomes are negative errnos that are not faults:
 *   -EAGAIN     ring full (send) / nothing there (recv) / no space in the arena (loan)
 *   -ETIMEDOUT  a blocking call ran out of time
 *   -EPIPE      the peer is gone or the stream was ended
 *   -EINTR      the client's interrupt flag was set while waiting
 *   -EMSGSIZE   a loan larger than the segment's largest buffer (eng_client_max_loan)
 * eng_strerror() gives the text of any of them; eng_errmsg() says more about the last failure.
 *
 * Timeouts: a blocking call's timeout_ms < 0 means the client's default (cfg.timeout_ms).
 */
#ifndef ENG_ENGINE_H
#define ENG_ENGINE_H

#include <stddef.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* What the shared library exports: it is built with -fvisibility=hidden, so a symbol without
 * this mark stays inside it. */
#ifndef ENG_API
#if defined(__GNUC__)
#define ENG_API __attribute__((visibility("default")))
#else
#define ENG_API
#endif
#endif

/*
 * The version of this header. CMake reads the project's version from these three lines; the
 * shared library's soname is libshmengine.so.MAJOR.MINOR while MAJOR is 0 (the ABI may change
 * between minor versions before 1.0), libshmengine.so.MAJOR after.
 */
#define ENG_VERSION_MAJOR   0
#define ENG_VERSION_MINOR   2
#define ENG_VERSION_PATCH   0
#define ENG_VERSION_STR2(x) #x
#define ENG_VERSION_STR(x)  ENG_VERSION_STR2(x)
#define ENG_VERSION_STRING                                                                         \
        ENG_VERSION_STR(ENG_VERSION_MAJOR)                                                         \
        "." ENG_VERSION_STR(ENG_VERSION_MINOR) "." ENG_VERSION_STR(ENG_VERSION_PATCH)
/* One number that compares: 10000 * major + 100 * minor + patch. */
#define ENG_VERSION_NUMBER (ENG_VERSION_MAJOR * 10000 + ENG_VERSION_MINOR * 100 + ENG_VERSION_PATCH)

/* Command codes: clients send 0x01xx, servers 0x02xx; a side that receives its own range
 * ends the stream with -EPROTO. 0x01f0..0x01ff and 0x02f0..0x02ff are reserved for the engine. */
#define ENG_CMD_CLIENT_MIN 0x0100u
#define ENG_CMD_CLIENT_MAX 0x01efu
#define ENG_CMD_SERVER_MIN 0x0200u
#define ENG_CMD_SERVER_MAX 0x02efu

typedef enum eng_transport {
        ENG_TRANSPORT_LOCKFREE = 1,
        ENG_TRANSPORT_MUTEX = 2,
} eng_transport_t;

/* A received message. data points into the segment (valid until released), or is NULL. */
typedef struct eng_msg {
        uint16_t cmd;
        uint16_t flags;
        uint32_t len;
        uint64_t seq; /* per direction, from 1; checked by the engine */
        uint64_t arg;
        uint64_t off; /* buffer handle, 0 if none; set to 0 to keep/forward the buffer */
        void *data;
} eng_msg_t;

typedef struct eng_server eng_server_t;
typedef struct eng_sstream eng_sstream_t;
typedef struct eng_client eng_client_t;
typedef struct eng_stream eng_stream_t;

/* ---- server ------------------------------------------------------------------------- */

typedef struct eng_server_hooks {
        /* A client opened a stream. Return < 0 to refuse it. */
        int (*on_open)(eng_sstream_t *s, void *ctx);
        /* A message arrived. Return < 0 to end the stream with that error (sent to the client). */
        int (*on_msg)(eng_sstream_t *s, eng_msg_t *m, void *ctx);
        /* The stream ended: err 0 = closed by the client, else why (-EPIPE: client died). */
        void (*on_close)(eng_sstream_t *s, int err, void *ctx);
        /* Optional: one line about the engine's own recovery work (a dead client's records
         * reclaimed, the bootstrap mutex repaired), for the log. Any engine thread may call it. */
        void (*on_event)(const char *msg, void *ctx);
        void *ctx;
} eng_server_hooks_t;

typedef struct eng_server_cfg {
        const char *name; /* shm name, "/engine-default" if NULL */
        uint64_t size;    /* segment bytes, default 64 MiB */
        mode_t mode;      /* default 0600 */
        eng_transport_t transport;
        uint32_t workers;     /* 0 = one per usable CPU less one, at least 1 */
        uint32_t ring_depth;  /* descriptors per ring, power of two, default 128 */
        uint32_t max_streams; /* default: as many records as the segment holds, <= 65536 */
        uint32_t spin;        /* spin iterations before sleeping, default 4096 */
        uint32_t min_block_shift, max_block_shift; /* buffer classes, default 7..20 */
        eng_server_hooks_t hooks;
} eng_server_cfg_t;

/* Create the segment (refusing if a live server owns the name), pre-fault it and start the
 * worker pool and the control thread. */
ENG_API int eng_server_start(const eng_server_cfg_t *cfg, eng_server_t **out);
/* Stop accepting, end every open stream (clients see -EPIPE), join threads, unlink. */
ENG_API void eng_server_stop(eng_server_t *srv);
/* Number of worker threads. */
ENG_API uint32_t eng_server_workers(const eng_server_t *srv);
/* True once the segment cannot be served any more (another process shrank it and its pages
 * could not be had again): stop the server. The process survives that shrink: a SIGBUS
 * handler (installed at the first eng_server_start, chaining to the one before it) restores
 * the segment's size when another process shrinks it. */
ENG_API bool eng_server_failed(const eng_server_t *srv);

ENG_API uint32_t eng_sstream_id(const eng_sstream_t *s); /* the client's user id for the stream */
ENG_API pid_t eng_sstream_pid(const eng_sstream_t *s);   /* the client's pid */
ENG_API void **eng_sstream_user(eng_sstream_t *s);       /* one pointer of handler state */
ENG_API int eng_sstream_loan(eng_sstream_t *s, uint32_t len, void **p, uint64_t *off);
/* Send to the client; never blocks (-EAGAIN if the ring is full: the engine guarantees room
 * for one reply per received message). Ownership of the buffer passes to the client. */
ENG_API int eng_sstream_send(eng_sstream_t *s, uint16_t cmd, uint64_t arg, uint64_t off,
                             uint32_t len);
ENG_API void eng_sstream_free(eng_sstream_t *s, uint64_t off);

/* ---- client ------------------------------------------------------------------------- */

typedef struct eng_client_cfg {
        uint32_t spin;       /* spin iterations before sleeping, default 4096 */
        uint32_t timeout_ms; /* default for blocking calls, default 10000; also how long attach
                                waits for a server that is still starting */
        uint32_t wait_ms;    /* how long attach waits for a segment that does not exist yet
                                (a server not started yet); 0: fail at once */
        uid_t owner_uid;     /* a segment owner to trust besides yourself and root (0: none) */
        mode_t mode;         /* permission bits the segment may have, default 0600: a segment
                                other users could read or write is refused */
        /* If set, every wait returns -EINTR soon after *interrupt becomes non-zero (a signal
         * handler's flag). */
        const volatile sig_atomic_t *interrupt;
} eng_client_cfg_t;

/*
 * Attach to the segment `name` (NULL: "/engine-default"). The process gets the SIGBUS guard
 * (see eng_server_failed): another process shrinking the segment does not kill it. Refuses a
 * segment that belongs to
 * another user (unless cfg->owner_uid) or that other users could read or write (beyond
 * cfg->mode): -EACCES, the reason in eng_errmsg(). Waits for a server that is starting;
 * -ECONNREFUSED if there is no segment (after cfg->wait_ms), -ETIMEDOUT if its server never
 * got ready.
 */
ENG_API int eng_client_attach(const char *name, const eng_client_cfg_t *cfg, eng_client_t **out);
/* Closes nothing: close streams first (open streams are ended by the server when it sees
 * the process exit). */
ENG_API void eng_client_detach(eng_client_t *c);

/* Open a stream: waits (up to timeout_ms) for the bootstrap lock and a record on offer.
 * The server's on_open hook runs after this returns: a stream it refuses still opens here (0),
 * and the refusal reaches the client as the error of its next call on the stream (the hook's
 * error, or -EPIPE), after which the stream must still be closed or aborted. */
ENG_API int eng_stream_open(eng_client_t *c, uint32_t user_id, eng_stream_t **out);
/* The same without waiting: -EAGAIN if the bootstrap lock is held or no record is on offer
 * right now (the segment may be full: try again after a stream of yours has closed). */
ENG_API int eng_stream_try_open(eng_client_t *c, uint32_t user_id, eng_stream_t **out);
/* The same, waiting at most timeout_ms (the server puts the next record on offer a few
 * microseconds after a claim): -ETIMEDOUT if none came. */
ENG_API int eng_stream_open_timed(eng_client_t *c, uint32_t user_id, int timeout_ms,
                                  eng_stream_t **out);
/* The most records the segment can hold (streams and sessions, of every client). */
ENG_API uint32_t eng_client_max_records(const eng_client_t *c);
/* Orderly close: tells the server, waits for its acknowledgement (dropping replies still in
 * flight), then gives the record back. Every loan of the stream is invalid afterwards. The
 * handle is freed whatever the result (an error only says the handshake did not complete):
 * never use s again, not even to abort it. */
ENG_API int eng_stream_close(eng_stream_t *s);
/* Give the stream up at once, without the close handshake: the server sees the client is
 * done with it, tells its hooks the stream was aborted and reclaims everything it owns. The
 * handle is freed whatever the result. */
ENG_API int eng_stream_abort(eng_stream_t *s);
ENG_API uint32_t eng_stream_index(const eng_stream_t *s);
/* The largest buffer a loan can ever return in this segment. */
ENG_API uint64_t eng_client_max_loan(const eng_client_t *c);

/* Loan a buffer of at least len bytes. -EAGAIN when the arena is full (try), or waits up to
 * timeout_ms for space (wait variant). -EMSGSIZE when len is over eng_client_max_loan(): no
 * wait can help (eng_errmsg() names the limit and the server option that raises it). */
ENG_API int eng_stream_try_loan(eng_stream_t *s, uint32_t len, void **p, uint64_t *off);
ENG_API int eng_stream_loan(eng_stream_t *s, uint32_t len, void **p, uint64_t *off, int timeout_ms);
ENG_API uint64_t eng_stream_loan_capacity(eng_stream_t *s, uint64_t off);
ENG_API void eng_stream_unloan(eng_stream_t *s, uint64_t off);

/* Send (buffer ownership passes to the server on success). */
ENG_API int eng_stream_try_send(eng_stream_t *s, uint16_t cmd, uint64_t arg, uint64_t off,
                                uint32_t len);
ENG_API int eng_stream_send(eng_stream_t *s, uint16_t cmd, uint64_t arg, uint64_t off, uint32_t len,
                            int timeout_ms);
/* A burst: eng_stream_try_send_more queues like eng_stream_try_send but does not tell the
 * server; eng_stream_flush tells it once for everything queued since (one fence and one look
 * at the stream's scheduling word per burst instead of per message). Until the flush (or the
 * stream's next eng_stream_try_send, blocking send or receive, or close) the server may not
 * see the burst: a caller that waits for replies must flush first. */
ENG_API int eng_stream_try_send_more(eng_stream_t *s, uint16_t cmd, uint64_t arg, uint64_t off,
                                     uint32_t len);
ENG_API void eng_stream_flush(eng_stream_t *s);
ENG_API int eng_stream_try_recv(eng_stream_t *s, eng_msg_t *m);
ENG_API int eng_stream_recv(eng_stream_t *s, eng_msg_t *m, int timeout_ms);
/* Give back the buffer of a received message (no-op without one). */
ENG_API void eng_stream_release(eng_stream_t *s, eng_msg_t *m);

/*
 * Waiting on many streams with one thread: take a ticket, look at every stream (try_send,
 * try_recv), and if nothing moved, wait with the ticket. The wait returns as soon as the server
 * did anything for any stream of this client since the ticket was taken (0), on timeout
 * (-ETIMEDOUT), or when the server is gone (-EPIPE).
 */
ENG_API uint32_t eng_client_ticket(eng_client_t *c);
ENG_API int eng_client_wait(eng_client_t *c, uint32_t ticket, int timeout_ms);
/* 0 while the server that created the segment is alive and serving, else -EPIPE. */
ENG_API int eng_client_check_server(eng_client_t *c);

ENG_API const char *eng_strerror(int err);

/* The version of the library linked at run time ("0.2.0", and 10000 * major + 100 * minor +
 * patch): compare with ENG_VERSION_STRING / ENG_VERSION_NUMBER, the header's. */
ENG_API const char *eng_version(void);
ENG_API unsigned eng_version_number(void);
/* CLOCK_MONOTONIC in nanoseconds: the clock every timeout of the engine is measured with. */
ENG_API uint64_t eng_now_ns(void);
/* A message with context for the last failure of an engine call in this thread ("" if none).
 * A call that succeeds does not clear it: read it right after a call that failed. */
ENG_API const char *eng_errmsg(void);

/* ---- inspection (engine-stat) -------------------------------------------------------- */

/*
 * A snapshot of a live segment for tools: eng_stat_open opens the segment read-only (no
 * mapping, no lock, no write: nothing it does can block or disturb the server or a client);
 * each eng_stat_take reads the segment's headers and records (up to the record watermark,
 * never the buffers above it) into private memory with pread and decodes that copy: its memory
 * is what the records take, not the segment's size. Every value is untrusted: one that cannot be
 * right is left out or shown as unknown, and a line saying why goes to problems[] - never a crash,
 * never an endless loop. eng_stat_decode does the same for any image in memory (tests, fuzzing).
 */
typedef struct eng_stat_view eng_stat_view_t;

typedef struct eng_stat_rec {
        uint32_t index;     /* record slot */
        uint32_t user_id;   /* the client's stream id (streams) */
        int32_t pid;        /* the client's pid, as the record says */
        int alive;          /* that pid exists: 1, 0, or -1 not known */
        bool session;       /* a client's own record (its wake-up line), not a stream */
        const char *state;  /* "offered" "claimed" "open" "ended" or "?" */
        const char *sched;  /* "idle" "queued" "running" "again" "fin" "polling" or "?" */
        uint32_t c2s_fill;  /* descriptors waiting, client -> server */
        uint32_t s2c_fill;  /* descriptors waiting, server -> client */
        uint64_t c2s_msgs;  /* messages sent by the client (= its last sequence number) */
        uint64_t s2c_msgs;  /* messages sent by the server (= its last sequence number) */
        uint64_t c2s_bytes; /* payload bytes sent by the client */
        uint64_t s2c_bytes; /* payload bytes sent by the server */
        uint64_t age_ns;    /* since the server accepted it (0: not accepted / unknown) */
} eng_stat_rec_t;

typedef struct eng_stat_client {
        int32_t pid;
        int alive;        /* 1, 0, -1 not known */
        uint32_t streams; /* its stream records (sessions not counted) */
} eng_stat_client_t;

typedef struct eng_stat_class {
        uint64_t block_bytes; /* one block of the class, header included */
        uint64_t used, free;  /* blocks */
        uint64_t failed;      /* allocations refused for want of space */
} eng_stat_class_t;

typedef struct eng_stat {
        uint64_t taken_ns; /* eng_now_ns() when the image was read */
        char name[256];    /* the segment's name */
        uid_t owner_uid;   /* of the shm object */
        /* the server */
        int32_t server_pid;
        int server_alive;         /* 1: it holds the segment; 0: it is gone; -1: not known */
        const char *server_state; /* "starting" "ready" "stopping" "stopped" or "?" */
        uint64_t epoch;
        uint64_t uptime_ns; /* 0: not known */
        const char *transport;
        uint32_t workers;
        uint64_t size; /* bytes, as the header says */
        uint32_t ring_depth;
        uint32_t max_streams;
        /* the engine's counters since the server started */
        uint64_t opens, closes, ended, aborts, reclaims, heals, refused;
        uint64_t walks; /* arena walks for finalised records (none after an orderly close) */
        /* the arena */
        const char *arena_kind;
        uint64_t arena_size, rec_base, rec_top, buf_bottom, arena_top;
        uint64_t rec_used, rec_free;
        uint32_t nclasses;
        eng_stat_class_t cls[16];
        uint64_t buf_used_bytes, buf_free_bytes, alloc_failed;
        /* records in use, and the clients they belong to */
        uint32_t nrecs;
        eng_stat_rec_t *recs;
        uint32_t nclients;
        eng_stat_client_t *clients;
        /* one line per value found impossible (or a note that the list was cut) */
        uint32_t nproblems;
        char **problems;
} eng_stat_t;

/* Open `name` (NULL: "/engine-default") for inspection: -ENOENT no such segment, -EACCES it
 * belongs to a user other than the caller, root or trust_uid (0: none) and the caller is not
 * root, or it cannot be read; the reason in eng_errmsg(). */
ENG_API int eng_stat_open(const char *name, uid_t trust_uid, eng_stat_view_t **out);
/* Read and decode one snapshot. 0 (even with problems: see out->nproblems); -EPROTO if the
 * image is not a segment at all (no magic; reason in eng_errmsg()); -errno if it could not be
 * read. Free with eng_stat_free. */
ENG_API int eng_stat_take(eng_stat_view_t *v, eng_stat_t *out);
/* Decode an image of len bytes (a copy of a segment): as eng_stat_take, without liveness
 * (alive fields -1) and with name "". */
ENG_API int eng_stat_decode(const void *image, size_t len, eng_stat_t *out);
ENG_API void eng_stat_free(eng_stat_t *st);
ENG_API void eng_stat_close(eng_stat_view_t *v);

#endif
