/*
 * test_options.c - eng_opts_load and eng_parse_size: defaults, path resolution, and the
 * promise that every error names the file, the line and the attribute at fault (or says
 * plainly what is wrong when there is no line: a missing file). Each test writes its own
 * options files into its own temporary folder.
 */
#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "options.h"

static char g_dir[PATH_MAX];
static char g_err[1024];

static void setup(void)
{
        snprintf(g_dir, sizeof(g_dir), "/tmp/eng-opts-%d-XXXXXX", (int)getpid());
        cr_assert_not_null(mkdtemp(g_dir), "mkdtemp: %s", strerror(errno));
        g_err[0] = '\0';
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
        (void)sb;
        (void)flag;
        (void)ftw;
        return remove(p);
}

static void teardown(void)
{
        if (g_dir[0])
                nftw(g_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(options, .init = setup, .fini = teardown, .timeout = 20);

/* Write text into g_dir/name (creating one level of sub-folder if name has one); returns a
 * static path. */
static const char *put(const char *name, const char *text)
{
        static char path[2 * PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", g_dir, name);
        char tmp[2 * PATH_MAX];
        snprintf(tmp, sizeof(tmp), "%s", path);
        mkdir(dirname(tmp), 0755);
        FILE *f = fopen(path, "w");
        cr_assert_not_null(f, "cannot write %s: %s", path, strerror(errno));
        fputs(text, f);
        cr_assert_eq(fclose(f), 0);
        return path;
}

/* Load text as g_dir/options.xml and expect failure; returns the message. */
static const char *load_fails(const char *text)
{
        const char *path = put("options.xml", text);
        eng_opts_t o;
        int rc = eng_opts_load(path, &o, g_err, sizeof(g_err));
        if (rc == 0)
                eng_opts_free(&o);
        cr_assert_eq(rc, -1, "expected the options to be refused:\n%s", text);
        cr_assert(g_err[0] != '\0', "no error message for:\n%s", text);
        return g_err;
}

/* The message starts with "<path>:<line>:" */
static void assert_at(const char *msg, int line)
{
        char want[PATH_MAX + 32];
        snprintf(want, sizeof(want), "%s/options.xml:%d:", g_dir, line);
        cr_assert(strncmp(msg, want, strlen(want)) == 0, "message should start with '%s': '%s'",
                  want, msg);
}

static void assert_has(const char *msg, const char *part)
{
        cr_assert_not_null(strstr(msg, part), "message should mention '%s': '%s'", part, msg);
}

/* The message contains word on its own (so "id" is not found inside "validate"). */
static void assert_word(const char *msg, const char *word)
{
        size_t n = strlen(word);
        for (const char *p = msg; (p = strstr(p, word)) != NULL; p++) {
                bool left = p == msg || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
                bool right = !(isalnum((unsigned char)p[n]) || p[n] == '_');
                if (left && right)
                        return;
        }
        cr_assert_fail("message should name '%s': '%s'", word, msg);
}

/* ---- what loads --------------------------------------------------------------------- */

Test(options, seed_shape_loads_with_documented_defaults)
{
        const char *path =
            put("options.xml", "<streams><server outputpath=\"x\"/><stream id=\"1\" file=\"a\"/>"
                               "</streams>\n");
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(path, &o, g_err, sizeof(g_err)), 0, "%s", g_err);
        cr_assert_str_eq(o.path, path);
        cr_assert_str_eq(o.name, "/engine-default");
        cr_assert_eq(o.size, 64ull << 20);
        cr_assert_eq(o.transport, ENG_TRANSPORT_LOCKFREE);
        cr_assert_eq(o.workers, 0);
        cr_assert_eq(o.chunk, (256u << 10) - 64, "chunk payload %u", o.chunk);
        cr_assert_eq(o.spin, 4096);
        cr_assert_eq(o.ring_depth, 128);
        cr_assert_eq(o.timeout_s, 30);
        cr_assert_eq(o.file_mode, 0644);
        cr_assert_eq(o.seg_mode, 0600);
        cr_assert_eq(o.nstreams, 1);
        cr_assert_eq(o.streams[0].id, 1);
        cr_assert_eq(o.streams[0].line, 1);
        const eng_opts_stream_t *s = eng_opts_find(&o, 1);
        cr_assert_eq(s, &o.streams[0]);
        cr_assert_null(eng_opts_find(&o, 2));
        eng_opts_free(&o);
}

Test(options, every_server_attribute_is_read)
{
        const char *path =
            put("options.xml", "<?xml version=\"1.0\"?>\n"
                               "<streams>\n"
                               "  <server outputpath=\"/abs/out\" name=\"/t-opts\" size=\"1GiB\"\n"
                               "          transport=\"mutex\" workers=\"3\" chunk=\"4KiB\"\n"
                               "          spin=\"7\" ringdepth=\"1024\" filemode=\"0600\"\n"
                               "          mode=\"0640\" timeout=\"5\"/>\n"
                               "  <stream id=\"7\" file=\"/abs/a.bin\"/>\n"
                               "  <stream id=\"2147483647\" file=\"b.bin\"/>\n"
                               "</streams>\n");
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(path, &o, g_err, sizeof(g_err)), 0, "%s", g_err);
        cr_assert_str_eq(o.outputpath, "/abs/out");
        cr_assert_str_eq(o.name, "/t-opts");
        cr_assert_eq(o.size, 1ull << 30);
        cr_assert_eq(o.transport, ENG_TRANSPORT_MUTEX);
        cr_assert_eq(o.workers, 3);
        cr_assert_eq(o.chunk, 4096 - 64);
        cr_assert_eq(o.spin, 7);
        cr_assert_eq(o.ring_depth, 1024);
        cr_assert_eq(o.file_mode, 0600);
        cr_assert_eq(o.seg_mode, 0640);
        cr_assert_eq(o.timeout_s, 5);
        cr_assert_eq(o.nstreams, 2);
        cr_assert_str_eq(o.streams[0].file, "/abs/a.bin");
        cr_assert_eq(o.streams[0].line, 7);
        cr_assert_eq(o.streams[1].id, 2147483647u);
        cr_assert_eq(o.streams[1].line, 8);
        eng_opts_free(&o);
}

Test(options, relative_paths_resolve_against_the_options_files_folder)
{
        const char *path = put("conf/options.xml", "<streams>\n"
                                                   "<server outputpath=\"out/recv\"/>\n"
                                                   "<stream id=\"1\" file=\"samples/a.bin\"/>\n"
                                                   "<stream id=\"2\" file=\"../b.bin\"/>\n"
                                                   "</streams>\n");
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(path, &o, g_err, sizeof(g_err)), 0, "%s", g_err);
        char want[PATH_MAX + 32];
        snprintf(want, sizeof(want), "%s/conf/out/recv", g_dir);
        cr_assert_str_eq(o.outputpath, want);
        snprintf(want, sizeof(want), "%s/conf/samples/a.bin", g_dir);
        cr_assert_str_eq(o.streams[0].file, want);
        snprintf(want, sizeof(want), "%s/conf/../b.bin", g_dir);
        cr_assert_str_eq(o.streams[1].file, want);
        eng_opts_free(&o);
}

