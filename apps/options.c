/*
 * options.c - load and check options.xml with libxml2: no network, no entity expansion
 * (XML_PARSE_NOENT would inline local files even with NONET), no DTD at all (a <!DOCTYPE> stops
 * the parser in its internalSubset hook, before the internal subset's first declaration is
 * read, so entity bombs cost nothing), no XML_PARSE_HUGE (libxml2's default caps on names and
 * text stay on), at most ENG_OPTS_MAX_FILE bytes read through our own callback (libxml2 never
 * opens the file: no transparent gunzip either). Shape checked against the RelaxNG schema
 * apps/options.rng (compiled in), values checked here with the line of the element at fault.
 *
 * Lines: libxml2 2.9 keeps an element's line in 16 bits (65535 for every later line), so a
 * startElementNs hook records the full line in the element's _private (libxml2 leaves that
 * field to applications; RelaxNG uses psvi, not _private).
 *
 * Loading is O(n log n) in the number of streams: streams[] grows geometrically in file order,
 * then one sort of (id, position) pairs both finds repeated ids and is eng_opts_find's index.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libxml/SAX2.h>
#include <libxml/parser.h>
#include <libxml/parserInternals.h>
#include <libxml/relaxng.h>
#include <libxml/xmlerror.h>

#include "options.h"
#include "options_rng.h" /* generated from options.rng: static const char eng_options_rng[] */

/* One stream in eng_opts_find's index: sorted by id, then by position in streams[]. */
struct eng_opts_index {
        uint32_t id;
        uint32_t pos;
};

struct errbuf {
        char *buf;
        size_t len;
        const char *path;
        bool set; /* the first error wins */
        bool dtd; /* the document has a <!DOCTYPE>: refused whatever libxml2 returns */
};

static const char dtd_refused[] = "a DTD (<!DOCTYPE>) is not allowed in an options file";

/* The line of a node: the full line recorded by record_line for an element, else libxml2's
 * (which stops at 65535), else its element's. */
static int node_line(const xmlNode *n)
{
        if (n->type == XML_ELEMENT_NODE && n->_private != NULL)
                return (int)(intptr_t)n->_private;
        long line = xmlGetLineNo(n);
        const xmlNode *p = n->parent;
        if ((line <= 0 || line >= 65535) && p != NULL && p->type == XML_ELEMENT_NODE &&
            p->_private != NULL)
                return (int)(intptr_t)p->_private;
        return line > INT_MAX ? INT_MAX : (int)line;
}

static void xml_error(void *ctx, xmlErrorPtr e)
{
        struct errbuf *eb = ctx;
        if (eb->set || e == NULL)
                return;
        eb->set = true;
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", e->message ? e->message : "error");
        size_t n = strlen(msg);
        while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
                msg[--n] = '\0';
        int line = e->line;
        if (e->node != NULL) {
                int l = node_line((const xmlNode *)e->node);
                if (l > 0)
                        line = l;
        }
        /* "<!DOCTYPE>" without a name never reaches refuse_dtd: say the same thing. */
        if (e->domain == XML_FROM_PARSER && e->code == XML_ERR_NAME_REQUIRED &&
            strstr(msg, "DOCTYPE") != NULL) {
                eb->dtd = true;
                snprintf(msg, sizeof(msg), "%s", dtd_refused);
        }
        snprintf(eb->buf, eb->len, "%s:%d: %s", e->file ? e->file : eb->path, line, msg);
}

/* SAX internalSubset and externalSubset: called for every <!DOCTYPE name ...> as soon as its
 * name and external id are read, before '[' is looked at. Refuse the document and stop. */
