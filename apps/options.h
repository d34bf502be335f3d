/*
 * options.h - the public interface of apps/, shared by engine-server and engine-client: the
 * options file (options.c) and the log lines (log.c, at the end).
 *
 *   <streams>
 *     <server outputpath="out/" name="/engine-default" size="64MiB" transport="lockfree"
 *             workers="0" chunk="256KiB" spin="4096" ringdepth="128" filemode="0644"
 *             mode="0600" timeout="30" owner="alice"/>
 *     <bridge connect="tcp://10.0.0.2:7450" segment="/engine-remote" window="8"
 *             memory="64MiB" streams="256"/>
 *     <stream id="1" file="samples/a.bin"/>
 *   </streams>
 *
 * Every server attribute is optional (defaults above; outputpath defaults to the folder of
 * the server binary, as in the original tool; owner has no default). Relative paths resolve
 * against the folder of the options file itself.
 *
 * owner names the user that clients accept as the segment's owner besides themselves and
 * root: a user name (looked up with getpwnam_r when the file is loaded: an unknown name is an
 * error) or a decimal uid in 0..4294967294 (taken as it is, with or without a passwd entry; a
 * value made only of digits is always a uid). Absent: owner_uid is (uid_t)-1.
 *
 * <bridge> is read by engine-bridge alone (docs/BRIDGE.md): listen="URL" on the receiving host
 * (the bridge attaches to the segment as a client of the real engine-server there) or
 * connect="URL" on the sending host (the bridge serves the segment to local clients), never
 * both; URLs are tcp://HOST:PORT (tcp4://, tcp6:// too). segment defaults to the <server>
 * name. At most one <bridge>.
 *
 * The file is plain XML without a DTD: a document with a <!DOCTYPE> (internal subset, external
 * SYSTEM/PUBLIC subset, or a bare one) is refused before any entity is looked at, and a file
 * larger than ENG_OPTS_MAX_FILE bytes is refused before it is read.
 */
#ifndef ENG_OPTIONS_H
#define ENG_OPTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <shmengine/engine.h>

/* The largest options file eng_opts_load reads (64 MiB: some 2 million streams). */
#define ENG_OPTS_MAX_FILE (64u << 20)

typedef struct eng_opts_stream {
        uint32_t id;
        char *file; /* resolved path */
        int line;
} eng_opts_stream_t;

/* <bridge>: line 0 when the file has none. */
typedef struct eng_opts_bridge {
        char *listen;     /* receiving side: the address to listen on, else NULL */
        char *connect;    /* sending side: the receiving bridge's address, else NULL */
        char *segment;    /* the local segment (default: the <server> name) */
        uint32_t window;  /* file chunks in flight per stream (1..1024, default 8) */
        uint64_t memory;  /* chunk bytes in flight over the connection (default 64 MiB) */
        uint32_t streams; /* streams at once over the connection (1..65535, default 256) */
        int line;
} eng_opts_bridge_t;

typedef struct eng_opts {
        char *path;       /* the options file */
        char *outputpath; /* resolved */
        char *name;       /* segment name */
        uint64_t size;
        eng_transport_t transport;
        uint32_t workers, spin, ring_depth, timeout_s;
        uint32_t chunk; /* payload bytes per data message: the chunk block size less 64 */
        mode_t file_mode, seg_mode;
        uid_t owner_uid;            /* <server owner>: (uid_t)-1 when absent */
        eng_opts_bridge_t bridge;   /* <bridge>, for engine-bridge */
        eng_opts_stream_t *streams; /* in file order */
        size_t nstreams;
        struct eng_opts_index *by_id; /* private: eng_opts_find's index, sorted by id */
} eng_opts_t;

/* 0, or -1 with a message naming file, line and attribute in err. */
int eng_opts_load(const char *path, eng_opts_t *o, char *err, size_t errlen);
void eng_opts_free(eng_opts_t *o);
/* The stream with this id, or NULL; O(log nstreams). Ids are unique (eng_opts_load refuses a
 * repeated one). */
