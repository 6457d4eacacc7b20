/* pcsite_lite._fastio: batched packet I/O for the site worker and the load generator.
 *
 * Python has no recvmmsg/sendmmsg, and a Python loop of os.read() pays an interpreter round
 * trip (and an exception on EAGAIN) per packet. These functions move that loop into C; they
 * do no packet processing. Every function is bounded (at most MAX_BATCH packets per call) and
 * reports errors as OSError, never as a crash. The pure-Python fallback in
 * pcsite_lite/fastio.py has the same signatures and results.
 *
 *   read_batch(fd, max, spin_ns=0) -> list[bytes]
 *       non-blocking reads from a packet fd (TUN) until EAGAIN or ``max`` packets; with
 *       ``spin_ns`` > 0 and nothing read yet, keeps trying for that long (busy poll)
 *   write_batch(fd, packets) -> (written, errors, bytes_written)
 *   recv_batch(sockfd, max, bufsize=65536) -> list[bytes]     recvmmsg, MSG_DONTWAIT
 *   send_batch(sockfd, packets, (host, port)) -> sent         sendmmsg to one IPv4 address
 *   send_ip_batch(rawfd, packets) -> (sent, errors, bytes)   sendmmsg of whole IPv4 packets
 *   recv_spin(sockfd, bufsize, spin_ns) -> (bytes | None, spun_ns, spun_cpu_ns)
 *       non-blocking recv of one message, retried for up to ``spin_ns`` (a confined process
 *       busy-polling its channel after an answer), yielding the vCPU between tries to any
 *       other runnable process; None if nothing came; spun_ns is how long it polled,
 *       spun_cpu_ns the CPU time the calling thread used meanwhile
 *   form1_meta(data, off, now) -> bytes
 *       the confined lane's packet record (pcsite_lite.confine._META) of a form-1 packet
 *       without IP options whose shim starts at ``off``: read straight from its bytes
 *   answer_records(msg, n, zero) -> (results, extra_json | None, coded)
 *       the records of a confined process's batch answer (pcsite_lite.confine._RES after
 *       the b"R" head) checked against ``n`` packets: per packet (code, changed, cache,
 *       None, new payload), ``zero`` itself for an all-zero record; ``coded``: how many have
 *       a non-zero code; ValueError if any count, code or length is off
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 1024
#define READ_BUF 65536

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int clamp_max(Py_ssize_t max) {
    if (max < 1) return 1;
    if (max > MAX_BATCH) return MAX_BATCH;
    return (int)max;
}

/* One non-blocking read; while nothing came and the spin deadline has not passed, try again
 * (without the GIL: other threads of the process run meanwhile). */
static ssize_t read_spin(int fd, unsigned char *buf, long long spin_ns, int *err) {
    ssize_t r;
    long long deadline = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        r = read(fd, buf, READ_BUF);
        if (r >= 0) break;
        if (errno == EINTR) continue;
        if ((errno == EAGAIN || errno == EWOULDBLOCK) && spin_ns > 0) {
            long long t = now_ns();
            if (deadline == 0) deadline = t + spin_ns;
            if (t < deadline) continue;
        }
        break;
    }
    *err = errno;
    Py_END_ALLOW_THREADS
    return r;
}

