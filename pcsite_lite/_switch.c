/* pcsite_lite._switch: the worker's native form-1 switch (docs/daemon.md, "Native switching").
 *
 * A Switch owns one batch of packet buffers and a circuit table mirrored from the Python one
 * (pcsite_lite/native.py fills it). For a packet whose circuit runs a service the site can run
 * natively (the service declares it), run() does the whole hop here -- the pipeline's fast
 * path eligibility, the label lookup, expiry, the MAC check under the in hop key, the hop
 * limit, then the egress of docs/protocol.md §5.3 with the decision the Python mirror
 * resolved (out label, next hop, out key) -- and meters the packet for its service. Anything
 * else stops run() at that packet ("punt"): Python hands it to the pipeline and calls run()
 * again after it, so packets are handled in arrival order and the two paths interleave exactly
 * as one sequential pipeline would.
 *
 * The hop itself is pcsock/_accel.c built with -DPC_ACCEL_NO_PYTHON (pc_hop_verify, _plan,
 * _apply): the same code as the pipeline's C egress, byte for byte.
 *
 * The table is open addressing (linear probing) keyed by label, with a generation number:
 * clear() bumps it and so empties the table in O(1) between two packets; Python re-learns
 * entries as their packets come. The table grows up to MAX_CAP slots; full at that size, it is
 * cleared. Every call is bounded (one batch of at most MAX_BATCH packets).
 *
 *   Switch(site_addr, batch=256, bufsize=65536, verify_ip_checksum=False)
 *   set(label, in_key, expires, out_label, out_addr, out_key, slot, local, fis_reads)
 *   punt(label)              a circuit that always goes to Python (until the next clear())
 *   clear()                  forget every entry (generation bump)
 *   read(fd, limit, spin_ns=0) -> (packets, bytes)   a batch from a non-blocking packet fd
 *   load(packets) -> n       a batch from a list of bytes (tests, benchmarks)
 *   peek() -> [(i, bytes)]   the batch's packets run() would not switch (lookup only)
 *   run(start, now) -> i     switch packets start.. in order; i: the first punted one (or n)
 *   packet(i) -> bytes       packet i as it is now
 *   missed(i) -> label | -1  the label of punted packet i if the table had no entry for it
 *   write(fd, py_outs) -> (written, errors, bytes)   the batch's output, in order: a switched
 *                            packet, or the list py_outs[k] for the k-th punted one
 *   outputs(py_outs) -> list[bytes]                  the same, as a list (tests)
 *   take() -> (ns, [(slot, packets, bytes_in, bytes_out, bytes_local, bytes_interdomain,
 *               fis_reads)])  the metering since the last take() (touched slots only), and
 *                            the nanoseconds run() spent switching
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "_accel.h"

#define MAX_BATCH 1024
#define MIN_CAP 1024
#define MAX_CAP (1u << 20)
#define MAX_SLOTS 65536

enum { E_EMPTY = 0, E_NATIVE = 1, E_PUNT = 2 };
enum { S_NONE = 0, S_DONE = 1, S_MISS = 2, S_PUNT = 3 };

typedef struct {
    uint32_t label;
    uint32_t gen;
    uint8_t kind;
    uint8_t has_out_key;
    uint8_t local;
    uint8_t fis_reads;
    uint16_t slot;
    uint32_t out_label;
    uint32_t out_addr;
    double expires;
    pc_b2s_key in_key;
    pc_b2s_key out_key;
} entry_t;

typedef struct {
    uint64_t packets, bytes_in, bytes_out, bytes_local, bytes_inter, fis_reads;
} meter_t;

typedef struct {
    PyObject_HEAD
    uint32_t site;
    int verify; /* verify the IPv4 header checksum (a worker's TUN input is verified) */
    int batch;
    size_t bufsize;
    uint8_t *arena;   /* batch * bufsize */
    size_t *lens;     /* per packet */
    uint8_t *state;   /* per packet: S_* */
    int n;            /* packets in the batch */
    entry_t *table;
    uint32_t cap;     /* power of two */
    uint32_t count;   /* entries of the current generation */
    uint32_t gen;
    meter_t *meters;  /* MAX_SLOTS */
    uint16_t *touched;
    int ntouched;
    uint8_t *is_touched;
    uint64_t ns;      /* run() time since the last take() */
} SwitchObject;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline unsigned be16(const uint8_t *p) { return (unsigned)(p[0] << 8 | p[1]); }