Test(options, relative_options_path_resolves_against_its_own_folder_not_the_cwd)
{
        put("conf/options.xml", "<streams><server outputpath=\"out\"/>"
                                "<stream id=\"1\" file=\"a.bin\"/></streams>\n");
        cr_assert_eq(chdir(g_dir), 0); /* each Criterion test runs in its own process */
        eng_opts_t o;
        cr_assert_eq(eng_opts_load("conf/options.xml", &o, g_err, sizeof(g_err)), 0, "%s", g_err);
        cr_assert_str_eq(o.outputpath, "conf/out");
        cr_assert_str_eq(o.streams[0].file, "conf/a.bin");
        eng_opts_free(&o);
}

Test(options, outputpath_defaults_to_the_programs_folder)
{
        const char *path = put("options.xml", "<streams><stream id=\"1\" file=\"a\"/></streams>");
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(path, &o, g_err, sizeof(g_err)), 0, "%s", g_err);
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        cr_assert_gt(n, 0);
        exe[n] = '\0';
        cr_assert_str_eq(o.outputpath, dirname(exe));
        eng_opts_free(&o);
}

Test(options, streams_without_a_server_element_and_in_any_order_load)
{
        const char *path = put("options.xml", "<streams>\n"
                                              "  <stream id=\"2\" file=\"b\"/>\n"
                                              "  <server name=\"/t-x\"/>\n"
                                              "  <!-- a comment -->\n"
                                              "  <stream id=\"1\" file=\"a\"/>\n"
                                              "</streams>\n");
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(path, &o, g_err, sizeof(g_err)), 0, "%s", g_err);
        cr_assert_eq(o.nstreams, 2);
        cr_assert_eq(eng_opts_find(&o, 1)->line, 5);
        cr_assert_eq(eng_opts_find(&o, 2)->line, 2);
        eng_opts_free(&o);
}