static PyObject *read_batch(PyObject *self, PyObject *args) {
    int fd;
    Py_ssize_t max;
    long long spin_ns = 0;
    if (!PyArg_ParseTuple(args, "in|L:read_batch", &fd, &max, &spin_ns)) return NULL;
    int n = clamp_max(max);
    unsigned char *buf = PyMem_Malloc(READ_BUF);
    PyObject *out = PyList_New(0);
    if (!buf || !out) {
        PyMem_Free(buf);
        Py_XDECREF(out);
        return PyErr_NoMemory();
    }
    while (PyList_GET_SIZE(out) < n) {
        int err = 0;
        ssize_t r;
        if (PyList_GET_SIZE(out) == 0 && spin_ns > 0) {
            r = read_spin(fd, buf, spin_ns, &err);
        } else {
            do {
                r = read(fd, buf, READ_BUF);
            } while (r < 0 && errno == EINTR);
            err = errno;
        }
        if (r < 0) {
            if (err == EAGAIN || err == EWOULDBLOCK || PyList_GET_SIZE(out) > 0)
                break; /* empty; or report the error on the next call */
            PyMem_Free(buf);
            Py_DECREF(out);
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        PyObject *b = PyBytes_FromStringAndSize((const char *)buf, r);
        if (!b || PyList_Append(out, b) < 0) {
            Py_XDECREF(b);
            PyMem_Free(buf);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(b);
    }
    PyMem_Free(buf);
    return out;
}

/* The (fd, packets) arguments of write_batch and send_ip_batch (``format`` "iO:name"): the
 * packets as a fast sequence, or NULL with the error set. */
static PyObject *fd_and_packets(PyObject *args, const char *format, int *fd) {
    PyObject *seq;
    if (!PyArg_ParseTuple(args, format, fd, &seq)) return NULL;
    return PySequence_Fast(seq, "packets must be a sequence");
}

static PyObject *write_batch(PyObject *self, PyObject *args) {
    int fd;
    PyObject *fast = fd_and_packets(args, "iO:write_batch", &fd);
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    long written = 0, errors = 0;
    long long nbytes = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer view;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, i), &view, PyBUF_SIMPLE) < 0) {
            Py_DECREF(fast);
            return NULL;
        }
        ssize_t r;
        do {
            r = write(fd, view.buf, view.len);
        } while (r < 0 && errno == EINTR);
        PyBuffer_Release(&view);
        if (r < 0) {
            errors++;
        } else {
            written++;
            nbytes += r;
        }
    }
    Py_DECREF(fast);
    return Py_BuildValue("(llL)", written, errors, nbytes);
}

static PyObject *recv_batch(PyObject *self, PyObject *args) {
    int fd;
    Py_ssize_t max, bufsize = READ_BUF;
    if (!PyArg_ParseTuple(args, "in|n:recv_batch", &fd, &max, &bufsize)) return NULL;
    if (bufsize < 1 || bufsize > READ_BUF) {
        PyErr_SetString(PyExc_ValueError, "recv_batch: bufsize must be in 1..65536");
        return NULL;
    }
    int n = clamp_max(max);
    struct mmsghdr *msgs = calloc(n, sizeof *msgs);
    struct iovec *iov = calloc(n, sizeof *iov);
    unsigned char *bufs = malloc((size_t)n * (size_t)bufsize);
    if (!msgs || !iov || !bufs) {
        free(msgs);
        free(iov);
        free(bufs);
        return PyErr_NoMemory();
    }
    for (int i = 0; i < n; i++) {
        iov[i].iov_base = bufs + (size_t)i * (size_t)bufsize;
        iov[i].iov_len = (size_t)bufsize;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int got;
    Py_BEGIN_ALLOW_THREADS
    do {
        got = recvmmsg(fd, msgs, (unsigned)n, MSG_DONTWAIT, NULL);
    } while (got < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    PyObject *out = NULL;
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            out = PyList_New(0);
        else
            PyErr_SetFromErrno(PyExc_OSError);
    } else {
        out = PyList_New(got);
        for (int i = 0; out && i < got; i++) {
            PyObject *b = PyBytes_FromStringAndSize((const char *)iov[i].iov_base, msgs[i].msg_len);
            if (!b) {
                Py_CLEAR(out);
                break;
            }
            PyList_SET_ITEM(out, i, b);
        }
    }
    free(msgs);
    free(iov);
    free(bufs);
    return out;
}

static PyObject *send_batch(PyObject *self, PyObject *args) {
    int fd, port;
    const char *host;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "iO(si):send_batch", &fd, &seq, &host, &port)) return NULL;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    if (port < 0 || port > 65535 || inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        PyErr_Format(PyExc_ValueError, "send_batch: %s:%d is not an IPv4 address and port", host,
                     port);
        return NULL;
    }
    PyObject *fast = PySequence_Fast(seq, "send_batch: packets must be a sequence");
    if (!fast) return NULL;
    Py_ssize_t total = PySequence_Fast_GET_SIZE(fast);
    int n = total > MAX_BATCH ? MAX_BATCH : (int)total;
    struct mmsghdr *msgs = PyMem_Calloc(n ? n : 1, sizeof *msgs);
    struct iovec *iov = PyMem_Calloc(n ? n : 1, sizeof *iov);
    Py_buffer *views = PyMem_Calloc(n ? n : 1, sizeof *views);
    if (!msgs || !iov || !views) {
        PyMem_Free(msgs);
        PyMem_Free(iov);
        PyMem_Free(views);
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    int held = 0;
    for (; held < n; held++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, held), &views[held], PyBUF_SIMPLE) <
            0)
            break;
        iov[held].iov_base = views[held].buf;
        iov[held].iov_len = (size_t)views[held].len;
        memset(&msgs[held], 0, sizeof msgs[held]);
        msgs[held].msg_hdr.msg_iov = &iov[held];
        msgs[held].msg_hdr.msg_iovlen = 1;
        msgs[held].msg_hdr.msg_name = &sa;
        msgs[held].msg_hdr.msg_namelen = sizeof sa;
    }
    int sent = 0;
    if (held == n && n > 0) {
        Py_BEGIN_ALLOW_THREADS
        do {
            sent = sendmmsg(fd, msgs, (unsigned)n, 0);
        } while (sent < 0 && errno == EINTR);
        Py_END_ALLOW_THREADS
    }
    int err = errno;
    for (int i = 0; i < held; i++) PyBuffer_Release(&views[i]);
    PyMem_Free(msgs);
    PyMem_Free(iov);
    PyMem_Free(views);
    Py_DECREF(fast);
    if (held != n) return NULL; /* a non-buffer item: the TypeError is set */
    if (sent < 0) {
        if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) return PyLong_FromLong(0);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(sent);
}