static inline uint32_t hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

static entry_t *lookup(SwitchObject *s, uint32_t label) {
    uint32_t mask = s->cap - 1, i = hash32(label) & mask;
    for (;;) {
        entry_t *e = &s->table[i];
        if (e->kind == E_EMPTY || e->gen != s->gen) return NULL;
        if (e->label == label) return e;
        i = (i + 1) & mask;
    }
}

/* The slot for label: its current entry, or the first empty/stale slot of its probe path. */
static entry_t *slot_for(SwitchObject *s, uint32_t label) {
    uint32_t mask = s->cap - 1, i = hash32(label) & mask;
    for (;;) {
        entry_t *e = &s->table[i];
        if (e->kind == E_EMPTY || e->gen != s->gen || e->label == label) return e;
        i = (i + 1) & mask;
    }
}

static void clear_table(SwitchObject *s) {
    s->count = 0;
    if (++s->gen == 0) { /* wrapped: old generations could look current */
        memset(s->table, 0, sizeof(entry_t) * s->cap);
        s->gen = 1;
    }
}

/* Make room for one more entry: grow (rehash the current generation) or, at MAX_CAP, clear. */
static int reserve_one(SwitchObject *s) {
    uint32_t i, old_cap = s->cap;
    entry_t *old = s->table, *nt;
    if ((s->count + 1) * 2 <= s->cap) return 0;
    if (s->cap >= MAX_CAP) {
        clear_table(s);
        return 0;
    }
    nt = PyMem_Calloc(old_cap * 2, sizeof(entry_t));
    if (nt == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    s->table = nt;
    s->cap = old_cap * 2;
    for (i = 0; i < old_cap; i++) {
        if (old[i].kind != E_EMPTY && old[i].gen == s->gen) *slot_for(s, old[i].label) = old[i];
    }
    PyMem_Free(old);
    return 0;
}

static void Switch_dealloc(SwitchObject *s) {
    PyMem_Free(s->arena);
    PyMem_Free(s->lens);
    PyMem_Free(s->state);
    PyMem_Free(s->table);
    PyMem_Free(s->meters);
    PyMem_Free(s->touched);
    PyMem_Free(s->is_touched);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static int Switch_init(SwitchObject *s, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"site_addr", "batch", "bufsize", "verify_ip_checksum", NULL};
    unsigned long site;
    int batch = 256, verify = 0;
    Py_ssize_t bufsize = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "k|inp:Switch", kw, &site, &batch, &bufsize,
                                     &verify))
        return -1;
    if (site > 0xFFFFFFFFUL || batch < 1 || batch > MAX_BATCH || bufsize < 64 ||
        bufsize > 65536) {
        PyErr_SetString(PyExc_ValueError,
                        "Switch(site_addr: 32-bit, batch 1..1024, bufsize 64..65536)");
        return -1;
    }
    if (s->arena != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Switch already initialised");
        return -1;
    }
    s->site = (uint32_t)site;
    s->verify = verify;
    s->batch = batch;
    s->bufsize = (size_t)bufsize;
    s->arena = PyMem_Malloc((size_t)batch * (size_t)bufsize);
    s->lens = PyMem_Calloc((size_t)batch, sizeof(size_t));
    s->state = PyMem_Calloc((size_t)batch, 1);
    s->cap = MIN_CAP;
    s->table = PyMem_Calloc(s->cap, sizeof(entry_t));
    s->meters = PyMem_Calloc(MAX_SLOTS, sizeof(meter_t));
    s->touched = PyMem_Calloc(MAX_SLOTS, sizeof(uint16_t));
    s->is_touched = PyMem_Calloc(MAX_SLOTS, 1);
    s->gen = 1;
    if (!s->arena || !s->lens || !s->state || !s->table || !s->meters || !s->touched ||
        !s->is_touched) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int key_arg(PyObject *o, pc_b2s_key *k, const char *what) {
    char *p;
    Py_ssize_t n;
    if (!PyBytes_Check(o) || PyBytes_AsStringAndSize(o, &p, &n) < 0 || n < 1 || n > 32) {
        PyErr_Format(PyExc_ValueError, "%s must be 1..32 bytes", what);
        return -1;
    }
    pc_b2s_prekey(k, (const uint8_t *)p, (size_t)n, 4);
    return 0;
}