static void refuse_dtd(void *ctx, const xmlChar *name, const xmlChar *external_id,
                       const xmlChar *system_id)
{
        (void)name;
        (void)external_id;
        (void)system_id;
        xmlParserCtxtPtr c = ctx;
        struct errbuf *eb = c->_private;
        int line = 0;
        if (c->input != NULL) {
                /* input->line is where the parser is: go back to the "<!DOCTYPE" itself. */
                line = c->input->line;
                int nl = 0;
                for (const xmlChar *p = c->input->cur; c->input->base && p > c->input->base;) {
                        p--;
                        if (*p == '\n')
                                nl++;
                        if (c->input->cur - p >= 9 && memcmp(p, "<!DOCTYPE", 9) == 0) {
                                line -= nl;
                                break;
                        }
                }
        }
        eb->dtd = true;
        if (!eb->set) {
                eb->set = true;
                snprintf(eb->buf, eb->len, "%s:%d: %s", eb->path, line, dtd_refused);
        }
        xmlStopParser(c);
}

/* SAX startElementNs: libxml2's, then the element's full line into its _private. */
static void record_line(void *ctx, const xmlChar *localname, const xmlChar *prefix,
                        const xmlChar *uri, int nb_namespaces, const xmlChar **namespaces,
                        int nb_attributes, int nb_defaulted, const xmlChar **attributes)
{
        xmlParserCtxtPtr c = ctx;
        xmlNodePtr parent = c->node;
        xmlSAX2StartElementNs(ctx, localname, prefix, uri, nb_namespaces, namespaces, nb_attributes,
                              nb_defaulted, attributes);
        if (c->node != NULL && c->node != parent && c->input != NULL && c->input->line > 0)
                c->node->_private = (void *)(intptr_t)c->input->line;
}

static void rng_error(void *ctx, const char *fmt, ...)
{
        (void)ctx;
        (void)fmt; /* structured errors carry the detail; this only silences stderr */
}

int eng_parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
        if (*s < '0' || *s > '9')
                return -1;
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || *end || v < lo || v > hi)
                return -1;
        *out = (uint32_t)v;
        return 0;
}

int eng_parse_size(const char *s, uint64_t *out)
{
        /* Digits first: strtoull would also skip white space and take a sign, and it negates
         * "-1" (after spaces too) into 2^64 - 1 without an error. */
        if (*s < '0' || *s > '9')
                return -1;
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno) /* ERANGE: more than 2^64 - 1 */
                return -1;
        uint64_t mul = 1;
        if (*end) {
                char u = (char)(*end | 0x20);
                mul = u == 'k' ? 1ull << 10 : u == 'm' ? 1ull << 20 : u == 'g' ? 1ull << 30 : 0;
                if (mul == 0)
                        return -1;
                end++;
                if (strcmp(end, "") != 0 && strcmp(end, "iB") != 0 && strcmp(end, "B") != 0 &&
                    strcmp(end, "ib") != 0 && strcmp(end, "b") != 0)
                        return -1;
        }
        if (v > UINT64_MAX / mul) /* v * mul would wrap */
                return -1;
        *out = v * mul;
        return 0;
}

static char *resolve(const char *dir, const char *p)
{
        char *r;
        if (p[0] == '/')
                return strdup(p);
        if (asprintf(&r, "%s/%s", dir, p) < 0)
                return NULL;
        return r;
}