/* IPv4 packets (headers included) on a raw IP_HDRINCL socket, each to the destination in its
 * own header, with as few sendmmsg calls as the kernel allows: a packet it refuses is counted
 * and skipped, the rest go on. */
static PyObject *send_ip_batch(PyObject *self, PyObject *args) {
    int fd;
    PyObject *fast = fd_and_packets(args, "iO:send_ip_batch", &fd);
    if (!fast) return NULL;
    Py_ssize_t total = PySequence_Fast_GET_SIZE(fast);
    int n = total > MAX_BATCH ? MAX_BATCH : (int)total;
    long sent = 0, errors = (long)(total - n); /* beyond MAX_BATCH: not sent */
    long long nbytes = 0;
    struct mmsghdr *msgs = PyMem_Calloc(n ? n : 1, sizeof *msgs);
    struct iovec *iov = PyMem_Calloc(n ? n : 1, sizeof *iov);
    struct sockaddr_in *sas = PyMem_Calloc(n ? n : 1, sizeof *sas);
    Py_buffer *views = PyMem_Calloc(n ? n : 1, sizeof *views);
    if (!msgs || !iov || !sas || !views) {
        PyMem_Free(msgs);
        PyMem_Free(iov);
        PyMem_Free(sas);
        PyMem_Free(views);
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    int held = 0, m = 0; /* views held; messages built (packets of >= 20 bytes) */
    for (; held < n; held++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, held), &views[held], PyBUF_SIMPLE) <
            0)
            break;
        if (views[held].len < 20) {
            errors++;
            continue;
        }
        sas[m].sin_family = AF_INET;
        memcpy(&sas[m].sin_addr, (const unsigned char *)views[held].buf + 16, 4);
        iov[m].iov_base = views[held].buf;
        iov[m].iov_len = (size_t)views[held].len;
        msgs[m].msg_hdr.msg_iov = &iov[m];
        msgs[m].msg_hdr.msg_iovlen = 1;
        msgs[m].msg_hdr.msg_name = &sas[m];
        msgs[m].msg_hdr.msg_namelen = sizeof sas[m];
        m++;
    }
    if (held == n) {
        int at = 0;
        Py_BEGIN_ALLOW_THREADS
        while (at < m) {
            int r = sendmmsg(fd, msgs + at, (unsigned)(m - at), 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                errors++; /* this one was refused: skip it */
                at++;
                continue;
            }
            for (int i = at; i < at + r; i++) nbytes += msgs[i].msg_len;
            sent += r;
            at += r;
        }
        Py_END_ALLOW_THREADS
    }
    for (int i = 0; i < held; i++) PyBuffer_Release(&views[i]);
    PyMem_Free(msgs);
    PyMem_Free(iov);
    PyMem_Free(sas);
    PyMem_Free(views);
    Py_DECREF(fast);
    if (held != n) return NULL; /* a non-buffer item: the TypeError is set */
    return Py_BuildValue("(llL)", sent, errors, nbytes);
}

