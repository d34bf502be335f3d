/*
 * boost_mq.cpp - Boost.Interprocess message_queue behind a C interface (boost_mq.h).
 * message_queue is a bounded queue in shared memory guarded by a process-shared mutex and
 * condition variables: the textbook locked design, a natural outside reference for the
 * engine's mutex baseline and its lock-free transport.
 */
#include <boost/interprocess/ipc/message_queue.hpp>
#include <new>

#include "boost_mq.h"

namespace bip = boost::interprocess;

struct eb_bmq {
        bip::message_queue q;
        explicit eb_bmq(const char *name) : q(bip::open_only, name) {}
};

extern "C" int eb_bmq_create(const char *name, size_t max_msgs, size_t msg_size)
{
        try {
                bip::message_queue::remove(name);
                bip::message_queue q(bip::create_only, name, max_msgs, msg_size);
                return 0;
        } catch (...) {
                return -1;
        }
}

extern "C" void eb_bmq_remove(const char *name)
{
        try {
                bip::message_queue::remove(name);
        } catch (...) {
        }
}

extern "C" eb_bmq_t *eb_bmq_open(const char *name)
{
        try {
                return new eb_bmq(name);
        } catch (...) {
                return nullptr;
        }
}

extern "C" void eb_bmq_close(eb_bmq_t *q)
{
        delete q;
}

extern "C" int eb_bmq_send(eb_bmq_t *q, const void *p, size_t n)
{
        try {
                q->q.send(p, n, 0);
                return 0;
        } catch (...) {
                return -1;
        }
}

extern "C" int eb_bmq_receive(eb_bmq_t *q, void *p, size_t cap, size_t *got)
{
        try {
                unsigned int prio;
                bip::message_queue::size_type g = 0;
                q->q.receive(p, cap, g, prio);
                *got = g;
                return 0;
        } catch (...) {
                return -1;
        }
}

extern "C" int eb_bmq_try_send(eb_bmq_t *q, const void *p, size_t n)
{
        try {
                return q->q.try_send(p, n, 0) ? 1 : 0;
        } catch (...) {
                return -1;
        }
}

extern "C" int eb_bmq_try_receive(eb_bmq_t *q, void *p, size_t cap, size_t *got)
{
        try {
                unsigned int prio;
                bip::message_queue::size_type g = 0;
                bool ok = q->q.try_receive(p, cap, g, prio);
                *got = g;
                return ok ? 1 : 0;
        } catch (...) {
                return -1;
        }
}
