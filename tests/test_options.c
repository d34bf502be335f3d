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
#include <pwd.h>
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

/* Load path and expect failure; returns the message. */
static const char *load_fails_at(const char *path)
{
        eng_opts_t o;
        int rc = eng_opts_load(path, &o, g_err, sizeof(g_err));
        if (rc == 0)
                eng_opts_free(&o);
        cr_assert_eq(rc, -1, "expected %s to be refused", path);
        cr_assert(g_err[0] != '\0', "no error message for %s", path);
        return g_err;
}

/* Load text as g_dir/options.xml and expect failure; returns the message. */
static const char *load_fails(const char *text)
{
        const char *path = put("options.xml", text);
        eng_opts_t o;
        int rc = eng_opts_load(path, &o, g_err, sizeof(g_err));
        if (rc == 0)
                eng_opts_free(&o);
        cr_assert_eq(rc, -1, "expected the options to be refused:\n%.300s", text);
        cr_assert(g_err[0] != '\0', "no error message for:\n%.300s", text);
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

/* ---- <server owner> ----------------------------------------------------------------- */

static uid_t owner_of(const char *value)
{
        char text[512];
        snprintf(text, sizeof(text), "<streams>\n  <server owner=\"%s\"/>\n</streams>\n", value);
        const char *path = put("options.xml", text);
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(path, &o, g_err, sizeof(g_err)), 0, "owner=\"%s\": %s", value,
                     g_err);
        uid_t uid = o.owner_uid;
        eng_opts_free(&o);
        return uid;
}

Test(options, owner_is_absent_by_default)
{
        const char *path = put("options.xml", "<streams><server name=\"/t-o\"/></streams>\n");
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(path, &o, g_err, sizeof(g_err)), 0, "%s", g_err);
        cr_assert_eq(o.owner_uid, (uid_t)-1, "owner_uid %lu", (unsigned long)o.owner_uid);
        eng_opts_free(&o);
}

Test(options, owner_by_name_is_resolved)
{
        cr_assert_eq(owner_of("root"), 0);
        struct passwd *pw = getpwnam("nobody"); /* a user whose uid is not 0, where there is one */
        if (pw != NULL)
                cr_assert_eq(owner_of("nobody"), pw->pw_uid);
}

Test(options, owner_by_number_is_taken_as_it_is)
{
        cr_assert_eq(owner_of("0"), 0);
        cr_assert_eq(owner_of("1234"), 1234); /* no passwd entry needed */
        cr_assert_eq(owner_of("4294967294"), 4294967294u);
}

Test(options, owner_that_is_no_user_is_refused)
{
        bad_server_attr("owner", "no-such-user-eng-opts");
        assert_has(g_err, "no-such-user-eng-opts");
        assert_has(g_err, "no user");
}

Test(options, empty_owner_is_refused)
{
        bad_server_attr("owner", "");
        assert_has(g_err, "empty");
}

Test(options, negative_owner_is_refused)
{
        bad_server_attr("owner", "-1");
        assert_has(g_err, "'-1'");
        assert_has(g_err, "uid");
}