static PyObject *recv_spin(PyObject *self, PyObject *args) {
    int fd;
    Py_ssize_t bufsize;
    long long spin_ns;
    if (!PyArg_ParseTuple(args, "inL:recv_spin", &fd, &bufsize, &spin_ns)) return NULL;
    if (bufsize < 1 || bufsize > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "recv_spin: bufsize must be in 1..1048576");
        return NULL;
    }
    unsigned char *buf = PyMem_Malloc((size_t)bufsize);
    if (!buf) return PyErr_NoMemory();
    ssize_t r;
    int err = 0;
    struct timespec c0, c1;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
    long long t0 = now_ns(), t = t0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        r = recv(fd, buf, (size_t)bufsize, MSG_DONTWAIT);
        if (r >= 0) break;
        err = errno;
        if (err == EINTR) continue;
        if (err != EAGAIN && err != EWOULDBLOCK) break;
        t = now_ns();
        if (t - t0 >= spin_ns) break;
        sched_yield(); /* another process with work on this vCPU runs first */
    }
    if (r >= 0) t = now_ns();
    Py_END_ALLOW_THREADS
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
    long long cpu = (long long)(c1.tv_sec - c0.tv_sec) * 1000000000LL + (c1.tv_nsec - c0.tv_nsec);
    PyObject *out = NULL;
    if (r >= 0) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)buf, r);
        if (b) out = Py_BuildValue("(NLL)", b, t - t0, cpu);
    } else if (err == EAGAIN || err == EWOULDBLOCK) {
        out = Py_BuildValue("(OLL)", Py_None, t - t0, cpu);
    } else {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
    }
    PyMem_Free(buf);
    return out;
}

static inline uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void wr32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}
static inline void wr64(unsigned char *p, uint64_t v) {
    wr32(p, (uint32_t)(v >> 32));
    wr32(p + 4, (uint32_t)v);
}

/* _META "!BBqqBIBIIBBBdI": form, presence bits, label, service ID, metadata, original source,
 * hop limit, IPv4 source, destination, protocol, ToS, TTL, arrival time, payload length */
#define META_SIZE 43
static PyObject *form1_meta(PyObject *self, PyObject *args) {
    Py_buffer b;
    Py_ssize_t off;
    double now;
    if (!PyArg_ParseTuple(args, "y*nd:form1_meta", &b, &off, &now)) return NULL;
    const unsigned char *p = b.buf;
    if (b.len < 20 || off < 20 || off + 16 > b.len) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "form1_meta: not a form-1 packet of that layout");
        return NULL;
    }
    unsigned char m[META_SIZE];
    const unsigned char *sh = p + off; /* shim: form, next protocol, hop limit, metadata,
                                          label (4), original source (4), MAC (4) */
    uint64_t t;
    memcpy(&t, &now, 8);
    m[0] = 1;                      /* form 1 */
    m[1] = 29;                     /* label, metadata, original source, hop limit present */
    wr64(m + 2, rd32(sh + 4));     /* label */
    wr64(m + 10, 0);               /* service ID */
    m[18] = sh[3];                 /* metadata */
    memcpy(m + 19, sh + 8, 4);     /* original source */
    m[23] = sh[2];                 /* hop limit */
    memcpy(m + 24, p + 12, 8);     /* source, destination */
    m[32] = sh[1];                 /* next protocol */
    m[33] = p[1];                  /* ToS */
    m[34] = p[8];                  /* TTL */
    wr64(m + 35, t);               /* arrival time (big-endian double) */
    PyObject *out = PyBytes_FromStringAndSize(NULL, META_SIZE + 4);
    if (out) {
        unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
        memcpy(o, m, META_SIZE);
        wr32(o + META_SIZE, (uint32_t)(b.len - off - 16));
    }
    PyBuffer_Release(&b);
    return out;
}