static int fail(char *err, size_t errlen, const char *file, int line, const char *fmt, ...)
{
        char msg[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        snprintf(err, errlen, "%s:%d: %s", file, line, msg);
        return -1;
}

static int get_u32(xmlNodePtr n, const char *attr, uint32_t lo, uint32_t hi, uint32_t *out,
                   const char *file, char *err, size_t errlen)
{
        xmlChar *v = xmlGetProp(n, (const xmlChar *)attr);
        if (v == NULL)
                return 0;
        char *end;
        errno = 0;
        unsigned long x = strtoul((const char *)v, &end, 10);
        int bad = errno || end == (char *)v || *end || v[0] == '-' || x < lo || x > hi;
        int rc = 0;
        if (bad)
                rc = fail(err, errlen, file, node_line(n),
                          "attribute '%s': '%s' is not a whole number in %u..%u", attr, v, lo, hi);
        else
                *out = (uint32_t)x;
        xmlFree(v);
        return rc;
}

static int get_size(xmlNodePtr n, const char *attr, uint64_t lo, uint64_t hi, uint64_t *out,
                    const char *file, char *err, size_t errlen)
{
        xmlChar *v = xmlGetProp(n, (const xmlChar *)attr);
        if (v == NULL)
                return 0;
        uint64_t x;
        int rc = 0;
        if (eng_parse_size((const char *)v, &x) != 0 || x < lo || x > hi)
                rc = fail(err, errlen, file, node_line(n),
                          "attribute '%s': '%s' is not a size in %llu..%llu bytes (e.g. 64MiB)",
                          attr, v, (unsigned long long)lo, (unsigned long long)hi);
        else
                *out = x;
        xmlFree(v);
        return rc;
}

static int get_mode(xmlNodePtr n, const char *attr, mode_t *out, const char *file, char *err,
                    size_t errlen)
{
        xmlChar *v = xmlGetProp(n, (const xmlChar *)attr);
        if (v == NULL)
                return 0;
        char *end;
        unsigned long x = strtoul((const char *)v, &end, 8);
        int rc = 0;
        if (end == (char *)v || *end || x > 0777)
                rc = fail(err, errlen, file, node_line(n),
                          "attribute '%s': '%s' is not an octal file mode (e.g. 0644)", attr, v);
        else
                *out = (mode_t)x;
        xmlFree(v);
        return rc;
}

/* owner="name" (getpwnam_r) or owner="1000" (a decimal uid, taken as it is). */
static int get_owner(xmlNodePtr n, uid_t *out, const char *file, char *err, size_t errlen)
{
        xmlChar *v = xmlGetProp(n, (const xmlChar *)"owner");
        if (v == NULL)
                return 0;
        const char *s = (const char *)v;
        size_t len = strlen(s);
        int line = node_line(n);
        int rc = 0;
        if (len == 0) {
                rc = fail(err, errlen, file, line,
                          "attribute 'owner' is empty (a user name or a uid is expected)");
        } else if (strspn(s, "0123456789") == len || s[0] == '-' || s[0] == '+') {
                char *end;
                errno = 0;
                unsigned long long x = strtoull(s, &end, 10);
                if (s[0] == '-' || s[0] == '+' || errno || *end || x >= (uid_t)-1)
                        rc = fail(err, errlen, file, line,
                                  "attribute 'owner': '%s' is not a uid in 0..%llu", s,
                                  (unsigned long long)(uid_t)-1 - 1);
                else
                        *out = (uid_t)x;
        } else {
                long sz = sysconf(_SC_GETPW_R_SIZE_MAX);
                size_t cap = sz > 1024 ? (size_t)sz : 1024;
                struct passwd pw, *res = NULL;
                char *buf = NULL;
                int e;
                for (;;) {
                        char *b = realloc(buf, cap);
                        if (b == NULL) {
                                e = ENOMEM;
                                break;
                        }
                        buf = b;
                        e = getpwnam_r(s, &pw, buf, cap, &res);
                        if (e != ERANGE || cap >= (1u << 20))
                                break;
                        cap *= 2;
                }
                /* getpwnam_r(3): "not found" may also come back as one of these errors */
                bool none = res == NULL &&
                            (e == 0 || e == ENOENT || e == ESRCH || e == EBADF || e == EPERM);
                if (none)
                        rc = fail(err, errlen, file, line,
                                  "attribute 'owner': there is no user named '%s'", s);
                else if (res == NULL)
                        rc = fail(err, errlen, file, line,
                                  "attribute 'owner': cannot look up the user '%s': %s", s,
                                  strerror(e));
                else
                        *out = pw.pw_uid;
                free(buf);
        }
        xmlFree(v);
        return rc;
}

static char *self_dir(void)
{
        char buf[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
        if (n <= 0)
                return strdup(".");
        buf[n] = '\0';
        return strdup(dirname(buf));
}

/* The shape, checked by hand before the schema so that every message names the element,
 * the attribute and the line (RelaxNG's own messages often carry neither). */
static const char *const server_attrs[] = {
    "outputpath", "name",     "size", "transport", "workers", "chunk", "spin",
    "ringdepth",  "filemode", "mode", "timeout",   "owner",   NULL};
static const char *const stream_attrs[] = {"id", "file", NULL};
static const char *const bridge_attrs[] = {"listen", "connect", "segment", "window",
                                           "memory", "streams", NULL};

static bool known_attr(const char *const *list, const xmlChar *name)
{
        for (; *list; list++)
                if (xmlStrcmp(name, (const xmlChar *)*list) == 0)
                        return true;
        return false;
}

static int check_shape(xmlNodePtr root, const char *file, char *err, size_t errlen)
{
        if (root == NULL || xmlStrcmp(root->name, (const xmlChar *)"streams") != 0)
                return fail(err, errlen, file, root ? node_line(root) : 1,
                            "the root element must be <streams>, not <%s>",
                            root ? (const char *)root->name : "");
        int server_line = 0, bridge_line = 0;
        for (xmlNodePtr n = root->children; n; n = n->next) {
                if (n->type != XML_ELEMENT_NODE)
                        continue;
                int line = node_line(n);
                const char *const *attrs;
                if (xmlStrcmp(n->name, (const xmlChar *)"server") == 0) {
                        if (server_line)
                                return fail(err, errlen, file, line,
                                            "a second <server> element (the first is on line %d)",
                                            server_line);
                        server_line = line;
                        attrs = server_attrs;
                } else if (xmlStrcmp(n->name, (const xmlChar *)"stream") == 0) {
                        attrs = stream_attrs;
                        for (const char *const *a = attrs; *a; a++)
                                if (!xmlHasProp(n, (const xmlChar *)*a))
                                        return fail(err, errlen, file, line,
                                                    "<stream> lacks the attribute '%s'", *a);
                } else if (xmlStrcmp(n->name, (const xmlChar *)"bridge") == 0) {
                        if (bridge_line)
                                return fail(err, errlen, file, line,
                                            "a second <bridge> element (the first is on line %d)",
                                            bridge_line);
                        bridge_line = line;
                        attrs = bridge_attrs;
                        bool l = xmlHasProp(n, (const xmlChar *)"listen") != NULL;
                        bool c = xmlHasProp(n, (const xmlChar *)"connect") != NULL;
                        if (l == c)
                                return fail(err, errlen, file, line,
                                            "<bridge> needs exactly one of 'listen' (receiving "
                                            "host) and 'connect' (sending host)");
                } else {
                        return fail(err, errlen, file, line,
                                    "unknown element <%s> (expected <server>, <bridge> or "
                                    "<stream>)",
                                    (const char *)n->name);
                }
                for (xmlAttrPtr a = n->properties; a; a = a->next)
                        if (!known_attr(attrs, a->name))
                                return fail(err, errlen, file, line, "<%s>: unknown attribute '%s'",
                                            (const char *)n->name, (const char *)a->name);
                if (n->children != NULL)
                        return fail(err, errlen, file, line, "<%s> must be empty",
                                    (const char *)n->name);
        }
        return 0;
}

static int load_server(xmlNodePtr n, eng_opts_t *o, const char *dir, const char *file, char *err,
                       size_t errlen)
{
        xmlChar *v;
        if ((v = xmlGetProp(n, (const xmlChar *)"outputpath")) != NULL) {
                if (v[0] == '\0') {
                        xmlFree(v);
                        return fail(err, errlen, file, node_line(n),
                                    "attribute 'outputpath' is empty");
                }
                free(o->outputpath);
                o->outputpath = resolve(dir, (const char *)v);
                xmlFree(v);
        }
        if ((v = xmlGetProp(n, (const xmlChar *)"name")) != NULL) {
                size_t len = strlen((const char *)v);
                int bad = len < 2 || len > 200 || v[0] != '/' || strchr((const char *)v + 1, '/');
                if (!bad) {
                        free(o->name);
                        o->name = strdup((const char *)v);
                }
                int rc =
                    bad ? fail(err, errlen, file, node_line(n),
                               "attribute 'name': '%s' is not a shm name like /engine-default", v)
                        : 0;
                xmlFree(v);
                if (rc)
                        return rc;
        }
        if ((v = xmlGetProp(n, (const xmlChar *)"transport")) != NULL) {
                bool mx = strcmp((const char *)v, "mutex") == 0;
                bool ok = mx || strcmp((const char *)v, "lockfree") == 0;
                o->transport = mx ? ENG_TRANSPORT_MUTEX : ENG_TRANSPORT_LOCKFREE;
                int rc = ok ? 0
                            : fail(err, errlen, file, node_line(n),
                                   "attribute 'transport': '%s' is neither lockfree nor mutex", v);
                xmlFree(v);
                if (rc)
                        return rc;
        }
        if (get_size(n, "size", 1ull << 20, 1ull << 38, &o->size, file, err, errlen) ||
            get_u32(n, "workers", 0, 256, &o->workers, file, err, errlen) ||
            get_u32(n, "spin", 1, 100000000, &o->spin, file, err, errlen) ||
            get_u32(n, "ringdepth", 4, 65536, &o->ring_depth, file, err, errlen) ||
            get_u32(n, "timeout", 1, 86400, &o->timeout_s, file, err, errlen) ||
            get_mode(n, "filemode", &o->file_mode, file, err, errlen) ||
            get_mode(n, "mode", &o->seg_mode, file, err, errlen) ||
            get_owner(n, &o->owner_uid, file, err, errlen))
                return -1;
        uint64_t chunk = o->chunk + 64;
        if (get_size(n, "chunk", 4096, 1u << 20, &chunk, file, err, errlen))
                return -1;
        if (chunk & (chunk - 1))
                return fail(err, errlen, file, node_line(n),
                            "attribute 'chunk': %llu is not a power of two (4KiB..1MiB)",
                            (unsigned long long)chunk);
        o->chunk = (uint32_t)chunk - 64; /* a block carries a 64-byte header */
        if (o->ring_depth & (o->ring_depth - 1))
                return fail(err, errlen, file, node_line(n),
                            "attribute 'ringdepth': %u is not a power of two", o->ring_depth);
        return 0;
}

/* A bridge address: tcp://HOST:PORT (tcp4://, tcp6://), HOST a name, an IPv4 address, '*' or an
 * IPv6 address in brackets, PORT 0..65535. Printable ASCII only: it goes into log lines. */
static bool bridge_url_ok(const char *v)
{
        static const char *const schemes[] = {"tcp://", "tcp4://", "tcp6://", NULL};
        const char *rest = NULL;
        for (const char *const *sc = schemes; *sc && rest == NULL; sc++)
                if (strncmp(v, *sc, strlen(*sc)) == 0)
                        rest = v + strlen(*sc);
        if (rest == NULL || strlen(v) > 255)
                return false;
        const char *colon = strrchr(rest, ':');
        if (colon == NULL || colon == rest)
                return false;
        for (const char *p = rest; p < colon; p++)
                if (strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]*",
                           *p) == NULL)
                        return false;
        uint32_t port;
        return eng_parse_u32(colon + 1, 0, 65535, &port) == 0;
}

