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
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        int rc = o.bridge.connect ? br_serve_run(&o, &stop_sig) : br_deliver_run(&o, &stop_sig);
        eng_opts_free(&o);
        nng_fini(); /* NNG's own threads and memory: nothing left for a leak checker */
        return rc;
}