/* ---- what is refused, and how it is said -------------------------------------------- */

Test(options, missing_options_file_is_reported_plainly)
{
        char path[PATH_MAX + 32];
        snprintf(path, sizeof(path), "%s/nope.xml", g_dir);
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(path, &o, g_err, sizeof(g_err)), -1);
        assert_has(g_err, path);
        assert_has(g_err, "No such file");
        cr_assert_null(strstr(g_err, "external entity"), "libxml2 jargon: '%s'", g_err);
}

Test(options, options_path_that_is_a_folder_is_reported_with_its_name)
{
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(g_dir, &o, g_err, sizeof(g_err)), -1);
        assert_has(g_err, g_dir);
        assert_has(g_err, "directory");
}

Test(options, unreadable_options_file_is_reported_plainly)
{
        if (geteuid() == 0) {
                teardown(); /* a skipped test does not reach .fini */
                cr_skip_test("root reads every file");
        }
        const char *path = put("options.xml", "<streams/>");
        chmod(path, 0);
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(path, &o, g_err, sizeof(g_err)), -1);
        assert_has(g_err, "Permission denied");
}

Test(options, unclosed_tag_names_file_and_line)
{
        const char *m = load_fails("<streams>\n"
                                   "  <server outputpath=\"x\"/>\n"
                                   "  <stream id=\"1\" file=\"a\">\n"
                                   "</streams>\n");
        cr_assert(strncmp(m, g_dir, strlen(g_dir)) == 0, "message should start with the file: '%s'",
                  m);
        /* libxml2 reports the mismatch where it notices it: line 3 or 4 */
        char l3[PATH_MAX + 32], l4[PATH_MAX + 32];
        snprintf(l3, sizeof(l3), "%s/options.xml:3:", g_dir);
        snprintf(l4, sizeof(l4), "%s/options.xml:4:", g_dir);
        cr_assert(strncmp(m, l3, strlen(l3)) == 0 || strncmp(m, l4, strlen(l4)) == 0,
                  "message should name line 3 or 4: '%s'", m);
}

Test(options, truncated_file_names_file_and_line)
{
        const char *m = load_fails("<streams>\n  <stream id=\"1\" file=\"a\"/>\n");
        cr_assert(strncmp(m, g_dir, strlen(g_dir)) == 0, "message should start with the file: '%s'",
                  m);
        cr_assert_not_null(strstr(m, ".xml:"), "no line: '%s'", m);
}

Test(options, empty_file_is_refused_with_its_name)
{
        const char *m = load_fails("");
        assert_has(m, g_dir);
}

Test(options, missing_file_attribute_names_line_and_attribute)
{
        const char *m = load_fails("<streams>\n"
                                   "  <server outputpath=\"x\"/>\n"
                                   "  <stream id=\"1\"/>\n"
                                   "</streams>\n");
        assert_at(m, 3);
        assert_word(m, "file");
}