static int load_bridge(xmlNodePtr n, eng_opts_t *o, const char *file, char *err, size_t errlen)
{
        eng_opts_bridge_t *b = &o->bridge;
        b->line = node_line(n);
        const char *which = xmlHasProp(n, (const xmlChar *)"listen") ? "listen" : "connect";
        xmlChar *v = xmlGetProp(n, (const xmlChar *)which);
        if (v == NULL || !bridge_url_ok((const char *)v)) {
                int rc = fail(err, errlen, file, b->line,
                              "attribute '%s': '%s' is not an address like tcp://host:7450", which,
                              v ? (const char *)v : "");
                xmlFree(v);
                return rc;
        }
        char *url = strdup((const char *)v);
        xmlFree(v);
        if (url == NULL)
                return fail(err, errlen, file, b->line, "out of memory");
        if (which[0] == 'l')
                b->listen = url;
        else
                b->connect = url;
        if ((v = xmlGetProp(n, (const xmlChar *)"segment")) != NULL) {
                size_t len = strlen((const char *)v);
                bool bad = len < 2 || len > 200 || v[0] != '/' || strchr((const char *)v + 1, '/');
                int rc = bad ? fail(err, errlen, file, b->line,
                                    "attribute 'segment': '%s' is not a shm name like "
                                    "/engine-remote",
                                    v)
                             : 0;
                if (!bad && (b->segment = strdup((const char *)v)) == NULL)
                        rc = fail(err, errlen, file, b->line, "out of memory");
                xmlFree(v);
                if (rc)
                        return rc;
        }
        if (get_u32(n, "window", 1, 1024, &b->window, file, err, errlen) ||
            get_u32(n, "streams", 1, 65535, &b->streams, file, err, errlen) ||
            get_size(n, "memory", 1ull << 20, 1ull << 36, &b->memory, file, err, errlen))
                return -1;
        return 0;
}

