/*
 * engine-bridge: streams between hosts over NNG (docs/BRIDGE.md). One process per host, its
 * role set by the <bridge> element of options.xml:
 *   connect="tcp://host:port"  the sending host: serves the segment (<bridge segment>, else
 *                              the <server> name) to unchanged engine-client processes and
 *                              forwards their streams (bridge_serve.c);
 *   listen="tcp://addr:port"   the receiving host: takes the streams of a sending bridge and
 *                              replays them as a client of the engine-server on the segment
 *                              (bridge_deliver.c).
 * Runs until SIGINT, SIGTERM or SIGHUP.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <nng/nng.h>

#include "bridge.h"

static volatile int stop_sig;

static void *signals(void *arg)
{
        sigset_t *set = arg;
        int sig = 0;
        if (sigwait(set, &sig) == 0)
                stop_sig = sig;
        return NULL;
}

/* The receiving role starts afresh (re-executes itself, same pid and arguments) when NNG
 * stopped releasing closed connections (BR_EXIT_WEDGED, bridge_deliver.c). A listen address
 * with port 0 keeps the port it got: the sending bridge dials that one. */
#define RELISTEN_ENV "ENGINE_BRIDGE_RELISTEN_PORT"

static char *relisten_url(const char *url, int port)
{
        size_t n = strlen(url);
        if (port <= 0 || n < 2 || strcmp(url + n - 2, ":0") != 0)
                return NULL;
        char *u = malloc(n + 8);
        if (u != NULL)
                snprintf(u, n + 8, "%.*s:%d", (int)(n - 2), url, port);
        return u;
}

static void start_afresh(char **argv, int port)
{
        char p[16];
        snprintf(p, sizeof(p), "%d", port);
        setenv(RELISTEN_ENV, p, 1);
        /* Nothing of this process may outlive it: NNG's listening socket above all (the new
         * image listens on the same port). */
        if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0) {
                long max = sysconf(_SC_OPEN_MAX);
                for (long fd = 3; fd < (max > 0 && max < 65536 ? max : 65536); fd++)
                        close((int)fd);
        }
        execv("/proc/self/exe", argv);
        eng_log(ENG_LOG_ERROR, NULL, "cannot start afresh (%s): stopping", strerror(errno));
}

static void usage(FILE *f)
{
        fprintf(f, "usage: engine-bridge [-c FILE]\n"
                   "\n"
                   "Carry engine streams between two hosts over TCP (NNG). Its role comes from\n"
                   "the <bridge> element of the options file:\n"
                   "  <bridge connect=\"tcp://HOST:PORT\"/>  sending host: serves the segment to\n"
                   "        local engine-client processes and forwards their files;\n"
                   "  <bridge listen=\"tcp://ADDR:PORT\"/>   receiving host: delivers them to the\n"
                   "        engine-server of the segment there.\n"
                   "Files arrive by the same rules as locally: verified against the sender's\n"
                   "XXH3 before their final name, failures reported to the sending client.\n"
                   "\n"
                   "  -c, --config FILE  options file (default ./options.xml)\n"
                   "  -h, --help         this text\n"
                   "  -V, --version      version\n"
                   "\n"
                   "Stops on SIGINT, SIGTERM or SIGHUP. Exit status 0 after a clean stop, 1 if it\n"
                   "cannot serve, 2 on bad usage or options.\n");
}

int main(int argc, char **argv)
{
        const char *config = "options.xml";
        eng_log_init("engine-bridge");
        static const struct option lo[] = {{"config", required_argument, NULL, 'c'},
                                           {"help", no_argument, NULL, 'h'},
                                           {"version", no_argument, NULL, 'V'},
                                           {NULL, 0, NULL, 0}};
        int ch;
        while ((ch = getopt_long(argc, argv, "c:hV", lo, NULL)) != -1) {
                switch (ch) {
                case 'c':
                        config = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        /* The first line as every program of the package says it (the
                         * install test holds them to it); the messaging library's after. */
                        printf("engine-bridge (shmengine) %s\nNNG %s\n", eng_version(),
                               nng_version());
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "engine-bridge: unexpected argument '%s'\n", argv[optind]);
                usage(stderr);
                return 2;
        }
        char err[1024];
        eng_opts_t o;
        if (eng_opts_load(config, &o, err, sizeof(err)) != 0) {
                fprintf(stderr, "engine-bridge: %s\n", err);
                return 2;
        }
        if (o.bridge.line == 0) {
                fprintf(stderr,
                        "engine-bridge: %s has no <bridge> element (listen=\"tcp://ADDR:PORT\" "
                        "on the receiving host, connect=\"tcp://HOST:PORT\" on the sending one)\n",
                        config);
                eng_opts_free(&o);
                return 2;
        }
        /* Signals go to one thread (every other thread, the engine's and NNG's, inherits the
         * mask); the roles look at stop_sig between waits. */
        static sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGHUP);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        signal(SIGPIPE, SIG_IGN);
        pthread_t th;
        if (pthread_create(&th, NULL, signals, &set) != 0) {
                eng_log(ENG_LOG_ERROR, NULL, "cannot start the signal thread");
                eng_opts_free(&o);
                return 1;
        }
        pthread_detach(th);
        char *relisten = NULL, *listen = o.bridge.listen;
        const char *env = getenv(RELISTEN_ENV);
        if (env != NULL && listen != NULL && (relisten = relisten_url(listen, atoi(env))) != NULL)
                o.bridge.listen = relisten;
        unsetenv(RELISTEN_ENV);
        int port = 0;
        int rc =
            o.bridge.connect ? br_serve_run(&o, &stop_sig) : br_deliver_run(&o, &stop_sig, &port);
        if (rc == BR_EXIT_WEDGED && !stop_sig)
                start_afresh(argv, port); /* returns only if it could not */
        if (rc == BR_EXIT_WEDGED)
                return 1; /* NNG cannot be shut down cleanly: its reaper is stuck */
        o.bridge.listen = listen;
        eng_opts_free(&o);
        free(relisten);
        nng_fini(); /* NNG's own threads and memory: nothing left for a leak checker */
        return rc;
}