static PyObject *Switch_set(SwitchObject *s, PyObject *args) {
    unsigned long label, out_label, out_addr;
    PyObject *in_key, *out_key;
    double expires;
    int slot, local, fis_reads;
    entry_t e, *dst;
    if (!PyArg_ParseTuple(args, "kOdkkOipi:set", &label, &in_key, &expires, &out_label,
                          &out_addr, &out_key, &slot, &local, &fis_reads))
        return NULL;
    if (label > 0xFFFFFFFFUL || out_label > 0xFFFFFFFFUL || out_addr > 0xFFFFFFFFUL ||
        slot < 0 || slot >= MAX_SLOTS || fis_reads < 0 || fis_reads > 255) {
        PyErr_SetString(PyExc_ValueError, "set(): value out of range");
        return NULL;
    }
    memset(&e, 0, sizeof e);
    if (key_arg(in_key, &e.in_key, "in_key") < 0) return NULL;
    if (out_key != Py_None) {
        if (key_arg(out_key, &e.out_key, "out_key") < 0) return NULL;
        e.has_out_key = 1;
    }
    e.label = (uint32_t)label;
    e.kind = E_NATIVE;
    e.expires = expires;
    e.out_label = (uint32_t)out_label;
    e.out_addr = (uint32_t)out_addr;
    e.slot = (uint16_t)slot;
    e.local = (uint8_t)local;
    e.fis_reads = (uint8_t)fis_reads;
    if (lookup(s, e.label) == NULL) {
        if (reserve_one(s) < 0) return NULL;
        s->count++;
    }
    dst = slot_for(s, e.label);
    e.gen = s->gen;
    *dst = e;
    Py_RETURN_NONE;
}

static PyObject *Switch_punt(SwitchObject *s, PyObject *arg) {
    unsigned long label = PyLong_AsUnsignedLong(arg);
    entry_t *dst;
    if (label == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    if (label > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "punt(): label out of range");
        return NULL;
    }
    if (lookup(s, (uint32_t)label) == NULL) {
        if (reserve_one(s) < 0) return NULL;
        s->count++;
    }
    dst = slot_for(s, (uint32_t)label);
    memset(dst, 0, sizeof *dst);
    dst->label = (uint32_t)label;
    dst->kind = E_PUNT;
    dst->gen = s->gen;
    Py_RETURN_NONE;
}

static PyObject *Switch_clear(SwitchObject *s, PyObject *unused) {
    (void)unused;
    clear_table(s);
    Py_RETURN_NONE;
}

static void new_batch(SwitchObject *s, int n) {
    s->n = n;
    memset(s->state, S_NONE, (size_t)s->batch);
}

static PyObject *Switch_read(SwitchObject *s, PyObject *args) {
    int fd, limit, n = 0, err = 0;
    long long spin_ns = 0, deadline = 0;
    uint64_t nbytes = 0;
    if (!PyArg_ParseTuple(args, "ii|L:read", &fd, &limit, &spin_ns)) return NULL;
    if (limit < 1) limit = 1;
    if (limit > s->batch) limit = s->batch;
    Py_BEGIN_ALLOW_THREADS
    while (n < limit) {
        ssize_t r = read(fd, s->arena + (size_t)n * s->bufsize, s->bufsize);
        if (r >= 0) {
            s->lens[n++] = (size_t)r;
            nbytes += (uint64_t)r;
            continue;
        }
        if (errno == EINTR) continue;
        if ((errno == EAGAIN || errno == EWOULDBLOCK) && n == 0 && spin_ns > 0) {
            long long t = now_ns();
            if (deadline == 0) deadline = t + spin_ns;
            if (t < deadline) continue;
        }
        err = errno;
        break;
    }
    Py_END_ALLOW_THREADS
    new_batch(s, n);
    if (n == 0 && err && err != EAGAIN && err != EWOULDBLOCK) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("iK", n, (unsigned long long)nbytes);
}