/* Appends the stream to o->streams (capacity *cap, doubled when full). Repeated ids are found
 * afterwards by build_index: the stream is appended as soon as its id is valid, so that a
 * repeated id is still reported before a later fault of the same element, as it always was. */
static int load_stream(xmlNodePtr n, eng_opts_t *o, size_t *cap, const char *dir, const char *file,
                       char *err, size_t errlen)
{
        uint32_t id = 0;
        if (get_u32(n, "id", 1, INT32_MAX, &id, file, err, errlen))
                return -1;
        int line = node_line(n);
        if (o->nstreams == *cap) {
                size_t ncap = *cap ? 2 * *cap : 16;
                eng_opts_stream_t *s =
                    ncap <= UINT32_MAX ? realloc(o->streams, ncap * sizeof(*s)) : NULL;
                if (s == NULL)
                        return fail(err, errlen, file, line, "out of memory");
                o->streams = s;
                *cap = ncap;
        }
        eng_opts_stream_t *s = &o->streams[o->nstreams++];
        s->id = id;
        s->line = line;
        s->file = NULL;
        xmlChar *f = xmlGetProp(n, (const xmlChar *)"file");
        if (f == NULL || f[0] == '\0') {
                xmlFree(f);
                return fail(err, errlen, file, line, "attribute 'file' of stream %u is empty", id);
        }
        s->file = resolve(dir, (const char *)f);
        xmlFree(f);
        if (s->file == NULL)
                return fail(err, errlen, file, line, "out of memory");
        return 0;
}

