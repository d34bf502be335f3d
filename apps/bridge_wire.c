/*
 * bridge_wire.c - the frames of engine-bridge (bridge.h): encoding, and the checks every frame
 * from the network passes before anything else looks at it.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <shmengine/proto.h>

#include "bridge.h"

static uint16_t get16(const unsigned char *p)
{
        return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const unsigned char *p)
{
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p)
{
        return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put16(unsigned char *p, uint16_t v)
{
        p[0] = (unsigned char)v;
        p[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *p, uint32_t v)
{
        for (int i = 0; i < 4; i++)
                p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
        put32(p, (uint32_t)v);
        put32(p + 4, (uint32_t)(v >> 32));
}

/* The rules of one frame at the receiving bridge (from a sending bridge). */
static const char *check_alive(const br_hdr_t *h)
{
        return h->link != 0 || h->cmd != 0 || h->arg != 0 || h->len != 0 ? "malformed ALIVE" : NULL;
}

static const char *check_at_receiver(const br_hdr_t *h)
{
        if (h->type == BR_ALIVE)
                return check_alive(h);
        if (h->link == 0)
                return "link 0";
        switch (h->type) {
        case BR_OPEN:
                if (h->cmd != 0 || h->len != 0)
                        return "OPEN with a command or a payload";
                if (h->arg > UINT32_MAX)
                        return "OPEN with a stream id over 32 bits";
                return NULL;
        case BR_MSG:
                switch (h->cmd) {
                case ENG_C_PING:
                        return NULL; /* any payload up to BR_MAX_PAYLOAD */
                case ENG_C_FILE_OPEN:
                        return h->len == 0 || h->len > BR_NAME_WIRE ? "FILE_OPEN name length"
                                                                    : NULL;
                case ENG_C_FILE_DATA:
                        return h->len == 0 ? "empty FILE_DATA" : NULL;
                case ENG_C_FILE_END:
                        return h->len != 0 ? "FILE_END with a payload" : NULL;
                default:
                        return "unknown command in MSG";
                }
        case BR_CLOSE:
                if (h->cmd != 0 || h->len != 0 || h->arg > BR_ERRNO_MAX)
                        return "malformed CLOSE";
                return NULL;
        default:
                return "frame type not accepted from a sending bridge";
        }
}

/* The rules of one frame at the sending bridge (from a receiving bridge). */
static const char *check_at_sender(const br_hdr_t *h)
{
        switch (h->type) {
        case BR_ALIVE:
                return check_alive(h);
        case BR_HELLO:
                if (h->link != 0 || h->cmd != 0 || h->arg != 0 || h->len != BR_HELLO_LEN)
                        return "malformed HELLO";
                return NULL;
        case BR_REPLY:
                if (h->link == 0)
                        return "link 0";
                switch (h->cmd) {
                case ENG_S_PONG:
                        return NULL;
                case ENG_S_FILE_READY:
                case ENG_S_FILE_DONE:
                        return h->len != 0 ? "READY/DONE with a payload" : NULL;
                case ENG_S_FILE_FAIL:
                        if (h->len > BR_TEXT_MAX)
                                return "FILE_FAIL reason too long";
                        if ((h->arg & 0xffffffffu) > BR_ERRNO_MAX || h->arg >> 40 != 0)
                                return "FILE_FAIL code out of range";
                        return NULL;
                default:
                        return "unknown command in REPLY";
                }
        case BR_CREDIT:
                if (h->link == 0 || h->cmd != 0 || h->len != 0 || h->arg == 0 || h->arg > 1024)
                        return "malformed CREDIT";
                return NULL;
        case BR_END:
                if (h->link == 0 || h->cmd != 0 || h->len > BR_TEXT_MAX || h->arg > BR_ERRNO_MAX)
                        return "malformed END";
                return NULL;
        default:
                return "frame type not accepted from a receiving bridge";
        }
}

int br_decode(const void *body, size_t n, br_side_t side, br_hdr_t *h, const char **why)
{
        const unsigned char *p = body;
        const char *bad = NULL;
        if (n < BR_HDR)
                bad = "shorter than a frame header";
        else if (p[0] != BR_VERSION)
                bad = "unknown version";
        if (bad == NULL) {
                h->type = p[1];
                h->cmd = get16(p + 2);
                h->link = get32(p + 4);
                h->epoch = get32(p + 8);
                h->len = get32(p + 12);
                h->arg = get64(p + 16);
                if ((uint64_t)h->len != n - BR_HDR)
                        bad = "length field does not match the message";
                else if (h->len > BR_MAX_PAYLOAD)
                        bad = "payload over 1 MiB";
                else if (h->epoch == 0)
                        bad = "epoch 0";
                else
                        bad = side == BR_AT_RECEIVER ? check_at_receiver(h) : check_at_sender(h);
        }
        if (bad != NULL) {
                *why = bad;
                return -1;
        }
        return 0;
}

void br_put_hdr(void *out, const br_hdr_t *h, uint32_t len)
{
        unsigned char *p = out;
        p[0] = BR_VERSION;
        p[1] = h->type;
        put16(p + 2, h->cmd);
        put32(p + 4, h->link);
        put32(p + 8, h->epoch);
        put32(p + 12, len);
        put64(p + 16, h->arg);
}

nng_msg *br_frame(const br_hdr_t *h, const void *payload, uint32_t len)
{
        nng_msg *m;
        if (nng_msg_alloc(&m, BR_HDR + (size_t)len) != 0)
                return NULL;
        unsigned char *p = nng_msg_body(m);
        br_put_hdr(p, h, len);
        if (payload != NULL && len > 0)
                memcpy(p + BR_HDR, payload, len);
        return m;
}

void br_hello_put(unsigned char out[BR_HELLO_LEN], uint32_t window, uint64_t memory)
{
        put32(out, BR_HELLO_MAGIC);
        put32(out + 4, window);
        put64(out + 8, memory);
}

int br_hello_get(const unsigned char *p, uint32_t *window, uint64_t *memory)
{
        if (get32(p) != BR_HELLO_MAGIC)
                return -1;
        *window = get32(p + 4);
        *memory = get64(p + 8);
        return *window >= 1 && *window <= 1024 && *memory >= (1u << 20) ? 0 : -1;
}

void br_peer(nng_pipe p, char *out, size_t n)
{
        nng_sockaddr sa;
        char ip[INET6_ADDRSTRLEN] = "?";
        if (nng_pipe_get_addr(p, NNG_OPT_REMADDR, &sa) != 0) {
                snprintf(out, n, "unknown peer");
                return;
        }
        if (sa.s_family == NNG_AF_INET) {
                inet_ntop(AF_INET, &sa.s_in.sa_addr, ip, sizeof(ip));
                snprintf(out, n, "%s:%u", ip, ntohs(sa.s_in.sa_port));
        } else if (sa.s_family == NNG_AF_INET6) {
                inet_ntop(AF_INET6, sa.s_in6.sa_addr, ip, sizeof(ip));
                snprintf(out, n, "[%s]:%u", ip, ntohs(sa.s_in6.sa_port));
        } else {
                snprintf(out, n, "peer of family %u", (unsigned)sa.s_family);
        }
}