Test(options, missing_id_attribute_names_line_and_attribute)
{
        const char *m = load_fails("<streams>\n"
                                   "  <stream file=\"a\"/>\n"
                                   "</streams>\n");
        assert_at(m, 2);
        assert_word(m, "id");
}

Test(options, empty_file_attribute_names_line_and_attribute)
{
        const char *m = load_fails("<streams>\n"
                                   "  <stream id=\"1\" file=\"a\"/>\n"
                                   "  <stream id=\"2\" file=\"\"/>\n"
                                   "</streams>\n");
        assert_at(m, 3);
        assert_has(m, "'file'");
}

Test(options, duplicate_id_names_both_lines)
{
        const char *m = load_fails("<streams>\n"
                                   "  <stream id=\"5\" file=\"a\"/>\n"
                                   "  <stream id=\"6\" file=\"b\"/>\n"
                                   "  <stream id=\"5\" file=\"c\"/>\n"
                                   "</streams>\n");
        assert_at(m, 4);
        assert_has(m, "'id'");
        assert_has(m, "line 2");
}

static void bad_id(const char *id)
{
        char text[256];
        snprintf(text, sizeof(text), "<streams>\n\n  <stream id=\"%s\" file=\"a\"/>\n</streams>\n",
                 id);
        const char *m = load_fails(text);
        assert_at(m, 3);
        assert_has(m, "'id'");
        assert_has(m, id);
}

Test(options, id_zero_is_refused)
{
        bad_id("0");
}

Test(options, negative_id_is_refused)
{
        bad_id("-1");
}

Test(options, non_numeric_id_is_refused)
{
        bad_id("one");
}

Test(options, id_with_trailing_garbage_is_refused)
{
        bad_id("3x");
}

Test(options, id_beyond_int32_is_refused)
{
        bad_id("2147483648");
}

Test(options, empty_id_is_refused)
{
        const char *m = load_fails("<streams>\n  <stream id=\"\" file=\"a\"/>\n</streams>\n");
        assert_at(m, 2);
        assert_has(m, "'id'");
}

Test(options, unknown_attribute_is_refused_by_the_schema)
{
        const char *m = load_fails("<streams>\n"
                                   "  <server outputpath=\"x\"\n"
                                   "          colour=\"blue\"/>\n"
                                   "</streams>\n");
        cr_assert(strncmp(m, g_dir, strlen(g_dir)) == 0, "message should start with the file: '%s'",
                  m);
        char l2[PATH_MAX + 32], l3[PATH_MAX + 32];
        snprintf(l2, sizeof(l2), "%s/options.xml:2:", g_dir);
        snprintf(l3, sizeof(l3), "%s/options.xml:3:", g_dir);
        cr_assert(strncmp(m, l2, strlen(l2)) == 0 || strncmp(m, l3, strlen(l3)) == 0,
                  "message should name the element's line: '%s'", m);
        assert_word(m, "colour");
}

Test(options, unknown_attribute_on_a_server_after_the_streams_is_refused)
{
        const char *m = load_fails("<streams>\n"
                                   "  <stream id=\"1\" file=\"a\"/>\n"
                                   "  <server workers=\"2\" colour=\"blue\"/>\n"
                                   "</streams>\n");
        assert_at(m, 3);
        assert_word(m, "colour");
}

Test(options, unknown_stream_attribute_is_refused_by_the_schema)
{
        const char *m = load_fails("<streams>\n"
                                   "  <stream id=\"1\" file=\"a\" mode=\"0644\"/>\n"
                                   "</streams>\n");
        assert_at(m, 2);
        assert_word(m, "mode");
}

Test(options, unknown_element_is_refused_by_the_schema)
{
        const char *m = load_fails("<streams>\n"
                                   "  <stream id=\"1\" file=\"a\"/>\n"
                                   "  <client name=\"x\"/>\n"
                                   "</streams>\n");
        assert_at(m, 3);
        assert_word(m, "client");
}

