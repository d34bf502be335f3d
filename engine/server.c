/*
 * server.c - the server: start and stop, its table of streams (the private entry of every
 * record slot: watched processes, ending and finalising a stream, waking a client), and the
 * public eng_server_ and eng_sstream_ calls the hooks use. The worker pool is in worker.c, the
 * control thread (hand-out, reaping, healing, repair) in ctl.c; what they share is in
 * server_int.h.
 */
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "server_int.h"

uint32_t eng_sstream_id(const eng_sstream_t *s)
{
        return s->user_id;
}

pid_t eng_sstream_pid(const eng_sstream_t *s)
{
        return s->pid;
}

void **eng_sstream_user(eng_sstream_t *s)
{
        return &s->user;
}

/* workers = 0: one per CPU this process may run on, less one left to the clients (at least
 * one). A worker has work only when a client sends, so a worker per CPU oversubscribes the
 * machine exactly when it is busy: with 1,000 streams from one client on 2 CPUs the second
 * worker ran only by taking the client's CPU (64-B throughput 0.63-0.74x of one stream with two
 * workers, 0.95-1.02x with one; docs/ARCHITECTURE.md, "Scheduling and the worker pool"). */
static uint32_t default_workers(void)
{
        cpu_set_t set;
        long n = 0;
        if (sched_getaffinity(0, sizeof(set), &set) == 0)
                n = CPU_COUNT(&set);
        if (n <= 0)
                n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 1 ? (uint32_t)(n - 1) : 1;
}

uint32_t eng_server_workers(const eng_server_t *srv)
{
        return srv->nworkers;
}

bool eng_server_failed(const eng_server_t *srv)
{
        return eng_load_acquire_u32((uint32_t *)&srv->sg.broken) != 0;
}

int eng_sstream_loan(eng_sstream_t *s, uint32_t len, void **p, uint64_t *off)
{
        int rc = eng_arena_alloc(&s->srv->sg.arena, len, owner_of(s->idx), off);
        if (rc == -ENOMEM)
                return -EAGAIN;
        if (rc == -E2BIG)
                return eng_err_msgsize(len, eng_arena_max_alloc(&s->srv->sg.arena));
        if (rc == 0)
                *p = eng_arena_ptr(&s->srv->sg.arena, *off, len);
        return rc;
}

/* A worker's frees are batched and pushed back once per turn (drain); elsewhere (the control
 * thread, shutdown) they are immediate (srv_free, worker.c). */
void eng_sstream_free(eng_sstream_t *s, uint64_t off)
{
        if (off)
                srv_free(s->srv, off, SRV_CAP_UNKNOWN);
}

void srv_event(struct eng_server *srv, const char *fmt, ...)
{
        if (srv->cfg.hooks.on_event == NULL)
                return;
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        srv->cfg.hooks.on_event(msg, srv->cfg.hooks.ctx);
}

/* ---- watched processes ---------------------------------------------------------------- */

/* Watch pid (a verified claimer): share its entry or open a pidfd. 0, or -errno of
 * pidfd_open (ESRCH: it is gone; EMFILE/ENFILE: we cannot watch it). */
int srv_pw_acquire(struct eng_server *srv, pid_t pid, int32_t *slot)
{
        pthread_mutex_lock(&srv->pw_mu);
        int32_t free_slot = -1;
        for (uint32_t i = 0; i < srv->npw; i++) {
                if (srv->pw[i].refs != 0 && srv->pw[i].pid == pid) {
                        srv->pw[i].refs++;
                        *slot = (int32_t)i;
                        pthread_mutex_unlock(&srv->pw_mu);
                        return 0;
                }
                if (srv->pw[i].refs == 0 && free_slot < 0)
                        free_slot = (int32_t)i;
        }
        int fd = (int)syscall(SYS_pidfd_open, pid, 0);
        int rc = fd < 0 ? -errno : 0;
        /* Its death wakes the control thread (srv_watch_main): one shot, the reap closes it. */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = 1};
        if (rc == 0 && epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
                rc = -errno;
                close(fd);
        }
        if (rc == 0 && free_slot < 0) {
                if (srv->npw == srv->cappw) {
                        uint32_t cap = srv->cappw ? 2 * srv->cappw : 16;
                        struct pidwatch *p = realloc(srv->pw, cap * sizeof(*p));
                        if (p == NULL) {
                                close(fd);
                                rc = -ENOMEM;
                        } else {
                                srv->pw = p;
                                srv->cappw = cap;
                        }
                }
                if (rc == 0)
                        free_slot = (int32_t)srv->npw++;
        }
        if (rc == 0) {
                srv->pw[free_slot] = (struct pidwatch){.pid = pid, .pidfd = fd, .refs = 1};
                *slot = free_slot;
        }
        pthread_mutex_unlock(&srv->pw_mu);
        return rc;
}

