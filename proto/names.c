/*
 * names.c - names that come from another process, on their way to a file name and to a log.
 *
 * eng_safe_name decides what may become a file name in the output directory; eng_log_escape
 * renders any bytes (a refused name, a message from the peer) for a log line so that nothing
 * in it can move the cursor, start a new line, reorder what a reader sees (bidi controls) or
 * hide characters from the reader (zero-width and other invisible format characters).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "proto.h"

/* Why a byte sequence is not UTF-8. */
enum utf8_err {
        U8_OK,
        U8_STRAY,     /* a continuation byte where a character should start */
        U8_BAD_LEAD,  /* 0xf8..0xff never occur */
        U8_TRUNCATED, /* a lead byte without all its continuation bytes */
        U8_OVERLONG,
        U8_SURROGATE, /* U+D800..U+DFFF belong to UTF-16 */
        U8_TOO_BIG,   /* beyond U+10FFFF */
};

static const char *const utf8_why[] = {
    [U8_STRAY] = "name is not valid UTF-8 (a stray continuation byte)",
    [U8_BAD_LEAD] = "name is not valid UTF-8 (a byte that never occurs in UTF-8)",
    [U8_TRUNCATED] = "name is not valid UTF-8 (a truncated sequence)",
    [U8_OVERLONG] = "name is not valid UTF-8 (an overlong encoding)",
    [U8_SURROGATE] = "name is not valid UTF-8 (an encoded UTF-16 surrogate, U+D800..U+DFFF)",
    [U8_TOO_BIG] = "name is not valid UTF-8 (a code point beyond U+10FFFF)",
};

/* Decode the sequence at s[0..len) (len >= 1): its length (1..4) and code point, or 0 and
 * *err if it is not UTF-8 (the caller then steps over one byte). */
static size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *cp, enum utf8_err *err)
{
        unsigned char c = s[0];
        size_t n;
        uint32_t v, min;
        if (c < 0x80) {
                *cp = c;
                return 1;
        }
        if (c < 0xc0) {
                *err = U8_STRAY;
                return 0;
        }
        if (c < 0xe0) {
                n = 2, v = c & 0x1fu, min = 0x80;
        } else if (c < 0xf0) {
                n = 3, v = c & 0x0fu, min = 0x800;
        } else if (c < 0xf8) {
                n = 4, v = c & 0x07u, min = 0x10000;
        } else {
                *err = U8_BAD_LEAD;
                return 0;
        }
        for (size_t i = 1; i < n; i++) {
                if (i >= len || (s[i] & 0xc0) != 0x80) {
                        *err = U8_TRUNCATED;
                        return 0;
                }
                v = (v << 6) | (s[i] & 0x3fu);
        }
        *err = v < min                      ? U8_OVERLONG
               : v >= 0xd800 && v <= 0xdfff ? U8_SURROGATE
               : v > 0x10ffff               ? U8_TOO_BIG
                                            : U8_OK;
        if (*err != U8_OK)
                return 0;
        *cp = v;
        return n;
}

static bool is_c1(uint32_t cp)
{
        return cp >= 0x80 && cp <= 0x9f;
}

/* Controls that reorder text: ALM, LRM, RLM, the embeddings and overrides, the isolates. */
static bool is_bidi(uint32_t cp)
{
        return cp == 0x061c || cp == 0x200e || cp == 0x200f || (cp >= 0x202a && cp <= 0x202e) ||
               (cp >= 0x2066 && cp <= 0x2069);
}

/* Characters a reader does not see: soft hyphen, zero-width space and joiners, line and
 * paragraph separators, word joiner and invisible operators, deprecated format controls, BOM,
 * interlinear annotation, tags (which can smuggle a hidden ASCII text). */
static bool is_invisible(uint32_t cp)
{
        return cp == 0x00ad || cp == 0x180e || (cp >= 0x200b && cp <= 0x200d) || cp == 0x2028 ||
               cp == 0x2029 || (cp >= 0x2060 && cp <= 0x2064) || (cp >= 0x206a && cp <= 0x206f) ||
               cp == 0xfeff || (cp >= 0xfff9 && cp <= 0xfffb) || cp == 0xe0001 ||
               (cp >= 0xe0020 && cp <= 0xe007f);
}

