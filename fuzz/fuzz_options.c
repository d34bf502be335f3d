/*
 * fuzz_options.c - libFuzzer harness for apps/options.c: every input is written to a
 * temporary file and loaded with eng_opts_load. Errors are expected and fine; a crash, an
 * ASan/UBSan report, a leak, a timeout (a DTD must be refused at once) or a loaded file whose
 * streams eng_opts_find does not find is a bug.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "options.h"

static char path[4096];
static int fd = -1;

static void cleanup(void)
{
        if (fd >= 0) {
                close(fd);
                unlink(path);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (fd < 0) {
                const char *tmp = getenv("TMPDIR");
                snprintf(path, sizeof(path), "%s/eng-fuzz-options-XXXXXX", tmp ? tmp : "/tmp");
                fd = mkstemp(path);
                if (fd < 0) {
                        perror("mkstemp");
                        abort();
                }
                atexit(cleanup);
        }
        if (ftruncate(fd, 0) != 0 || (size > 0 && pwrite(fd, data, size, 0) != (ssize_t)size)) {
                perror("writing the input");
                abort();
        }
        eng_opts_t o;
        char err[512];
        if (eng_opts_load(path, &o, err, sizeof(err)) == 0) {
                /* ids are unique: the index finds every stream, and nothing else */
                for (size_t i = 0; i < o.nstreams; i++)
                        if (eng_opts_find(&o, o.streams[i].id) != &o.streams[i])
                                abort();
                if (eng_opts_find(&o, 0) != NULL)
                        abort();
                eng_opts_free(&o);
        }
        return 0;
}