Test(options, owner_beyond_the_uid_range_is_refused)
{
        bad_server_attr("owner", "4294967295"); /* (uid_t)-1 means "no owner" */
        assert_has(g_err, "'4294967295'");
        bad_server_attr("owner", "99999999999999999999");
        assert_has(g_err, "'99999999999999999999'");
        bad_server_attr("owner", "+5");
        assert_has(g_err, "'+5'");
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

/* An options file has no use for a DTD: any <!DOCTYPE> is refused, naming the file and the line
 * it starts on, before its internal subset is read. */
static void assert_dtd_refused(const char *text, int line)
{
        const char *m = load_fails(text);
        assert_at(m, line);
        assert_has(m, "a DTD (<!DOCTYPE>) is not allowed in an options file");
        cr_assert_null(strstr(m, "root:"), "/etc/passwd leaked into the message: '%s'", m);
}

Test(options, internal_subset_with_entities_is_refused)
{
        assert_dtd_refused("<?xml version=\"1.0\"?>\n"
                           "<!DOCTYPE streams [\n"
                           "  <!ENTITY dir \"out\">\n"
                           "  <!ENTITY f \"a.bin\">\n"
                           "]>\n"
                           "<streams>\n"
                           "  <server outputpath=\"&dir;/&dir;/&dir;\"/>\n"
                           "  <stream id=\"1\" file=\"&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;\"/>\n"
                           "</streams>\n",
                           2);
}

/* One 100 kB entity referenced 2000 times in an attribute: under libxml2's nesting checks,
 * 200 MB of text. Before DTDs were refused it loaded, in ~14 s and ~400 MB. */
Test(options, flat_entity_amplification_is_refused)
{
        size_t big = 100000, refs = 2000;
        char *text = malloc(big + 4 * refs + 512);
        cr_assert_not_null(text);
        char *p = text + sprintf(text, "<?xml version=\"1.0\"?>\n<!DOCTYPE streams [\n"
                                       "<!ENTITY a \"");
        memset(p, 'a', big);
        p += big;
        p += sprintf(p, "\">\n]>\n<streams>\n<stream id=\"1\" file=\"");
        for (size_t i = 0; i < refs; i++)
                p += sprintf(p, "&a;");
        sprintf(p, "\"/>\n</streams>\n");
        assert_dtd_refused(text, 2);
        free(text);
}

Test(options, external_subset_is_refused)
{
        assert_dtd_refused("<?xml version=\"1.0\"?>\n"
                           "<!DOCTYPE streams SYSTEM \"file:///etc/passwd\">\n"
                           "<streams><stream id=\"1\" file=\"a\"/></streams>\n",
                           2);
}

Test(options, bare_doctype_is_refused)
{
        assert_dtd_refused("<?xml version=\"1.0\"?>\n"
                           "<!DOCTYPE streams>\n"
                           "<streams><stream id=\"1\" file=\"a\"/></streams>\n",
                           2);
}

Test(options, public_doctype_is_refused)
{
        assert_dtd_refused("<!DOCTYPE streams PUBLIC \"-//eng//options//EN\"\n"
                           "  \"http://example.invalid/options.dtd\">\n"
                           "<streams/>\n",
                           1);
}

Test(options, doctype_without_a_name_is_refused_as_a_dtd)
{
        assert_dtd_refused("\n<!DOCTYPE [ <!ENTITY a \"x\"> ]>\n<streams>&a;</streams>\n", 2);
}

Test(options, doctype_over_several_lines_is_reported_on_its_first)
{
        assert_dtd_refused("<?xml version=\"1.0\"?>\n"
                           "<!-- a comment\n"
                           "     over two lines -->\n"
                           "<!DOCTYPE\n"
                           "   streams\n"
                           "   SYSTEM \"options.dtd\">\n"
                           "<streams/>\n",
                           4);
}

Test(options, doctype_inside_a_comment_is_only_a_comment)
{
        const char *path = put("options.xml", "<?xml version=\"1.0\"?>\n"
                                              "<!-- <!DOCTYPE streams [ <!ENTITY a \"x\"> ]> -->\n"
                                              "<streams><stream id=\"1\" file=\"a\"/></streams>\n");
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(path, &o, g_err, sizeof(g_err)), 0, "%s", g_err);
        eng_opts_free(&o);
}

/* An options file of more than ENG_OPTS_MAX_FILE bytes is refused before it is read. */
Test(options, options_file_over_64_mib_is_refused)
{
        const char *path = put("options.xml", "<streams/>");
        cr_assert_eq(truncate(path, (off_t)ENG_OPTS_MAX_FILE + 1), 0, "%s", strerror(errno));
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(path, &o, g_err, sizeof(g_err)), -1);
        assert_has(g_err, path);
        assert_has(g_err, "64 MiB");
}