static PyObject *Switch_load(SwitchObject *s, PyObject *seq) {
    PyObject *fast = PySequence_Fast(seq, "load() takes a sequence of bytes");
    Py_ssize_t i, n;
    if (fast == NULL) return NULL;
    n = PySequence_Fast_GET_SIZE(fast);
    if (n > s->batch) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "load(): more than %d packets", s->batch);
        return NULL;
    }
    for (i = 0; i < n; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(fast, i);
        Py_buffer view;
        if (PyObject_GetBuffer(o, &view, PyBUF_SIMPLE) < 0) {
            Py_DECREF(fast);
            return NULL;
        }
        if ((size_t)view.len > s->bufsize) {
            PyBuffer_Release(&view);
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "load(): packet longer than bufsize");
            return NULL;
        }
        memcpy(s->arena + (size_t)i * s->bufsize, view.buf, (size_t)view.len);
        s->lens[i] = (size_t)view.len;
        PyBuffer_Release(&view);
    }
    Py_DECREF(fast);
    new_batch(s, (int)n);
    return PyLong_FromSsize_t(n);
}

/* The pipeline's fast-path eligibility (pc_form1_offset, shared with pcsock._accel's
 * form1_in): the shim offset, or 0. */
static inline int eligible(const SwitchObject *s, const uint8_t *p, size_t n) {
    return pc_form1_offset(p, n, s->site, s->verify);
}

static PyObject *Switch_peek(SwitchObject *s, PyObject *unused) {
    PyObject *out = PyList_New(0);
    int i;
    (void)unused;
    if (out == NULL) return NULL;
    for (i = 0; i < s->n; i++) {
        const uint8_t *p = s->arena + (size_t)i * s->bufsize;
        int o = eligible(s, p, s->lens[i]);
        entry_t *e = o ? lookup(s, be32(p + o + 4)) : NULL;
        if (e == NULL || e->kind != E_NATIVE) {
            PyObject *t = Py_BuildValue("(iy#)", i, (const char *)p, (Py_ssize_t)s->lens[i]);
            if (t == NULL || PyList_Append(out, t) < 0) {
                Py_XDECREF(t);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(t);
        }
    }
    return out;
}

static PyObject *Switch_run(SwitchObject *s, PyObject *args) {
    int start, i, done = 0;
    double now;
    long long t0;
    if (!PyArg_ParseTuple(args, "id:run", &start, &now)) return NULL;
    if (start < 0) start = 0;
    t0 = now_ns();
    for (i = start; i < s->n; i++) {
        uint8_t *p = s->arena + (size_t)i * s->bufsize;
        size_t n = s->lens[i];
        int o = eligible(s, p, n);
        entry_t *e;
        pc_frame_t f;
        pc_hop_plan_t plan;
        meter_t *m;
        if (!o) {
            s->state[i] = S_PUNT;
            break;
        }
        e = lookup(s, be32(p + o + 4));
        if (e == NULL) {
            s->state[i] = S_MISS;
            break;
        }
        /* punted: a circuit not run natively; expired, bad MAC, no hops left: the pipeline
         * drops it with its reason */
        if (e->kind != E_NATIVE || !(e->expires > now)) {
            s->state[i] = S_PUNT;
            break;
        }
        f.len = n;
        f.ihl = 20;
        f.off = o;
        f.vf = 0x11;
        if (pc_hop_verify(p, &f, &e->in_key, 1) != PC_OK) {
            s->state[i] = S_PUNT;
            break;
        }
        pc_hop_plan(p, &f, e->out_label, e->out_addr, e->has_out_key ? &e->out_key : NULL,
                    &s->site, 1, &plan);
        pc_hop_apply(p, &f, &plan);
        s->state[i] = S_DONE;
        m = &s->meters[e->slot];
        m->packets++;
        m->bytes_in += n;
        m->bytes_out += n;
        if (e->local)
            m->bytes_local += n;
        else
            m->bytes_inter += n;
        m->fis_reads += e->fis_reads;
        if (!s->is_touched[e->slot]) {
            s->is_touched[e->slot] = 1;
            s->touched[s->ntouched++] = e->slot;
        }
        done++;
    }
    if (done) s->ns += (uint64_t)(now_ns() - t0);
    return PyLong_FromLong(i);
}

static int index_arg(SwitchObject *s, PyObject *arg) {
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred()) return -1;
    if (i < 0 || i >= s->n) {
        PyErr_SetString(PyExc_IndexError, "packet index out of the batch");
        return -1;
    }
    return (int)i;
}