void srv_pw_ref(struct eng_server *srv, int32_t slot)
{
        pthread_mutex_lock(&srv->pw_mu);
        srv->pw[slot].refs++;
        pthread_mutex_unlock(&srv->pw_mu);
}

void srv_pw_release(struct eng_server *srv, int32_t slot)
{
        if (slot < 0)
                return;
        pthread_mutex_lock(&srv->pw_mu);
        if (--srv->pw[slot].refs == 0) {
                close(srv->pw[slot].pidfd);
                srv->pw[slot].pidfd = -1;
                srv->pw[slot].pid = 0;
        }
        pthread_mutex_unlock(&srv->pw_mu);
}

/* ---- streams ------------------------------------------------------------------------ */

/* Send to the client: the channel's send (sequence numbered), and a note that this turn has
 * news for the client (the worker wakes its session at the end of the turn). */
static int push_out(eng_sstream_t *s, uint16_t cmd, uint64_t arg, uint64_t off, uint32_t len)
{
        if (!chan_send(&s->out, cmd, arg, off, len))
                return -EAGAIN;
        s->pushed = true;
        return 0;
}

int eng_sstream_send(eng_sstream_t *s, uint16_t cmd, uint64_t arg, uint64_t off, uint32_t len)
{
        if (cmd < ENG_CMD_SERVER_MIN || cmd > ENG_CMD_SERVER_MAX)
                return -EINVAL;
        if (s->ended)
                return -EPIPE;
        if (off != 0 && eng_arena_capacity(&s->srv->sg.arena, off) < len)
                return -EINVAL;
        return push_out(s, cmd, arg, off, len);
}

/* Wake the client of session record sr if it announced it is waiting. The full fence orders
 * our ring publications (stores) before the load of `waiting` (Dekker with
 * eng_client_ticket). */
static void wake_rec(struct eng_rec *sr)
{
        eng_fence_full();
        uint32_t w = eng_load_relaxed_u32(&sr->waiting);
        if (w != WAIT_NONE) {
                eng_faa_u32(&sr->wake, 1);
                /* Read SPIN? The client may have gone to SLEEP since, having read wake before
                 * our bump. Look again after the bump (a locked RMW: a full barrier): either we
                 * see SLEEP and wake it, or its SLEEP store came later and its fenced re-read of
                 * wake sees the bump. Without this it slept a whole 50 ms slice. */
                if (w == WAIT_SLEEP || eng_load_relaxed_u32(&sr->waiting) == WAIT_SLEEP)
                        eng_futex_wake(&sr->wake, INT32_MAX);
                /* The client yielded its CPU to us and waits runnable (same CPU): give it back
                 * now, so that the rest of our turn and our way to sleep are not on its path. */
                else if (w == WAIT_YIELD)
                        sched_yield();
        }
}

void srv_wake_session(struct eng_server *srv, eng_sstream_t *s)
{
        struct eng_rec *sr = seg_rec(&srv->sg, s->type == REC_SESSION ? s->idx : s->session);
        if (sr == NULL)
                return;
        /* Where we run, for the client's spin (client.c, spin_peer). Only here, for an
         * answer to a session we accepted: srv_wake_rec also wakes records still on offer,
         * whose words must stay as offered (the offer's snapshot). sched_getcpu reads the
         * rseq area (no system call); the line is the one whose `waiting` we read next. A
         * relaxed store: a hint, ordered by nothing (the client reads it after its answer). */
        uint32_t cpu = (uint32_t)sched_getcpu() + 1; /* 0: unknown (also on error) */
        if (eng_load_relaxed_u32(&sr->srv_cpu) != cpu)
                eng_store_relaxed_u32(&sr->srv_cpu, cpu);
        wake_rec(sr);
}

