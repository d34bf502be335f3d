/*
 * boost_mq.h - a C view of Boost.Interprocess message_queue (boost_mq.cpp), for the
 * reference rows of engine-bench. Built only with ENG_BENCH_BOOST.
 *
 * Names are Boost's (no leading slash). Every call catches Boost's exceptions: 0 / 1 on
 * success as documented, -1 on any failure.
 */
#ifndef EB_BOOST_MQ_H
#define EB_BOOST_MQ_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct eb_bmq eb_bmq_t;

/* Create (replacing a stale one) a queue of max_msgs messages of up to msg_size bytes. */
int eb_bmq_create(const char *name, size_t max_msgs, size_t msg_size);
void eb_bmq_remove(const char *name);
eb_bmq_t *eb_bmq_open(const char *name);
void eb_bmq_close(eb_bmq_t *q);
/* Blocking send / receive: 0 on success. */
int eb_bmq_send(eb_bmq_t *q, const void *p, size_t n);
int eb_bmq_receive(eb_bmq_t *q, void *p, size_t cap, size_t *got);
/* Non-blocking: 1 done, 0 full/empty, -1 error. */
int eb_bmq_try_send(eb_bmq_t *q, const void *p, size_t n);
int eb_bmq_try_receive(eb_bmq_t *q, void *p, size_t cap, size_t *got);

#ifdef __cplusplus
}
#endif

#endif
