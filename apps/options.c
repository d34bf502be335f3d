/*
 * options.c - load and check options.xml with libxml2: no network, no entity expansion
 * (XML_PARSE_NOENT would inline local files even with NONET), shape checked against the
 * RelaxNG schema apps/options.rng (compiled in), values checked here with the line of the
 * element at fault.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/relaxng.h>
#include <libxml/xmlerror.h>

#include "options.h"
#include "options_rng.h" /* generated from options.rng: static const char eng_options_rng[] */

struct errbuf {
        char *buf;
        size_t len;
        const char *path;
        bool set;
};

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
        if (line <= 0 && e->node != NULL)
                line = xmlGetLineNo((xmlNodePtr)e->node);
        snprintf(eb->buf, eb->len, "%s:%d: %s", e->file ? e->file : eb->path, line, msg);
}

static void rng_error(void *ctx, const char *fmt, ...)
{
        (void)ctx;
        (void)fmt; /* structured errors carry the detail; this only silences stderr */
}

int eng_parse_size(const char *s, uint64_t *out)
{
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || end == s || *s == '-')
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
        if (v > UINT64_MAX / mul)
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
                rc = fail(err, errlen, file, xmlGetLineNo(n),
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
                rc = fail(err, errlen, file, xmlGetLineNo(n),
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
                rc = fail(err, errlen, file, xmlGetLineNo(n),
                          "attribute '%s': '%s' is not an octal file mode (e.g. 0644)", attr, v);
        else
                *out = (mode_t)x;
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
static const char *const server_attrs[] = {"outputpath", "name",  "size",    "transport",
                                           "workers",    "chunk", "spin",    "ringdepth",
                                           "filemode",   "mode",  "timeout", NULL};
static const char *const stream_attrs[] = {"id", "file", NULL};

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
                return fail(err, errlen, file, root ? xmlGetLineNo(root) : 1,
                            "the root element must be <streams>, not <%s>",
                            root ? (const char *)root->name : "");
        int server_line = 0;
        for (xmlNodePtr n = root->children; n; n = n->next) {
                if (n->type != XML_ELEMENT_NODE)
                        continue;
                int line = xmlGetLineNo(n);
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
                } else {
                        return fail(err, errlen, file, line,
                                    "unknown element <%s> (expected <server> or <stream>)",
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
                        return fail(err, errlen, file, xmlGetLineNo(n),
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
                    bad ? fail(err, errlen, file, xmlGetLineNo(n),
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
                            : fail(err, errlen, file, xmlGetLineNo(n),
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
            get_mode(n, "mode", &o->seg_mode, file, err, errlen))
                return -1;
        uint64_t chunk = o->chunk + 64;
        if (get_size(n, "chunk", 4096, 1u << 20, &chunk, file, err, errlen))
                return -1;
        if (chunk & (chunk - 1))
                return fail(err, errlen, file, xmlGetLineNo(n),
                            "attribute 'chunk': %llu is not a power of two (4KiB..1MiB)",
                            (unsigned long long)chunk);
        o->chunk = (uint32_t)chunk - 64; /* a block carries a 64-byte header */
        if (o->ring_depth & (o->ring_depth - 1))
                return fail(err, errlen, file, xmlGetLineNo(n),
                            "attribute 'ringdepth': %u is not a power of two", o->ring_depth);
        return 0;
}

static int load_stream(xmlNodePtr n, eng_opts_t *o, const char *dir, const char *file, char *err,
                       size_t errlen)
{
        uint32_t id = 0;
        if (get_u32(n, "id", 1, INT32_MAX, &id, file, err, errlen))
                return -1;
        int line = xmlGetLineNo(n);
        const eng_opts_stream_t *dup = eng_opts_find(o, id);
        if (dup)
                return fail(err, errlen, file, line,
                            "attribute 'id': stream id %u is already used on line %d", id,
                            dup->line);
        xmlChar *f = xmlGetProp(n, (const xmlChar *)"file");
        if (f == NULL || f[0] == '\0') {
                xmlFree(f);
                return fail(err, errlen, file, line, "attribute 'file' of stream %u is empty", id);
        }
        eng_opts_stream_t *s = realloc(o->streams, (o->nstreams + 1) * sizeof(*s));
        if (s == NULL) {
                xmlFree(f);
                return fail(err, errlen, file, line, "out of memory");
        }
        o->streams = s;
        s = &o->streams[o->nstreams++];
        s->id = id;
        s->line = line;
        s->file = resolve(dir, (const char *)f);
        xmlFree(f);
        return 0;
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
        o->path = strdup(path);
        struct stat sb;
        if (stat(path, &sb) != 0 || access(path, R_OK) != 0 || !S_ISREG(sb.st_mode)) {
                int e = errno;
                snprintf(err, errlen, "%s: cannot read the options file: %s", path,
                         stat(path, &sb) != 0   ? strerror(e)
                         : S_ISDIR(sb.st_mode)  ? "it is a directory"
                         : !S_ISREG(sb.st_mode) ? "not a regular file"
                                                : strerror(e));
                eng_opts_free(o);
                return -1;
        }
        char *tmp = strdup(path);
        char *dir = strdup(dirname(tmp));
        free(tmp);

        struct errbuf eb = {.buf = err, .len = errlen, .path = path};
        xmlSetStructuredErrorFunc(&eb, xml_error);
        int rc = -1;
        xmlDocPtr doc = NULL;
        xmlRelaxNGParserCtxtPtr pctx = NULL;
        xmlRelaxNGPtr schema = NULL;
        xmlRelaxNGValidCtxtPtr vctx = NULL;
        xmlParserCtxtPtr ctx = xmlNewParserCtxt();
        if (ctx == NULL)
                goto out;
        doc = xmlCtxtReadFile(ctx, path, NULL, XML_PARSE_NONET | XML_PARSE_NOBLANKS);
        if (doc == NULL) {
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
                } else if (load_stream(n, o, dir, path, err, errlen)) {
                        goto out;
                }
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
        if (rc != 0)
                eng_opts_free(o);
        return rc;
}

void eng_opts_free(eng_opts_t *o)
{
        for (size_t i = 0; i < o->nstreams; i++)
                free(o->streams[i].file);
        free(o->streams);
        free(o->path);
        free(o->outputpath);
        free(o->name);
        memset(o, 0, sizeof(*o));
}

const eng_opts_stream_t *eng_opts_find(const eng_opts_t *o, uint32_t id)
{
        for (size_t i = 0; i < o->nstreams; i++)
                if (o->streams[i].id == id)
                        return &o->streams[i];
        return NULL;
}