Test(options, options_file_of_exactly_64_mib_loads)
{
        /* a stream, then 1 KiB comment lines up to the limit (a realistic big file would be
         * some two million streams: too slow for a unit test) */
        const char *path = put("options.xml", "<streams><stream id=\"1\" file=\"a\"/>\n");
        FILE *f = fopen(path, "a");
        cr_assert_not_null(f);
        static char line[1024];
        memset(line, 'x', sizeof(line));
        memcpy(line, "<!--", 4);
        memcpy(line + sizeof(line) - 4, "-->\n", 4);
        const char *tail = "</streams>\n";
        size_t left = ENG_OPTS_MAX_FILE - (size_t)ftell(f) - strlen(tail);
        while (left >= sizeof(line)) {
                cr_assert_eq(fwrite(line, 1, sizeof(line), f), sizeof(line));
                left -= sizeof(line);
        }
        for (; left > 0; left--)
                cr_assert_eq(fputc('\n', f), '\n');
        fputs(tail, f);
        cr_assert_eq(ftell(f), (long)ENG_OPTS_MAX_FILE);
        cr_assert_eq(fclose(f), 0);
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(path, &o, g_err, sizeof(g_err)), 0, "%s", g_err);
        cr_assert_eq(o.nstreams, 1);
        eng_opts_free(&o);
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

/* ---- many streams ------------------------------------------------------------------ */

#define MANY 100000

/* The id of the i-th stream of the generated file: a permutation of 1..MANY (7919 is a prime
 * that does not divide MANY), so the file is not sorted by id. */
static uint32_t many_id(size_t i)
{
        return (uint32_t)((i * 7919) % MANY + 1);
}

/* MANY streams, one a line from line 2 (past libxml2's 16-bit line numbers), then extra. */
static const char *put_many(const char *extra)
{
        size_t cap = (size_t)MANY * 48 + strlen(extra) + 64;
        char *text = malloc(cap);
        cr_assert_not_null(text);
        char *p = text + sprintf(text, "<streams>\n");
        for (size_t i = 0; i < MANY; i++)
                p += sprintf(p, "<stream id=\"%u\" file=\"f%zu\"/>\n", many_id(i), i);
        sprintf(p, "%s</streams>\n", extra);
        const char *path = put("options.xml", text);
        free(text);
        return path;
}

Test(options, a_hundred_thousand_streams_load_and_are_all_found)
{
        const char *path = put_many("");
        eng_opts_t o;
        cr_assert_eq(eng_opts_load(path, &o, g_err, sizeof(g_err)), 0, "%s", g_err);
        cr_assert_eq(o.nstreams, MANY);
        char want[PATH_MAX + 32];
        for (size_t i = 0; i < MANY; i++) {
                uint32_t id = many_id(i);
                const eng_opts_stream_t *s = eng_opts_find(&o, id);
                if (s == NULL)
                        cr_assert_fail("stream id %u (line %zu) not found", id, i + 2);
                snprintf(want, sizeof(want), "%s/f%zu", g_dir, i);
                if (s->id != id || s->line != (int)(i + 2) || strcmp(s->file, want) != 0)
                        cr_assert_fail("stream id %u: found id %u, line %d, file %s; want line "
                                       "%zu, file %s",
                                       id, s->id, s->line, s->file, i + 2, want);
                if (o.streams[i].id != id) /* streams[] stays in file order */
                        cr_assert_fail("streams[%zu] has id %u, want %u", i, o.streams[i].id, id);
        }
        cr_assert_null(eng_opts_find(&o, 0));
        cr_assert_null(eng_opts_find(&o, MANY + 1));
        cr_assert_null(eng_opts_find(&o, UINT32_MAX));
        eng_opts_free(&o);
}

Test(options, a_repeated_id_after_a_hundred_thousand_streams_names_both_lines)
{
        /* the 6th stream (line 7) has id many_id(5); the repeat is on line MANY + 2 */
        char extra[128];
        snprintf(extra, sizeof(extra), "<stream id=\"%u\" file=\"again\"/>\n", many_id(5));
        const char *m = load_fails_at(put_many(extra));
        assert_at(m, MANY + 2);
        assert_has(m, "'id'");
        char id[64];
        snprintf(id, sizeof(id), "stream id %u is already used on line 7", many_id(5));
        assert_has(m, id);
}