Test(options, wrong_root_element_is_refused)
{
        const char *m = load_fails("<options>\n  <stream id=\"1\" file=\"a\"/>\n</options>\n");
        assert_at(m, 1);
        assert_has(m, "options");
}

Test(options, two_server_elements_are_refused)
{
        const char *m = load_fails("<streams>\n"
                                   "  <server name=\"/a\"/>\n"
                                   "  <server name=\"/b\"/>\n"
                                   "</streams>\n");
        assert_at(m, 3);
        assert_word(m, "server");
}

Test(options, unknown_transport_is_refused)
{
        const char *m = load_fails("<streams>\n  <server transport=\"carrier-pigeon\"/>\n"
                                   "</streams>\n");
        assert_at(m, 2);
        assert_word(m, "transport");
}

Test(options, text_inside_streams_is_refused)
{
        const char *m = load_fails("<streams>\n  hello\n  <stream id=\"1\" file=\"a\"/>\n"
                                   "</streams>\n");
        cr_assert(strncmp(m, g_dir, strlen(g_dir)) == 0, "message should start with the file: '%s'",
                  m);
}

static void bad_server_attr(const char *attr, const char *value)
{
        char text[512];
        snprintf(text, sizeof(text),
                 "<streams>\n"
                 "  <stream id=\"1\" file=\"a\"/>\n"
                 "  <server %s=\"%s\"/>\n"
                 "</streams>\n",
                 attr, value);
        const char *m = load_fails(text);
        assert_at(m, 3);
        char q[64];
        snprintf(q, sizeof(q), "'%s'", attr);
        assert_has(m, q);
}

Test(options, size_with_unknown_unit_is_refused)
{
        bad_server_attr("size", "12XB");
        assert_has(g_err, "12XB");
}

Test(options, size_below_one_mib_is_refused)
{
        bad_server_attr("size", "4KiB");
}

Test(options, size_with_fraction_is_refused)
{
        bad_server_attr("size", "1.5GiB");
}

Test(options, empty_size_is_refused)
{
        bad_server_attr("size", "");
}

Test(options, non_power_of_two_chunk_is_refused)
{
        bad_server_attr("chunk", "5000");
        assert_has(g_err, "power of two");
}

Test(options, chunk_outside_4k_to_1m_is_refused)
{
        bad_server_attr("chunk", "2MiB");
}

Test(options, chunk_below_4k_is_refused)
{
        bad_server_attr("chunk", "2048");
}

Test(options, non_power_of_two_ringdepth_is_refused)
{
        bad_server_attr("ringdepth", "100");
        assert_has(g_err, "power of two");
}

Test(options, tiny_ringdepth_is_refused)
{
        bad_server_attr("ringdepth", "2");
}

Test(options, non_octal_filemode_is_refused)
{
        bad_server_attr("filemode", "0999");
        assert_has(g_err, "0999");
}

Test(options, filemode_with_letters_is_refused)
{
        bad_server_attr("filemode", "rw-r--r--");
}

Test(options, filemode_with_special_bits_is_refused)
{
        bad_server_attr("filemode", "04755");
}

Test(options, empty_filemode_is_refused)
{
        bad_server_attr("filemode", "");
}

Test(options, bad_segment_mode_is_refused)
{
        bad_server_attr("mode", "0x600");
}

Test(options, negative_workers_is_refused)
{
        bad_server_attr("workers", "-1");
}

Test(options, zero_timeout_is_refused)
{
        bad_server_attr("timeout", "0");
}

Test(options, zero_spin_is_refused)
{
        bad_server_attr("spin", "0");
}

Test(options, segment_name_without_slash_is_refused)
{
        bad_server_attr("name", "engine");
}

Test(options, segment_name_with_inner_slash_is_refused)
{
        bad_server_attr("name", "/a/b");
}

Test(options, empty_outputpath_is_refused)
{
        bad_server_attr("outputpath", "");
}

/* ---- hostile input ------------------------------------------------------------------ */

