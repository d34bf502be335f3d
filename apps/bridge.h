/*
 * bridge.h - private to engine-bridge (apps/engine_bridge.c): the frames two bridges exchange
 * over one NNG pair1 connection (bridge_wire.c) and the two roles (bridge_serve.c on the
 * sending host, bridge_deliver.c on the receiving host). docs/BRIDGE.md describes the design.
 *
 * Every frame is one NNG message: a 24-byte header, little-endian, then len payload bytes.
 *
 *   0  u8  version (BR_VERSION)      4  u32 link   (0 only in HELLO)
 *   1  u8  type (br_type_t)          8  u32 epoch  (the connection it belongs to)
 *   2  u16 cmd  (an engine command)  12 u32 len    (payload bytes; = message length - 24)
 *                                    16 u64 arg
 *
 * Both ways:
 *   ALIVE  link 0, no payload: the connection lives (sent every timeout / BR_ALIVE_DIV)
 * Sending bridge -> receiving bridge:
 *   OPEN   link, arg = the client's stream id: open a stream on the real server
 *   MSG    link, cmd = PING | FILE_OPEN | FILE_DATA | FILE_END, arg and payload as the client
 *          sent them (proto.h)
 *   CLOSE  link, arg = 0 (the client closed in order) or an errno (it aborted or died)
 * Receiving bridge -> sending bridge:
 *   HELLO  epoch = the connection's id; payload = "ENGB", u32 window, u64 memory (16 bytes)
 *   REPLY  link, cmd = PONG | FILE_READY | FILE_DONE | FILE_FAIL, arg and payload as the real
 *          server sent them
 *   CREDIT link, arg = how many FILE_DATA frames of the link the real server has taken
 *   END    link, arg = errno, payload = the reason: the link is over on the receiving side
 *
 * A frame whose epoch is not the current connection's is a leftover of an older connection
 * and is dropped. Any other frame that breaks a rule (br_decode) makes its receiver close the
 * connection: a peer that sends one cannot be trusted with the streams it carries.
 */
#ifndef ENG_BRIDGE_H
#define ENG_BRIDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nng/nng.h>

#include "options.h"

#define BR_VERSION     2 /* 2: ALIVE frames (a bridge of version 1 is refused) */
#define BR_HDR         24u
#define BR_MAX_PAYLOAD (1u << 20) /* a chunk block is at most 1 MiB, its header included */
#define BR_NAME_WIRE   4096u      /* a FILE_OPEN's name, as the server accepts it */
#define BR_TEXT_MAX    1024u      /* a FILE_FAIL's or an END's reason */
#define BR_ERRNO_MAX   4095u
#define BR_HELLO_MAGIC 0x42474e45u /* "ENGB" */
#define BR_HELLO_LEN   16u

typedef enum br_type {
        BR_HELLO = 1,
        BR_OPEN = 2,
        BR_MSG = 3,
        BR_CLOSE = 4,
        BR_REPLY = 5,
        BR_CREDIT = 6,
        BR_END = 7,
        BR_ALIVE = 8,
} br_type_t;

/* Both bridges send ALIVE (link 0, nothing else) every timeout / BR_ALIVE_DIV, and drop
 * a connection that brought nothing at all for the whole timeout: a network gone silent (a
 * link down, a blocked port: no RST, no FIN) is noticed on both sides, the streams it carried
 * fail, and the receiving side lets go of the dead connection so the sender's new one is
 * taken. */
#define BR_ALIVE_DIV 4u

typedef struct br_hdr {
        uint8_t type;
        uint16_t cmd;
        uint32_t link, epoch, len;
        uint64_t arg;
} br_hdr_t;

/* Which side decodes: the receiving bridge takes OPEN, MSG, CLOSE; the sending bridge takes
 * HELLO, REPLY, CREDIT, END. */
typedef enum br_side { BR_AT_RECEIVER, BR_AT_SENDER } br_side_t;

/*
 * Check the n bytes of a frame and decode its header: 0, or -1 with *why saying which rule it
 * broke (version, type for this side, len against the message's length, the command and its
 * payload bounds, the link, the errno range). The payload, if any, starts at body + BR_HDR.
 * Bounds here are the frame's own; state (a known link, the window) is the caller's to check.
 */
int br_decode(const void *body, size_t n, br_side_t side, br_hdr_t *h, const char **why);

/* A new NNG message holding the frame h (h->len is set to len) and len bytes of payload
 * (NULL: left for the caller to fill, at nng_msg_body(m) + BR_HDR). NULL without memory. */
nng_msg *br_frame(const br_hdr_t *h, const void *payload, uint32_t len);

/* Write the header of the frame h with len payload bytes at out (BR_HDR bytes). */
void br_put_hdr(void *out, const br_hdr_t *h, uint32_t len);

/* The sending bridge coalesces a stream's consecutive FILE_DATA chunks into one frame of at
 * most this many payload bytes (the largest chunk a client sends, 1 MiB - 64: one block of
 * the engine's arena). The per-frame cost dominates, not the per-byte one (docs/BRIDGE.md). */
#define BR_BATCH ((1u << 20) - 64u)

/* HELLO's payload. */
void br_hello_put(unsigned char out[BR_HELLO_LEN], uint32_t window, uint64_t memory);
int br_hello_get(const unsigned char *p, uint32_t *window, uint64_t *memory);

/* "a.b.c.d:port" (or "[v6]:port") of an NNG pipe's peer, for log lines. */
void br_peer(nng_pipe p, char *out, size_t n);

/* Both roles run until *stop becomes non-zero (a signal); 0 after a clean stop, 1 if they
 * cannot serve. o is the loaded options file (o->bridge.line != 0). */
int br_serve_run(const eng_opts_t *o, volatile int *stop);
/* The receiving role. Returns BR_EXIT_WEDGED when NNG stopped releasing closed connections
 * (every new one refused for BR_WEDGE_NS with none of ours): only a new process helps, and
 * main starts one (engine_bridge.c). *port gets the port it listened on. */
int br_deliver_run(const eng_opts_t *o, volatile int *stop, int *port);
#define BR_EXIT_WEDGED  75
#define BR_WEDGE_NS     (5 * 1000000000ull)
#define BR_WEDGE_GAP_NS (2 * 1000000000ull) /* longer apart: a new run */

#endif
