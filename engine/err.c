/*
 * err.c - errors: the thread's message for the user (eng_set_err / eng_errmsg) and the text
 * of the engine's error codes (eng_strerror).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local char errmsg[512];

void eng_set_err(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errmsg, sizeof(errmsg), fmt, ap);
        va_end(ap);
}

const char *eng_errmsg(void)
{
        return errmsg;
}

const char *eng_strerror(int err)
{
        switch (err) {
        case 0:
                return "success";
        case -EAGAIN:
                return "would block (ring full, nothing to receive, or arena full)";
        case -ETIMEDOUT:
                return "timed out";
        case -EPIPE:
                return "peer gone or stream ended";
        case -EPROTO:
                return "protocol error";
        case -EADDRINUSE:
                return "a live server already owns this segment name";
        case -EMSGSIZE:
                return "message larger than the segment's largest buffer";
        default:
                return strerror(err < 0 ? -err : err);
        }
}

int eng_err_msgsize(uint32_t len, uint64_t max)
{
        unsigned shift = 0;
        while (shift < 63 && (1ull << shift) < max + ENG_ARENA_HDR_BYTES)
                shift++;
        eng_set_err("a message of %u bytes is larger than the largest buffer of this segment, "
                    "%llu bytes (blocks of 2^%u bytes less a %u-byte header): raise the server's "
                    "max_block_shift (eng_server_cfg_t), or send it in pieces",
                    len, (unsigned long long)max, shift, ENG_ARENA_HDR_BYTES);
        return -EMSGSIZE;
}
