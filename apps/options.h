/*
 * options.h - the public interface of apps/: options.xml, shared by engine-server and
 * engine-client.
 *
 *   <streams>
 *     <server outputpath="out/" name="/engine-default" size="64MiB" transport="lockfree"
 *             workers="0" chunk="256KiB" spin="4096" ringdepth="128" filemode="0644"
 *             mode="0600" timeout="30"/>
 *     <stream id="1" file="samples/a.bin"/>
 *   </streams>
 *
 * Every server attribute is optional (defaults above; outputpath defaults to the folder of
 * the server binary, as in the original tool). Relative paths resolve against the folder of
 * the options file itself.
 */
#ifndef ENG_OPTIONS_H
#define ENG_OPTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "engine.h"

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
        eng_opts_stream_t *streams;
        size_t nstreams;
} eng_opts_t;

/* 0, or -1 with a message naming file, line and attribute in err. */
int eng_opts_load(const char *path, eng_opts_t *o, char *err, size_t errlen);
void eng_opts_free(eng_opts_t *o);
const eng_opts_stream_t *eng_opts_find(const eng_opts_t *o, uint32_t id);

/* "64MiB", "256k", "1G", "4096" -> bytes; -1 on a malformed value. */
int eng_parse_size(const char *s, uint64_t *out);

#endif