void srv_wake_rec(struct eng_server *srv, uint32_t idx)
{
        struct eng_rec *sr = seg_rec(&srv->sg, idx);
        if (sr != NULL)
                wake_rec(sr);
}

/* End the stream from our side: tell the client why (best effort: if its ring is full it
 * will still see state ENDED), tell the hooks once. */
void srv_end_stream(struct eng_server *srv, eng_sstream_t *s, int err)
{
        if (s->ended)
                return;
        /* why, then ended (release): a stream's worker that reads its session's ended with
         * acquire reads this err (worker.c, accept_stream) */
        srv_err_set(s, err);
        eng_store_release_u32(&s->ended, 1);
        if (s->known) {
                push_out(s, err == 0 ? CMD_S_CLOSE : CMD_S_ERROR, (uint64_t)(int64_t)-err, 0, 0);
                if (s->opened && srv->cfg.hooks.on_close)
                        srv->cfg.hooks.on_close(s, err, srv->cfg.hooks.ctx);
                s->opened = false;
        }
        eng_store_release_u32(&s->rec->state, ST_ENDED);
        eng_faa_u64(&srv->sg.hdr->ended, 1);
        srv_wake_session(srv, s);
}

/* The client is done with the record (FIN) or dead, or the claim was never real: give
 * everything back. Returns the number of buffer blocks the record's owner still held. */
int64_t srv_finalize(struct eng_server *srv, eng_sstream_t *s, int err)
{
        if (!s->ended) {
                eng_store_relaxed_u32(&s->ended, 1);
                if (s->opened && srv->cfg.hooks.on_close)
                        srv->cfg.hooks.on_close(s, err, srv->cfg.hooks.ctx);
                s->opened = false;
        }
        /*
         * What the stream still owns goes back. After an orderly close (the client's CLOSE,
         * our acknowledgement, its FIN, nothing after the CLOSE in its ring) an honest client
         * owns nothing: it drained our replies and gave its cached loans back before the FIN.
         * So only an abort, a death, a refusal or an end we decided walks the arena (a walk
         * reads every block header: O(arena), ~1 ms per 64 MiB). A client that closes in
         * order while holding loans has leaked them to itself; they come back at the next
         * arena check (repair_arena: at idle, or on evidence of starvation), or when the slot
         * is next finalised with a walk, since they keep the slot's owner id.
         */
        bool walk = !(err == 0 && s->clean_close && !chan_ready(&s->in));
        int64_t blocks = 0;
        if (walk) {
                blocks = eng_arena_reclaim(&srv->sg.arena, owner_of(s->idx));
                eng_faa_u64(&srv->sg.hdr->walks, 1);
        }
        srv_pw_release(srv, s->pw);
        s->pw = -1;
        s->live = false;
        eng_store_relaxed_u64(&s->taken_ns, 0);
        eng_store_release_u32(&s->known, 0);
        s->user = NULL;
        eng_faa_u32(&srv->finals, 1);
        if (eng_load_relaxed_u32(&srv->ctl_asleep))
                srv_ctl_nudge(srv->sg.hdr); /* for the arena check at idle */
        eng_faa_u64(&srv->sg.hdr->closes, 1);
        if (err == -ECONNABORTED)
                eng_faa_u64(&srv->sg.hdr->aborts, 1);
        eng_arena_rec_free(&srv->sg.arena, eng_arena_rec_offset(&srv->sg.arena, s->idx));
        return blocks > 0 ? blocks : 0;
}

/* Names for top -H, perf and /proc/PID/task/N/comm (15 characters at most). Best effort. */
static void thread_name(pthread_t t, const char *base, int n)
{
        char name[16];
        if (n >= 0)
                snprintf(name, sizeof(name), "%s%u", base, (unsigned)n % 1000u);
        else
                snprintf(name, sizeof(name), "%s", base);
        (void)pthread_setname_np(t, name);
}