/* _RHEAD "!III" (count, JSON length, spin) after b"R"; _RES "!BBII" per packet */
#define RHEAD_SIZE 12
#define RES_SIZE 10
static PyObject *answer_records(PyObject *self, PyObject *args) {
    Py_buffer b;
    Py_ssize_t n;
    PyObject *zero;
    if (!PyArg_ParseTuple(args, "y*nO:answer_records", &b, &n, &zero)) return NULL;
    const unsigned char *p = b.buf;
    PyObject *out = NULL, *extra = NULL;
    const char *bad = NULL;
    Py_ssize_t coded = 0;
    if (b.len < 1 + RHEAD_SIZE || p[0] != 'R') {
        bad = "short answer";
        goto done;
    }
    uint32_t count = rd32(p + 1), jlen = rd32(p + 5);
    if (n < 0 || (Py_ssize_t)count != n) {
        bad = "wrong result count";
        goto done;
    }
    Py_ssize_t start = 1 + RHEAD_SIZE, end = start + n * RES_SIZE;
    Py_ssize_t off = end + (Py_ssize_t)jlen;
    if (off > b.len) {
        bad = "answer shorter than its head says";
        goto done;
    }
    out = PyList_New(n);
    if (!out) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[start + i * RES_SIZE]) coded++;
        const unsigned char *r = p + start + i * RES_SIZE;
        unsigned code = r[0], changed = r[1];
        uint32_t cache = rd32(r + 2), ln = rd32(r + 6);
        if (code > 2 || changed > 1) {
            bad = "bad outcome code";
            goto done;
        }
        if (!code && !changed && !cache && !ln) {
            Py_INCREF(zero);
            PyList_SET_ITEM(out, i, zero);
            continue;
        }
        if ((Py_ssize_t)ln > b.len - off) {
            bad = "answer shorter than its records";
            goto done;
        }
        PyObject *t = Py_BuildValue("(IIkOy#)", code, changed, (unsigned long)cache, Py_None,
                                    (const char *)p + off, (Py_ssize_t)ln);
        if (!t) goto done;
        PyList_SET_ITEM(out, i, t);
        off += ln;
    }
    if (off != b.len) {
        bad = "answer longer than its records";
        goto done;
    }
    if (jlen) {
        extra = PyBytes_FromStringAndSize((const char *)p + end, jlen);
        if (!extra) goto done;
    } else {
        extra = Py_None;
        Py_INCREF(extra);
    }
done:
    PyBuffer_Release(&b);
    if (bad) PyErr_SetString(PyExc_ValueError, bad);
    if (bad || !extra) {
        Py_XDECREF(out);
        Py_XDECREF(extra);
        return NULL;
    }
    return Py_BuildValue("(NNn)", out, extra, coded);
}

static PyMethodDef methods[] = {
    {"form1_meta", form1_meta, METH_VARARGS,
     "form1_meta(data, off, now) -> the confined lane's record of a form-1 packet"},
    {"answer_records", answer_records, METH_VARARGS,
     "answer_records(msg, n, zero) -> (results, extra JSON or None, coded) of a batch answer"},
    {"recv_spin", recv_spin, METH_VARARGS,
     "recv_spin(sockfd, bufsize, spin_ns) -> (message or None, ns spent polling, CPU ns)"},
    {"read_batch", read_batch, METH_VARARGS,
     "read_batch(fd, max, spin_ns=0) -> list of packets read without blocking"},
    {"write_batch", write_batch, METH_VARARGS, "write_batch(fd, packets) -> (written, errors, bytes_written)"},
    {"recv_batch", recv_batch, METH_VARARGS,
     "recv_batch(sockfd, max, bufsize=65536) -> list of datagrams (recvmmsg, non-blocking)"},
    {"send_batch", send_batch, METH_VARARGS,
     "send_batch(sockfd, packets, (host, port)) -> datagrams sent (sendmmsg)"},
    {"send_ip_batch", send_ip_batch, METH_VARARGS,
     "send_ip_batch(rawfd, packets) -> (sent, errors, bytes): sendmmsg of IPv4 packets on an "
     "IP_HDRINCL socket, each to its header's destination"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pcsite_lite._fastio",
    .m_doc = "Batched packet I/O (read/write batches, recvmmsg/sendmmsg) for the site worker.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastio(void) {
    PyObject *m = PyModule_Create(&moddef);
    if (m) PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH);
    return m;
}