Test(options, the_first_repeated_id_in_the_file_is_the_one_reported)
{
        const char *m = load_fails("<streams>\n"
                                   "  <stream id=\"9\" file=\"a\"/>\n"
                                   "  <stream id=\"3\" file=\"b\"/>\n"
                                   "  <stream id=\"3\" file=\"c\"/>\n"
                                   "  <stream id=\"9\" file=\"d\"/>\n"
                                   "  <stream id=\"3\" file=\"e\"/>\n"
                                   "</streams>\n");
        assert_at(m, 4);
        assert_has(m, "stream id 3 is already used on line 3");
}

Test(options, a_repeated_id_comes_before_a_later_fault)
{
        const char *m = load_fails("<streams>\n"
                                   "  <stream id=\"4\" file=\"a\"/>\n"
                                   "  <stream id=\"4\" file=\"\"/>\n"
                                   "  <stream id=\"0\" file=\"c\"/>\n"
                                   "</streams>\n");
        assert_at(m, 3);
        assert_has(m, "stream id 4 is already used on line 2");
}

Test(options, a_schema_fault_past_line_65535_names_its_line)
{
        char extra[128];
        snprintf(extra, sizeof(extra),
                 "<stream id=\"%u\" file=\"a\" x:id=\"2\" xmlns:x=\"urn:x\"/>\n", MANY + 1);
        const char *m = load_fails_at(put_many(extra));
        assert_at(m, MANY + 2);
        assert_word(m, "id");
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

Test(parse_size, refuses_values_that_overflow_or_wrap)
{
        static const char *const bad[] = {
            "18446744073709551616",  /* 2^64 */
            "99999999999999999999",  /* strtoull: ERANGE */
            "99999999999999999999K", /* ERANGE before the unit */
            "18014398509481984K",    /* 2^54 KiB = 2^64 */
            "17592186044416M",       /* 2^44 MiB = 2^64 */
            "17179869185G",          /* 2^34 + 1 GiB: wrapped to 1 GiB in engine-bench once */
            "18446744073709551615K", /* UINT64_MAX KiB */
            " -1",                   /* strtoull skips the space and negates: 2^64 - 1 */
            "\t-1",
            "-18446744073709551615", /* negated into 1 */
            "+1",
            " 1",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                uint64_t v = 777;
                cr_assert_eq(eng_parse_size(bad[i], &v), -1, "'%s' accepted as %llu", bad[i],
                             (unsigned long long)v);
                cr_assert_eq(v, 777, "'%s' changed the output", bad[i]);
        }
        /* the largest of each unit still fits */
        static const struct size_case edge[] = {
            {"18014398509481983K", 0, 18014398509481983ull << 10},
            {"17592186044415M", 0, 17592186044415ull << 20},
        };
        for (size_t i = 0; i < sizeof(edge) / sizeof(edge[0]); i++) {
                uint64_t v = 0;
                cr_assert_eq(eng_parse_size(edge[i].in, &v), 0, "'%s' refused", edge[i].in);
                cr_assert_eq(v, edge[i].want, "'%s' -> %llu", edge[i].in, (unsigned long long)v);
        }
}

/* ---- eng_parse_u32 (the programs' numeric options) ------------------------------------ */

Test(parse_size, u32_takes_whole_numbers_in_range_and_nothing_else)
{
        uint32_t v = 7;
        cr_assert_eq(eng_parse_u32("0", 0, 10, &v), 0);
        cr_assert_eq(v, 0);
        cr_assert_eq(eng_parse_u32("4294967295", 0, UINT32_MAX, &v), 0);
        cr_assert_eq(v, UINT32_MAX);
        const char *bad[] = {"",
                             " 1",
                             "+1",
                             "-1",
                             "1 ",
                             "1x",
                             "0x10",
                             "11",
                             "4294967296",
                             "18446744073709551617",
                             "99999999999999999999999"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                v = 7;
                cr_assert_eq(eng_parse_u32(bad[i], 0, i == 7 ? 10 : UINT32_MAX, &v), -1,
                             "'%s' accepted", bad[i]);
                cr_assert_eq(v, 7, "'%s' changed the output", bad[i]);
        }
        cr_assert_eq(eng_parse_u32("5", 6, 10, &v), -1, "below lo");
}