const eng_opts_stream_t *eng_opts_find(const eng_opts_t *o, uint32_t id);

/* "64MiB", "256k", "1G", "4096" -> bytes; -1 on a malformed value. */
int eng_parse_size(const char *s, uint64_t *out);
/* A whole decimal number in lo..hi and nothing else (no sign, no space): 0, or -1 leaving *out
 * alone. For the programs' numeric options. */
int eng_parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out);

/* ---- log lines (log.c) -------------------------------------------------------------- */

/*
 * Every log line engine-server and engine-client write to stderr, one per eng_log call:
 *
 *   2026-12-04T23:51:25.123+00:00 INFO engine-server[1234]: file received and verified
 *   stream=3 pid=5678 name="a b.bin" bytes=1048576 seconds=0.012 rate=87.4  (one line)
 *
 * local time with milliseconds and UTC offset; the level; program[pid]:; the message; then
 * " key=value" per field. The message and every value go through eng_log_escape (no control,
 * bidirectional or invisible character is ever written raw), and the message never holds '='
 * (written \x3D): the fields begin at the first word with a '='. A value is bare when it is
 * non-empty printable ASCII without space, '"', '=' or '\'; otherwise it is in double quotes,
 * where \" is '"', \\ is '\', \xNN a byte and \u{N...} a code point. A message or value is
 * cut after 2 KiB of rendering (ending in "..."); fields that no longer fit in the line are left
 * out and the line ends with truncated=true.
 *
 * Thread-safe: a line is built on the caller's stack and written with one write(2) under a
 * mutex, so lines never interleave. eng_log_init is called once, before any thread logs.
 */
typedef enum eng_log_level {
        ENG_LOG_DEBUG,
        ENG_LOG_INFO,
        ENG_LOG_WARN,
        ENG_LOG_ERROR,
} eng_log_level_t;

typedef enum eng_log_kind {
        ENG_LOG_STR, /* raw text: escaped here */
        ENG_LOG_ESC, /* text eng_log_escape already rendered (proto's names and reasons): its
                      * escapes are kept, so it is not escaped twice */
        ENG_LOG_U64,
        ENG_LOG_I64,
        ENG_LOG_FIX, /* a double with prec digits after the point */
} eng_log_kind_t;

typedef struct eng_log_field {
        const char *key; /* [a-z0-9_]+; NULL ends a list */
        eng_log_kind_t kind;
        int prec;
        union {
                const char *s;
                uint64_t u;
                int64_t i;
                double d;
        };
} eng_log_field_t;

#define ENG_LF_STR(k, v) ((eng_log_field_t){.key = (k), .kind = ENG_LOG_STR, .s = (v)})
#define ENG_LF_ESC(k, v) ((eng_log_field_t){.key = (k), .kind = ENG_LOG_ESC, .s = (v)})
#define ENG_LF_U64(k, v) ((eng_log_field_t){.key = (k), .kind = ENG_LOG_U64, .u = (v)})
#define ENG_LF_I64(k, v) ((eng_log_field_t){.key = (k), .kind = ENG_LOG_I64, .i = (v)})
#define ENG_LF_FIX(k, v, p)                                                                        \
        ((eng_log_field_t){.key = (k), .kind = ENG_LOG_FIX, .prec = (p), .d = (v)})
/* A field list for eng_log: ENG_LOG_FIELDS(ENG_LF_U64("stream", id), ENG_LF_STR("name", n)). */
#define ENG_LOG_FIELDS(...) ((const eng_log_field_t[]){__VA_ARGS__, {.key = NULL}})

/* The program name lines carry ("engine-server"); the string must outlive the logging. */
void eng_log_init(const char *prog);
/* One line: level, the fields (NULL or an ENG_LOG_FIELDS list, at most 16), the message. */
void eng_log(eng_log_level_t level, const eng_log_field_t *fields, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
