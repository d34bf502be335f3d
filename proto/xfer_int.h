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

/* ---- writeback of a file being received (xfer_server.c) -------------------------------- */

/*
 * The server fsyncs each file before it renames it. Left alone, the kernel keeps everything
 * written in the page cache (here up to 10 % of memory before background writeback starts), so
 * that fsync alone writes the whole file to the disk after the copy: the two run one after
 * the other. Instead, every XFER_WB_STEP bytes written the server asks the kernel to start
 * writing what it has (sync_file_range SYNC_FILE_RANGE_WRITE), and waits for what is more than
 * XFER_WB_LAG bytes behind the newest data, so the disk works while the copy goes on, dirty
 * memory stays bounded, and the final fsync finds little left. Ranges end on a page boundary
 * below what was written (a page the next chunk completes is not written twice). Nothing here
 * replaces the fsync before the rename. Measured (docs/BENCH.md, "File transfer to a disk"):
 * 1 GiB tmpfs -> ext4 went from ~1.4-1.75 to ~2.5-2.7 GB/s in quiet sittings (a lag of 32 MiB
 * waited too often: ~1.7; no wait at all did as well but lets a big file fill memory with dirty
 * pages); on a loaded machine it did not win.
 */
#define XFER_WB_STEP (16u << 20)
#define XFER_WB_LAG  (128u << 20)
#define XFER_WB_PAGE 4096u

typedef struct xfer_wb {
        uint64_t started; /* writeback was started for [0, started) */
        uint64_t waited;  /* ... and waited for on [0, waited) */
        bool off;         /* the file system cannot do it: ask no more for this file */
} xfer_wb_t;

/* What to ask after written bytes are in the file: start writeback of [start_off, +start_len)
 * and wait for [wait_off, +wait_len) (a length of 0: nothing). */
typedef struct xfer_wb_plan {
        uint64_t start_off, start_len, wait_off, wait_len;
} xfer_wb_plan_t;

/* The plan for a file of which [0, written) is written, with step and lag as XFER_WB_STEP and
 * XFER_WB_LAG (parameters for the tests); moves wb->started and wb->waited past it. */
xfer_wb_plan_t xfer_wb_plan(xfer_wb_t *wb, uint64_t written, uint64_t step, uint64_t lag);

/*
 * Whether an errno of sync_file_range only says the file system or the descriptor cannot do it
 * (EINVAL, ENOSYS, EOPNOTSUPP, ESPIPE): then writeback is left to fsync. Any other error fails
 * the file as a failed write does: waiting on a range reports a write error the disk had, and
 * the kernel reports it once per descriptor, so the fsync before the rename would not see it.
 */
bool xfer_wb_unsupported(int err);

/* Carry out xfer_wb_plan(wb, written, XFER_WB_STEP, XFER_WB_LAG) on fd: 0, or -errno of an
 * error that fails the file (an unsupported file system only sets wb->off). */
int xfer_wb_written(int fd, xfer_wb_t *wb, uint64_t written);

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