static int index_cmp(const void *a, const void *b)
{
        const struct eng_opts_index *x = a, *y = b;
        if (x->id != y->id)
                return x->id < y->id ? -1 : 1;
        return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* Sorts (id, position) pairs into o->by_id. A repeated id is reported, like a fault found in
 * file order, at its earliest repetition, naming the line of the id's first use. After another
 * fault (after_fault), running out of memory leaves that fault's message alone. */
static int build_index(eng_opts_t *o, bool after_fault, const char *file, char *err, size_t errlen)
{
        size_t n = o->nstreams;
        struct eng_opts_index *ix = malloc((n ? n : 1) * sizeof(*ix));
        if (ix == NULL) {
                if (!after_fault)
                        snprintf(err, errlen, "%s: out of memory", file);
                return -1;
        }
        for (size_t i = 0; i < n; i++)
                ix[i] = (struct eng_opts_index){.id = o->streams[i].id, .pos = (uint32_t)i};
        qsort(ix, n, sizeof(*ix), index_cmp);
        size_t first = 0, repeat = SIZE_MAX; /* positions in streams[] */
        for (size_t i = 1, group = 0; i < n; i++) {
                if (ix[i].id != ix[group].id) {
                        group = i;
                } else if (i == group + 1 && (repeat == SIZE_MAX || ix[i].pos < repeat)) {
                        repeat = ix[i].pos;
                        first = ix[group].pos;
                }
        }
        o->by_id = ix;
        if (repeat == SIZE_MAX)
                return 0;
        const eng_opts_stream_t *s = &o->streams[repeat];
        return fail(err, errlen, file, s->line,
                    "attribute 'id': stream id %u is already used on line %d", s->id,
                    o->streams[first].line);
}

/* The options file, open for reading, or -1 with a message naming it: not there, not readable,
 * not a regular file, or larger than ENG_OPTS_MAX_FILE (refused before reading a byte). */
static int open_options(const char *path, char *err, size_t errlen)
{
        struct stat sb;
        const char *why = NULL;
        int fd = -1;
        if (stat(path, &sb) != 0)
                why = strerror(errno);
        else if (S_ISDIR(sb.st_mode))
                why = "it is a directory";
        else if (!S_ISREG(sb.st_mode))
                why = "not a regular file";
        else if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) < 0 ||
                 fstat(fd, &sb) != 0)
                why = strerror(errno);
        else if (!S_ISREG(sb.st_mode))
                why = "not a regular file";
        if (why != NULL)
                snprintf(err, errlen, "%s: cannot read the options file: %s", path, why);
        else if ((uint64_t)sb.st_size > ENG_OPTS_MAX_FILE)
                snprintf(err, errlen,
                         "%s: the options file is %llu bytes, more than the %u MiB an options "
                         "file may have",
                         path, (unsigned long long)sb.st_size, ENG_OPTS_MAX_FILE >> 20);
        else
                return fd;
        if (fd >= 0)
                close(fd);
        return -1;
}

