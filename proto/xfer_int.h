/*
 * xfer_int.h - private to proto/: what the sending and the receiving side share (a private
 * per-thread buffer for the data path, the wording of reasons) and the server's temporary
 * files.
 */
#ifndef ENG_XFER_INT_H
#define ENG_XFER_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
/*
 * Debian's libxxhash is built for the baseline x86-64 (SSE2), and its XXH3_* functions never
 * use a wider vector unit. Its *_dispatch twins pick AVX2 or AVX-512 at run time when the CPU
 * has them, and give the same hash (xxhash's own promise; test proto::dispatched_hash_is_the_
 * plain_hash holds us to it). This header renames the XXH3 calls of every file that includes
 * xfer_int.h to those twins: hashing a file's bytes runs 2.2-2.8 times faster here (16-20 vs
 * 44-46 GB/s in cache), which pays for the private copy that reading shared bytes once costs.
 */
#include <xxh_x86dispatch.h>
#endif

/*
 * File data crosses shared memory, where any process of the user can rewrite it at any time.
 * Each side therefore reads a byte of the segment once: the client hashes the bytes it read
 * from the file in its own memory and only then copies them into the loan; the server copies
 * the payload out of the segment once and hashes and writes that copy. Copies and hashes go
 * in pieces of XFER_PIECE bytes, so a piece is still in the core's cache when it is read the
 * second time; at most XFER_WINDOW bytes go through the private buffer at once.
 */
#define XFER_PIECE  (64u << 10)
#define XFER_WINDOW (4u << 20)

/*
 * This thread's private buffer, at least len (<= XFER_WINDOW) bytes; NULL if it cannot be
 * had (ENOMEM). One per thread, reused by every transfer the thread drives, freed when the
 * thread exits. Its contents are the caller's only until the caller returns: never hold it
 * across calls that might use it too.
 */
void *xfer_scratch(size_t len);

/*
 * Into buf: text, then the text of err between open and close ("<text><open><strerror><close>")
 * unless text already says it, so a reason that already carries strerror is not repeated.
 * err may be negative; 0 adds nothing.
 */
void xfer_reason(char *buf, size_t n, const char *text, int err, const char *open,
                 const char *close);

/*
 * Start the checksum of one file: the name it lands under, a NUL, its size (8 bytes, little
 * endian), then (by the caller) its bytes. The name and the size are in it because they cross
 * the segment too: a name rewritten in flight would otherwise put verified bytes under a name
 * no client sent (another file's name, even).
 */
void xfer_hash_begin(XXH3_state_t *h, const char *name, uint64_t size);

/* ---- temporary files (xfer_tmp.c) ------------------------------------------------------ */

/*
 * Create a new temporary file ".eng-<pid>-<n>.part" in dirfd (O_CREAT | O_EXCL | O_NOFOLLOW,
 * mode), its name into name, and take an OFD write lock on the whole file, held until the fd
 * is closed (or the process dies). Returns the fd, or -errno with *what saying which step
 * failed ("cannot create a file in the output directory", "cannot lock ...").
 */
int tmp_create(int dirfd, mode_t mode, char *name, size_t namelen, const char **what);

/*
 * Remove the temporary files dead predecessors left in dirfd: regular files (never through a
 * symlink) whose whole name is ".eng-<pid>-<n>.part" as tmp_create writes it, that nobody
 * holds locked, and whose pid is dead, or is ours while own_pid_is_stale (this process has no
 * other server that could be writing them), or that were last modified more than an hour ago.
 * Returns the number removed, or -errno if the directory cannot be read.
 */
int64_t tmp_sweep(int dirfd, bool own_pid_is_stale);

#endif