static void assert_no_passwd(const eng_opts_t *o, int rc)
{
        cr_assert_null(strstr(g_err, "root:"), "/etc/passwd leaked into the message: '%s'", g_err);
        if (rc == 0) {
                cr_assert_null(strstr(o->outputpath, "root:"), "/etc/passwd inlined: '%s'",
                               o->outputpath);
                for (size_t i = 0; i < o->nstreams; i++)
                        cr_assert_null(strstr(o->streams[i].file, "root:"),
                                       "/etc/passwd inlined: '%s'", o->streams[i].file);
        }
}

Test(options, external_entity_in_an_attribute_is_not_inlined)
{
        const char *path = put("options.xml", "<?xml version=\"1.0\"?>\n"
                                              "<!DOCTYPE streams [\n"
                                              "  <!ENTITY e SYSTEM \"file:///etc/passwd\">\n"
                                              "]>\n"
                                              "<streams>\n"
                                              "  <server outputpath=\"&e;\"/>\n"
                                              "  <stream id=\"1\" file=\"&e;\"/>\n"
                                              "</streams>\n");
        eng_opts_t o;
        int rc = eng_opts_load(path, &o, g_err, sizeof(g_err));
        assert_no_passwd(&o, rc);
        if (rc == 0)
                eng_opts_free(&o);
        else
                cr_assert(strncmp(g_err, g_dir, strlen(g_dir)) == 0,
                          "message should start with the file: '%s'", g_err);
}

Test(options, external_entity_in_content_is_not_inlined)
{
        const char *path = put("options.xml", "<?xml version=\"1.0\"?>\n"
                                              "<!DOCTYPE streams [\n"
                                              "  <!ENTITY e SYSTEM \"file:///etc/passwd\">\n"
                                              "]>\n"
                                              "<streams>&e;<stream id=\"1\" file=\"a\"/>"
                                              "</streams>\n");
        eng_opts_t o;
        int rc = eng_opts_load(path, &o, g_err, sizeof(g_err));
        assert_no_passwd(&o, rc);
        if (rc == 0)
                eng_opts_free(&o);
}

Test(options, external_dtd_is_not_fetched)
{
        /* A DTD next to the file that would add a stream through a default attribute. */
        put("evil.dtd", "<!ATTLIST stream file CDATA \"/etc/passwd\">\n");
        const char *path = put("options.xml", "<?xml version=\"1.0\"?>\n"
                                              "<!DOCTYPE streams SYSTEM \"evil.dtd\">\n"
                                              "<streams><stream id=\"1\"/></streams>\n");
        eng_opts_t o;
        int rc = eng_opts_load(path, &o, g_err, sizeof(g_err));
        if (rc == 0) {
                cr_assert_str_neq(o.streams[0].file, "/etc/passwd");
                eng_opts_free(&o);
        }
}

Test(options, entity_expansion_bomb_is_refused_quickly, .timeout = 10)
{
        const char *path =
            put("options.xml",
                "<?xml version=\"1.0\"?>\n"
                "<!DOCTYPE streams [\n"
                "<!ENTITY a \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\">\n"
                "<!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">\n"
                "<!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">\n"
                "<!ENTITY d \"&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;\">\n"
                "<!ENTITY e \"&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;\">\n"
                "<!ENTITY f \"&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;\">\n"
                "<!ENTITY g \"&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;\">\n"
                "]>\n"
                "<streams><stream id=\"1\" file=\"&g;\"/></streams>\n");
        eng_opts_t o;
        int rc = eng_opts_load(path, &o, g_err, sizeof(g_err));
        if (rc == 0) {
                size_t n = strlen(o.streams[0].file);
                eng_opts_free(&o);
                cr_assert_lt(n, 1u << 20, "entities expanded to %zu bytes", n);
        }
}