static PyObject *Switch_packet(SwitchObject *s, PyObject *arg) {
    int i = index_arg(s, arg);
    if (i < 0) return NULL;
    return PyBytes_FromStringAndSize((const char *)s->arena + (size_t)i * s->bufsize,
                                     (Py_ssize_t)s->lens[i]);
}

static PyObject *Switch_missed(SwitchObject *s, PyObject *arg) {
    int i = index_arg(s, arg), o;
    const uint8_t *p;
    if (i < 0) return NULL;
    if (s->state[i] != S_MISS) return PyLong_FromLong(-1);
    p = s->arena + (size_t)i * s->bufsize;
    o = eligible(s, p, s->lens[i]);
    return PyLong_FromUnsignedLong(be32(p + o + 4));
}

/* Calls emit(ctx, data, len) for every output of the batch in order; -1 on a Python error. */
typedef int (*emit_fn)(void *ctx, const uint8_t *data, size_t len, PyObject *obj);

static int each_output(SwitchObject *s, PyObject *py_outs, emit_fn emit, void *ctx) {
    PyObject *fast = PySequence_Fast(py_outs, "py_outs must be a sequence");
    Py_ssize_t k = 0, nk;
    int i;
    if (fast == NULL) return -1;
    nk = PySequence_Fast_GET_SIZE(fast);
    for (i = 0; i < s->n; i++) {
        uint8_t st = s->state[i];
        if (st == S_DONE) {
            if (emit(ctx, s->arena + (size_t)i * s->bufsize, s->lens[i], NULL) < 0) goto fail;
        } else if (st == S_MISS || st == S_PUNT) {
            PyObject *outs;
            Py_ssize_t j;
            if (k >= nk) {
                PyErr_SetString(PyExc_ValueError, "fewer py_outs than punted packets");
                goto fail;
            }
            outs = PySequence_Fast_GET_ITEM(fast, k++);
            if (outs == Py_None) continue;
            if (!PyList_Check(outs)) {
                PyErr_SetString(PyExc_TypeError, "py_outs items must be lists of bytes");
                goto fail;
            }
            for (j = 0; j < PyList_GET_SIZE(outs); j++) {
                PyObject *b = PyList_GET_ITEM(outs, j);
                if (!PyBytes_Check(b)) {
                    PyErr_SetString(PyExc_TypeError, "py_outs items must be lists of bytes");
                    goto fail;
                }
                if (emit(ctx, (const uint8_t *)PyBytes_AS_STRING(b),
                         (size_t)PyBytes_GET_SIZE(b), b) < 0)
                    goto fail;
            }
        }
    }
    Py_DECREF(fast);
    return 0;
fail:
    Py_DECREF(fast);
    return -1;
}

typedef struct {
    int fd;
    unsigned long long written, errors, nbytes;
} write_ctx;

static int emit_write(void *c, const uint8_t *data, size_t len, PyObject *obj) {
    write_ctx *w = c;
    ssize_t r;
    (void)obj;
    do {
        r = write(w->fd, data, len);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        w->errors++;
    } else {
        w->written++;
        w->nbytes += (unsigned long long)r;
    }
    return 0;
}

static PyObject *Switch_write(SwitchObject *s, PyObject *args) {
    write_ctx w = {0, 0, 0, 0};
    PyObject *py_outs;
    if (!PyArg_ParseTuple(args, "iO:write", &w.fd, &py_outs)) return NULL;
    if (each_output(s, py_outs, emit_write, &w) < 0) return NULL;
    return Py_BuildValue("KKK", w.written, w.errors, w.nbytes);
}

static int emit_list(void *c, const uint8_t *data, size_t len, PyObject *obj) {
    PyObject *b = obj;
    int r;
    if (b == NULL) {
        b = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len);
        if (b == NULL) return -1;
    } else {
        Py_INCREF(b);
    }
    r = PyList_Append((PyObject *)c, b);
    Py_DECREF(b);
    return r;
}

