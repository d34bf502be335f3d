/*
 * options.h - the public interface of apps/: options.xml, shared by engine-server and
 * engine-client.
 *
 *   <streams>
 *     <server outputpath="out/" name="/engine-default" size="64MiB" transport="lockfree"
 *             workers="0" chunk="256KiB" spin="4096" ringdepth="128" filemode="0644"
 *             mode="0600" timeout="30" owner="alice"/>
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

#endif