int eng_server_start(const eng_server_cfg_t *cfg_in, eng_server_t **out)
{
        eng_server_t *srv = calloc(1, sizeof(*srv));
        if (srv == NULL)
                return -ENOMEM;
        srv->cfg = *cfg_in;
        eng_server_cfg_t *cfg = &srv->cfg;
        if (cfg->name == NULL)
                cfg->name = "/engine-default";
        if (cfg->size == 0)
                cfg->size = 64ull << 20;
        if (cfg->mode == 0)
                cfg->mode = 0600;
        if (cfg->transport == 0)
                cfg->transport = ENG_TRANSPORT_LOCKFREE;
        if (cfg->workers == 0)
                cfg->workers = default_workers();
        if (cfg->ring_depth == 0)
                cfg->ring_depth = 128;
        if (cfg->spin == 0)
                cfg->spin = 4096;
        if (cfg->min_block_shift == 0)
                cfg->min_block_shift = 7;
        if (cfg->max_block_shift == 0)
                cfg->max_block_shift = 20;
        pthread_mutex_init(&srv->boot_mu, NULL);
        pthread_mutex_init(&srv->pw_mu, NULL);
        srv->epfd = epoll_create1(EPOLL_CLOEXEC);
        srv->stopfd = eventfd(0, EFD_CLOEXEC);
        struct epoll_event sev = {.events = EPOLLIN, .data.u64 = 0};
        if (srv->epfd < 0 || srv->stopfd < 0 ||
            epoll_ctl(srv->epfd, EPOLL_CTL_ADD, srv->stopfd, &sev) != 0) {
                int e = errno;
                eng_set_err("cannot watch client processes: %s", strerror(e));
                if (srv->epfd >= 0)
                        close(srv->epfd);
                if (srv->stopfd >= 0)
                        close(srv->stopfd);
                free(srv);
                return -e;
        }
        int rc =
            seg_create(&srv->sg, cfg->name, cfg->size, cfg->mode, cfg->transport, cfg->ring_depth,
                       cfg->max_streams, cfg->min_block_shift, cfg->max_block_shift);
        if (rc != 0) {
                close(srv->epfd);
                close(srv->stopfd);
                free(srv);
                return rc;
        }
        srv->hstate = SRV_STARTING;
        srv->ntab = srv->sg.max_streams;
        srv->asym = srv->sg.line0.asym == 1;
        srv->tab = calloc(srv->ntab, sizeof(*srv->tab));
        srv->workers = calloc(cfg->workers, sizeof(pthread_t));
        if (srv->tab == NULL || srv->workers == NULL) {
                rc = -ENOMEM;
                goto fail;
        }
        for (uint32_t i = 0; i < srv->ntab; i++)
                srv->tab[i].pw = -1;
        if (srv->sg.evicted_uid != (uid_t)-1)
                srv_event(srv,
                          "removed %s, which uid %u had created under our name: new clients "
                          "attach to this server",
                          cfg->name, (unsigned)srv->sg.evicted_uid);
        if (srv_offers_refill(srv) == 0) {
                rc = -ENOMEM;
                eng_set_err("segment too small for a single stream record");
                goto fail;
        }
        for (uint32_t i = 0; i < cfg->workers; i++) {
                if ((rc = -pthread_create(&srv->workers[i], NULL, srv_worker_main, srv)) != 0)
                        goto fail_threads;
                srv->nworkers++;
                thread_name(srv->workers[i], "eng-worker", (int)i);
        }
        if ((rc = -pthread_create(&srv->ctl, NULL, srv_ctl_main, srv)) != 0)
                goto fail_threads;
        thread_name(srv->ctl, "eng-ctl", -1);
        if ((rc = -pthread_create(&srv->watch, NULL, srv_watch_main, srv)) != 0) {
                eng_store_relaxed_u32(&srv->stop, 1);
                srv_ctl_nudge(srv->sg.hdr);
                pthread_join(srv->ctl, NULL);
                goto fail_threads;
        }
        thread_name(srv->watch, "eng-watch", -1);
        srv->watch_started = true;
        /* Facts for tools, before READY is published (internal.h: written once). */
        eng_store_relaxed_u64(&srv->sg.hdr->started_ns, eng_now_ns());
        eng_store_relaxed_u32(&srv->sg.hdr->workers, srv->nworkers);
        eng_store_relaxed_u32(&srv->sg.hdr->spin, srv->cfg.spin);
        eng_store_release_u32(&srv->hstate, SRV_READY);
        eng_store_release_u32(&srv->sg.hdr->state, SRV_READY);
        *out = srv;
        return 0;
fail_threads:
        eng_store_relaxed_u32(&srv->stop, 1);
        eng_faa_u32(&srv->sg.hdr->srv_wake, 1);
        eng_futex_wake(&srv->sg.hdr->srv_wake, INT32_MAX);
        for (uint32_t i = 0; i < srv->nworkers; i++)
                pthread_join(srv->workers[i], NULL);
        eng_set_err("cannot start server threads: %s", strerror(-rc));
fail:
        shm_unlink(srv->sg.name);
        seg_unmap(&srv->sg);
        close(srv->epfd);
        close(srv->stopfd);
        free(srv->tab);
        free(srv->workers);
        free(srv);
        return rc;
}