static PyObject *Switch_outputs(SwitchObject *s, PyObject *py_outs) {
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    if (each_output(s, py_outs, emit_list, out) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *Switch_take(SwitchObject *s, PyObject *unused) {
    PyObject *rows = PyList_New(s->ntouched), *res;
    int i;
    (void)unused;
    if (rows == NULL) return NULL;
    for (i = 0; i < s->ntouched; i++) {
        uint16_t slot = s->touched[i];
        meter_t *m = &s->meters[slot];
        PyObject *row = Py_BuildValue("iKKKKKK", (int)slot, m->packets, m->bytes_in,
                                      m->bytes_out, m->bytes_local, m->bytes_inter,
                                      m->fis_reads);
        if (row == NULL) {
            Py_DECREF(rows);
            return NULL;
        }
        PyList_SET_ITEM(rows, i, row);
    }
    for (i = 0; i < s->ntouched; i++) {
        memset(&s->meters[s->touched[i]], 0, sizeof(meter_t));
        s->is_touched[s->touched[i]] = 0;
    }
    s->ntouched = 0;
    res = Py_BuildValue("KN", (unsigned long long)s->ns, rows);
    s->ns = 0;
    return res;
}

static PyObject *Switch_get_pending(SwitchObject *s, void *closure) {
    (void)closure;
    return PyBool_FromLong(s->ntouched > 0);
}

static PyMethodDef Switch_methods[] = {
    {"set", (PyCFunction)Switch_set, METH_VARARGS,
     "set(label, in_key, expires, out_label, out_addr, out_key, slot, local, fis_reads)"},
    {"punt", (PyCFunction)Switch_punt, METH_O, "punt(label): always hand it to Python"},
    {"clear", (PyCFunction)Switch_clear, METH_NOARGS, "forget every entry"},
    {"read", (PyCFunction)Switch_read, METH_VARARGS, "read(fd, limit, spin_ns=0)"},
    {"load", (PyCFunction)Switch_load, METH_O, "load(packets) -> n"},
    {"peek", (PyCFunction)Switch_peek, METH_NOARGS,
     "peek() -> [(index, bytes)]: the packets run() would not switch"},
    {"run", (PyCFunction)Switch_run, METH_VARARGS, "run(start, now) -> first punted index"},
    {"packet", (PyCFunction)Switch_packet, METH_O, "packet(i) -> bytes"},
    {"missed", (PyCFunction)Switch_missed, METH_O, "missed(i) -> label or -1"},
    {"write", (PyCFunction)Switch_write, METH_VARARGS, "write(fd, py_outs)"},
    {"outputs", (PyCFunction)Switch_outputs, METH_O, "outputs(py_outs) -> list[bytes]"},
    {"take", (PyCFunction)Switch_take, METH_NOARGS, "take() -> (ns, rows)"},
    {NULL, NULL, 0, NULL},
};

/* the counts Python reads as they are (read only) */
static PyMemberDef Switch_members[] = {
    {"n", T_INT, offsetof(SwitchObject, n), READONLY, "packets in the current batch"},
    {"entries", T_UINT, offsetof(SwitchObject, count), READONLY,
     "entries of the current generation"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Switch_getset[] = {
    {"pending", (getter)Switch_get_pending, NULL, "metering not yet taken", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SwitchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pcsite_lite._switch.Switch",
    .tp_basicsize = sizeof(SwitchObject),
    .tp_dealloc = (destructor)Switch_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "the worker's native form-1 switch (see the module source)",
    .tp_methods = Switch_methods,
    .tp_members = Switch_members,
    .tp_getset = Switch_getset,
    .tp_init = (initproc)Switch_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef switch_module = {
    PyModuleDef_HEAD_INIT, "pcsite_lite._switch",
    "The worker's native form-1 switch (pcsite_lite.native is its Python side).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__switch(void) {
    PyObject *m;
    if (PyType_Ready(&SwitchType) < 0) return NULL;
    m = PyModule_Create(&switch_module);
    if (m == NULL) return NULL;
    Py_INCREF(&SwitchType);
    if (PyModule_AddObject(m, "Switch", (PyObject *)&SwitchType) < 0) {
        Py_DECREF(&SwitchType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH);
    return m;
}