static bool is_space(uint32_t cp)
{
        return cp == 0x20 || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) ||
               cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

int eng_safe_name(const char *in, size_t len, char *out, size_t outlen, const char **why)
{
        const unsigned char *s = (const unsigned char *)in;
        const char *w = NULL;
        size_t start = 0;
        for (size_t i = 0; i < len && w == NULL;) {
                uint32_t cp;
                enum utf8_err ue = U8_OK;
                size_t n = utf8_decode(s + i, len - i, &cp, &ue);
                if (n == 0)
                        w = utf8_why[ue];
                else if (cp == 0)
                        w = "name contains a NUL byte";
                else if (cp < 0x20 || cp == 0x7f)
                        w = "name contains a control character";
                else if (is_c1(cp))
                        w = "name contains a C1 control character (U+0080..U+009F)";
                else if (is_bidi(cp))
                        w = "name contains a bidirectional control character (it can reorder "
                            "what a reader sees)";
                else if (is_invisible(cp))
                        w = "name contains an invisible format character (zero-width, joiner, "
                            "separator, BOM or tag)";
                else if (cp == '/')
                        start = i + 1;
                i += n ? n : 1;
        }
        size_t n = len - start;
        if (w == NULL && n == 0)
                w = "name is empty (or ends with '/')";
        if (w == NULL && in[start] == '.')
                w = "name starts with '.' (hidden, '.', '..' and temporary names are refused)";
        if (w == NULL && (n > ENG_NAME_MAX || n + 1 > outlen))
                w = "name is longer than 255 bytes";
        if (w == NULL) {
                /* Valid UTF-8 by now. */
                bool blank = true;
                for (size_t i = start; i < len && blank;) {
                        uint32_t cp;
                        enum utf8_err ue;
                        size_t k = utf8_decode(s + i, len - i, &cp, &ue);
                        blank = is_space(cp);
                        i += k ? k : 1;
                }
                if (blank)
                        w = "name is only whitespace";
        }
        if (w != NULL) {
                if (why)
                        *why = w;
                return -EINVAL;
        }
        memcpy(out, in + start, n);
        out[n] = '\0';
        return 0;
}

size_t eng_log_escape(const void *in, size_t len, char *out, size_t outlen)
{
        const unsigned char *s = in;
        size_t need = 0, w = 0;
        bool full = outlen == 0;
        for (size_t i = 0; i < len;) {
                char esc[16];
                const char *piece = esc;
                size_t plen, step = 1;
                uint32_t cp;
                enum utf8_err ue;
                if (s[i] == '\\') {
                        piece = "\\\\";
                        plen = 2;
                } else if (s[i] >= 0x20 && s[i] < 0x7f) {
                        piece = (const char *)s + i;
                        plen = 1;
                } else if (s[i] < 0x80 || (step = utf8_decode(s + i, len - i, &cp, &ue)) == 0) {
                        /* C0 controls, DEL, and every byte that is not part of valid UTF-8 */
                        plen = (size_t)snprintf(esc, sizeof(esc), "\\x%02X", s[i]);
                        step = 1;
                } else if (is_c1(cp) || is_bidi(cp) || is_invisible(cp)) {
                        plen = (size_t)snprintf(esc, sizeof(esc), "\\u{%04X}", (unsigned)cp);
                } else {
                        piece = (const char *)s + i; /* printable UTF-8, whole */
                        plen = step;
                }
                /* Whole pieces only: the output is a prefix of the full rendering that never
                 * ends inside an escape or a UTF-8 sequence. */
                if (!full && w + plen < outlen) {
                        memcpy(out + w, piece, plen);
                        w += plen;
                } else {
                        full = true;
                }
                need += plen;
                i += step;
        }
        if (outlen > 0)
                out[w] = '\0';
        return need;
}