static void offers_withdraw(struct eng_server *srv)
{
        for (uint32_t k = 0; k < SEG_OFFERS; k++)
                eng_store_release_u32(&srv->sg.hdr->offers[k].state,
                                      offer_word_next(srv->offers[k].word, OFFER_NONE));
}

void eng_server_stop(eng_server_t *srv)
{
        if (srv == NULL)
                return;
        struct eng_seg *sg = &srv->sg;
        eng_store_release_u32(&srv->hstate, SRV_STOPPING);
        eng_store_release_u32(&sg->hdr->state, SRV_STOPPING);
        /* Withdraw the offers: nobody may claim a record that no worker will serve (a claim
         * already under way ends in a record the stop below ends). The control thread no
         * longer refills once it sees hstate; withdrawn again once it is joined. */
        offers_withdraw(srv);
        eng_store_relaxed_u32(&srv->stop, 1);
        eng_faa_u32(&sg->hdr->srv_wake, 1);
        eng_futex_wake(&sg->hdr->srv_wake, INT32_MAX);
        eng_faa_u32(&sg->hdr->ctl_wake, 1);
        eng_futex_wake(&sg->hdr->ctl_wake, INT32_MAX);
        uint64_t one = 1;
        if (write(srv->stopfd, &one, sizeof(one)) < 0) {
                /* an eventfd write fails only on overflow: it is readable then anyway */
        }
        for (uint32_t i = 0; i < srv->nworkers; i++)
                pthread_join(srv->workers[i], NULL);
        pthread_join(srv->ctl, NULL);
        offers_withdraw(srv);
        if (srv->watch_started)
                pthread_join(srv->watch, NULL);
        /* Workers are gone: end what is still open so every client learns it (-EPIPE). */
        for (uint32_t i = 0; i < srv->ntab; i++) {
                eng_sstream_t *s = &srv->tab[i];
                if (s->live && s->known && !s->ended)
                        srv_end_stream(srv, s, -ESHUTDOWN);
        }
        for (uint32_t i = 0; i < srv->npw; i++)
                if (srv->pw[i].refs != 0)
                        close(srv->pw[i].pidfd);
        eng_store_release_u32(&srv->hstate, SRV_STOPPED);
        eng_store_release_u32(&sg->hdr->state, SRV_STOPPED);
        eng_faa_u32(&sg->hdr->boot_wake, 1);
        eng_futex_wake(&sg->hdr->boot_wake, INT32_MAX);
        shm_unlink(sg->name);
        seg_unmap(sg);
        pthread_mutex_destroy(&srv->boot_mu);
        pthread_mutex_destroy(&srv->pw_mu);
        close(srv->epfd);
        close(srv->stopfd);
        free(srv->pw);
        free(srv->tab);
        free(srv->workers);
        free(srv);
}
