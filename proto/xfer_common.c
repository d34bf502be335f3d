/*
 * xfer_common.c - what both sides of file transfer use: the per-thread private buffer the
 * data path reads shared memory into, and the wording of reasons.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "xfer_int.h"

struct scratch {
        void *p;
        size_t cap;
};

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_rc;

static void scratch_free(void *arg)
{
        struct scratch *s = arg;
        free(s->p);
        free(s);
}

static void scratch_init(void)
{
        scratch_key_rc = pthread_key_create(&scratch_key, scratch_free);
}

void *xfer_scratch(size_t len)
{
        if (len > XFER_WINDOW || pthread_once(&scratch_once, scratch_init) != 0 ||
            scratch_key_rc != 0)
                return NULL;
        struct scratch *s = pthread_getspecific(scratch_key);
        if (s == NULL) {
                s = calloc(1, sizeof(*s));
                if (s == NULL)
                        return NULL;
                if (pthread_setspecific(scratch_key, s) != 0) {
                        free(s);
                        return NULL;
                }
        }
        if (s->cap >= len)
                return s->p;
        /* Grow to the next power of two from one piece up: a thread that moves chunks of one
         * size allocates once and then keeps the buffer (and its pages) hot. */
        size_t cap = XFER_PIECE;
        while (cap < len)
                cap *= 2;
        void *p = NULL;
        if (posix_memalign(&p, 4096, cap) != 0)
                return NULL;
        free(s->p);
        s->p = p;
        s->cap = cap;
        return p;
}

void xfer_hash_begin(XXH3_state_t *h, const char *name, uint64_t size)
{
        unsigned char le[9] = {0};
        for (int i = 0; i < 8; i++)
                le[1 + i] = (unsigned char)(size >> (8 * i));
        XXH3_64bits_reset(h);
        XXH3_64bits_update(h, name, strlen(name));
        XXH3_64bits_update(h, le, sizeof(le)); /* the NUL, then the size */
}

void xfer_reason(char *buf, size_t n, const char *text, int err, const char *open,
                 const char *close)
{
        if (err < 0)
                err = -err;
        const char *e = err != 0 ? strerror(err) : NULL;
        if (e == NULL || strstr(text, e) != NULL)
                snprintf(buf, n, "%s", text);
        else
                snprintf(buf, n, "%s%s%s%s", text, open, e, close);
}

int eng_xfer_fail_reason(const eng_msg_t *m, const char *fallback, char *out, size_t outlen)
{
        if (outlen == 0)
                return (int)(uint32_t)m->arg;
        uint32_t why = (uint32_t)(m->arg >> 32) & 0xffu;
        if (m->data != NULL && m->len > 0) {
                /* The text is in the segment: copy it once, escape the copy (it is the peer's
                 * text and ends up on the user's terminal). */
                char raw[256];
                size_t n = m->len < sizeof(raw) ? m->len : sizeof(raw);
                memcpy(raw, m->data, n);
                eng_log_escape(raw, n, out, outlen);
        } else {
                snprintf(out, outlen, "%s",
                         why == ENG_XFER_WHY_CHECKSUM ? "checksum mismatch"
                         : why == ENG_XFER_WHY_SIZE   ? "size mismatch"
                                                      : fallback);
        }
        return (int)(uint32_t)m->arg;
}