Test(options, a_failed_load_leaves_nothing_to_free_and_a_good_one_follows)
{
        const char *bad = put("bad.xml", "<streams><stream id=\"0\" file=\"a\"/></streams>");
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(bad, &o, g_err, sizeof(g_err)), -1);
        eng_opts_free(&o); /* harmless after a failure */
        const char *good = put("good.xml", "<streams><stream id=\"1\" file=\"a\"/></streams>");
        cr_assert_eq(eng_opts_load(good, &o, g_err, sizeof(g_err)), 0, "%s", g_err);
        eng_opts_free(&o);
}

/* After a failure the caller has nothing to free: eng_opts_load cleans up on every path. */
Test(options, failed_load_holds_no_memory_on_any_path)
{
        char missing[PATH_MAX + 32], bad[2 * PATH_MAX], broken[2 * PATH_MAX];
        snprintf(missing, sizeof(missing), "%s/nope.xml", g_dir);
        snprintf(bad, sizeof(bad), "%s",
                 put("bad.xml", "<streams><stream id=\"0\" file=\"a\"/></streams>"));
        snprintf(broken, sizeof(broken), "%s", put("broken.xml", "<streams>"));
        const char *paths[] = {missing, g_dir /* a folder */, bad, broken};
        for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
                char p[2 * PATH_MAX];
                snprintf(p, sizeof(p), "%s", paths[i]);
                eng_opts_t o;
                cr_assert_eq(eng_opts_load(p, &o, g_err, sizeof(g_err)), -1, "%s loaded", p);
                cr_assert(o.path == NULL && o.name == NULL && o.outputpath == NULL &&
                              o.streams == NULL,
                          "%s: a failed load left allocations behind (path %p, name %p, "
                          "outputpath %p): they leak unless the caller frees them",
                          p, (void *)o.path, (void *)o.name, (void *)o.outputpath);
        }
}

Test(options, short_error_buffer_is_truncated_not_overrun)
{
        const char *path = put("options.xml", "<streams><stream id=\"0\" file=\"a\"/></streams>");
        char small[16];
        memset(small, 'Z', sizeof(small));
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(path, &o, small, 8), -1);
        cr_assert_eq(strlen(small), 7);
        cr_assert_eq(small[8], 'Z');
}

/* ---- eng_parse_size ----------------------------------------------------------------- */

TestSuite(parse_size, .timeout = 20);

struct size_case {
        const char *in;
        int rc;
        uint64_t want;
};

Test(parse_size, accepts_plain_numbers_and_binary_units)
{
        static const struct size_case cases[] = {
            {"0", 0, 0},
            {"4096", 0, 4096},
            {"1k", 0, 1024},
            {"1K", 0, 1024},
            {"256KiB", 0, 256u << 10},
            {"256kb", 0, 256u << 10},
            {"64MiB", 0, 64ull << 20},
            {"64M", 0, 64ull << 20},
            {"64MB", 0, 64ull << 20},
            {"1G", 0, 1ull << 30},
            {"3GiB", 0, 3ull << 30},
            {"18446744073709551615", 0, UINT64_MAX},
            {"17179869183G", 0, 17179869183ull << 30},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                uint64_t v = 12345;
                cr_assert_eq(eng_parse_size(cases[i].in, &v), 0, "'%s' refused", cases[i].in);
                cr_assert_eq(v, cases[i].want, "'%s' -> %llu, want %llu", cases[i].in,
                             (unsigned long long)v, (unsigned long long)cases[i].want);
        }
}

Test(parse_size, refuses_malformed_values_and_leaves_the_output_alone)
{
        static const char *const bad[] = {
            "",
            "12XB",
            "XB",
            "-1",
            "-0",
            "1.5G",
            "1 MiB",
            "1MiBs",
            "1Mi",
            "1KK",
            "1T",
            "0x10",
            "k",
            "18446744073709551616",
            "17179869184G",
            "1e3",
            "12 ",
            "1GiBB",
            "1iB",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                uint64_t v = 777;
                cr_assert_eq(eng_parse_size(bad[i], &v), -1, "'%s' accepted as %llu", bad[i],
                             (unsigned long long)v);
                cr_assert_eq(v, 777, "'%s' changed the output", bad[i]);
        }
}