/* libxml2 reads the file through this, not by itself: no transparent gunzip, and a file that
 * grows past ENG_OPTS_MAX_FILE while it is read is cut off (the parse fails; eng_opts_load then
 * says why). */
struct reader {
        int fd;
        size_t done;
        int error; /* errno of a failed read */
        bool too_big;
};

static int read_options(void *ctx, char *buf, int len)
{
        struct reader *r = ctx;
        if (r->error || r->too_big)
                return -1;
        for (;;) {
                ssize_t n = read(r->fd, buf, (size_t)len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r->error = errno;
                        return -1;
                }
                r->done += (size_t)n;
                if (r->done > ENG_OPTS_MAX_FILE) {
                        r->too_big = true;
                        return -1;
                }
                return (int)n;
        }
}

int eng_opts_load(const char *path, eng_opts_t *o, char *err, size_t errlen)
{
        memset(o, 0, sizeof(*o));
        o->size = 64ull << 20;
        o->transport = ENG_TRANSPORT_LOCKFREE;
        o->chunk = (256u << 10) - 64;
        o->spin = 4096;
        o->ring_depth = 128;
        o->timeout_s = 30;
        o->file_mode = 0644;
        o->seg_mode = 0600;
        o->name = strdup("/engine-default");
        o->outputpath = self_dir();
        o->owner_uid = (uid_t)-1;
        o->path = strdup(path);
        o->bridge.window = 8;
        o->bridge.memory = 64ull << 20;
        o->bridge.streams = 256;
        struct reader rd = {.fd = open_options(path, err, errlen)};
        if (rd.fd < 0) {
                eng_opts_free(o);
                return -1;
        }
        char *tmp = strdup(path);
        char *dir = strdup(dirname(tmp));
        free(tmp);

        struct errbuf eb = {.buf = err, .len = errlen, .path = path};
        xmlSetStructuredErrorFunc(&eb, xml_error);
        int rc = -1;
        size_t cap = 0;
        xmlDocPtr doc = NULL;
        xmlRelaxNGParserCtxtPtr pctx = NULL;
        xmlRelaxNGPtr schema = NULL;
        xmlRelaxNGValidCtxtPtr vctx = NULL;
        xmlParserCtxtPtr ctx = xmlNewParserCtxt();
        if (ctx == NULL || ctx->sax == NULL) {
                snprintf(err, errlen, "%s: out of memory", path);
                goto out;
        }
        ctx->_private = &eb;
        ctx->sax->internalSubset = refuse_dtd;
        ctx->sax->externalSubset = refuse_dtd;
        ctx->sax->startElementNs = record_line;
        doc = xmlCtxtReadIO(ctx, read_options, NULL, &rd, path, NULL,
                            XML_PARSE_NONET | XML_PARSE_NOBLANKS);
        if (rd.too_big) {
                snprintf(err, errlen,
                         "%s: the options file grew past the %u MiB an options file may have "
                         "while it was read",
                         path, ENG_OPTS_MAX_FILE >> 20);
                goto out;
        }
        if (rd.error) {
                snprintf(err, errlen, "%s: cannot read the options file: %s", path,
                         strerror(rd.error));
                goto out;
        }
        if (doc == NULL || eb.dtd) {
                if (!eb.set)
                        snprintf(err, errlen, "%s: not well-formed XML", path);
                goto out;
        }
        if (check_shape(xmlDocGetRootElement(doc), path, err, errlen) != 0)
                goto out;
        pctx = xmlRelaxNGNewMemParserCtxt(eng_options_rng, (int)sizeof(eng_options_rng) - 1);
        xmlRelaxNGSetParserErrors(pctx, rng_error, rng_error, NULL);
        schema = pctx ? xmlRelaxNGParse(pctx) : NULL;
        vctx = schema ? xmlRelaxNGNewValidCtxt(schema) : NULL;
        if (vctx == NULL) {
                snprintf(err, errlen, "internal error: the options schema does not load");
                goto out;
        }
        xmlRelaxNGSetValidErrors(vctx, rng_error, rng_error, NULL);
        if (xmlRelaxNGValidateDoc(vctx, doc) != 0) {
                if (!eb.set)
                        snprintf(err, errlen, "%s: does not match the options schema", path);
                goto out;
        }
        xmlNodePtr root = xmlDocGetRootElement(doc);
        for (xmlNodePtr n = root->children; n; n = n->next) {
                if (n->type != XML_ELEMENT_NODE)
                        continue;
                if (xmlStrcmp(n->name, (const xmlChar *)"server") == 0) {
                        if (load_server(n, o, dir, path, err, errlen))
                                goto out;
                } else if (xmlStrcmp(n->name, (const xmlChar *)"bridge") == 0) {
                        if (load_bridge(n, o, path, err, errlen))
                                goto out;
                } else if (load_stream(n, o, &cap, dir, path, err, errlen)) {
                        /* a repeated id among the streams so far comes first in the file */
                        (void)build_index(o, true, path, err, errlen);
                        goto out;
                }
        }
        if (build_index(o, false, path, err, errlen) != 0)
                goto out;
        if (o->bridge.line != 0 && o->bridge.segment == NULL &&
            (o->bridge.segment = strdup(o->name)) == NULL) {
                snprintf(err, errlen, "%s: out of memory", path);
                goto out;
        }
        rc = 0;
out:
        xmlSetStructuredErrorFunc(NULL, NULL);
        if (vctx)
                xmlRelaxNGFreeValidCtxt(vctx);
        if (schema)
                xmlRelaxNGFree(schema);
        if (pctx)
                xmlRelaxNGFreeParserCtxt(pctx);
        if (doc)
                xmlFreeDoc(doc);
        if (ctx)
                xmlFreeParserCtxt(ctx);
        free(dir);
        close(rd.fd);
        if (rc != 0)
                eng_opts_free(o);
        return rc;
}

void eng_opts_free(eng_opts_t *o)
{
        for (size_t i = 0; i < o->nstreams; i++)
                free(o->streams[i].file);
        free(o->streams);
        free(o->by_id);
        free(o->path);
        free(o->outputpath);
        free(o->name);
        free(o->bridge.listen);
        free(o->bridge.connect);
        free(o->bridge.segment);
        memset(o, 0, sizeof(*o));
}

const eng_opts_stream_t *eng_opts_find(const eng_opts_t *o, uint32_t id)
{
        if (o->by_id == NULL)
                return NULL;
        size_t lo = 0, hi = o->nstreams; /* the answer is in [lo, hi) */
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (o->by_id[mid].id < id)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (lo < o->nstreams && o->by_id[lo].id == id)
                return &o->streams[o->by_id[lo].pos];
        return NULL;
}
