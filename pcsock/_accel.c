/* pcsock/_accel.c: the PacketCloud codec accelerator (pcsock._accel).
 *
 * Part 1 (plain C, see _accel.h): keyed BLAKE2s written from RFC 7693, the receive checks of
 * docs/protocol.md §2.4 and the per-hop job of §5.3. Part 2 (unless PC_ACCEL_NO_PYTHON): the
 * CPython glue that pcsock.wire, the site pipeline and the pcsock sockets call. Behaviour is
 * defined by the pure-Python reference (pcsock/wire.py): the same output bytes, the same
 * WireError reasons, checked in the same order.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sendmmsg(2) */
#endif
#include "_accel.h"

#include <string.h>

/* ======================================================================================== */
/* Part 1: plain C                                                                          */
/* ======================================================================================== */

/* ---- BLAKE2s, RFC 7693 ------------------------------------------------------------------ */

static const uint32_t B2S_IV[8] = {0x6A09E667UL, 0xBB67AE85UL, 0x3C6EF372UL, 0xA54FF53AUL,
                                   0x510E527FUL, 0x9B05688CUL, 0x1F83D9ABUL, 0x5BE0CD19UL};

static const uint8_t B2S_SIGMA[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

static inline uint32_t rotr32(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static inline uint32_t load_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint32_t load_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint16_t load_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static inline void store_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void store_be16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* RFC 7693 §3.1, the mixing function G (BLAKE2s rotations 16, 12, 8, 7). */
#define B2S_G(a, b, c, d, x, y)            \
    do {                                   \
        v[a] = v[a] + v[b] + (x);          \
        v[d] = rotr32(v[d] ^ v[a], 16);    \
        v[c] = v[c] + v[d];                \
        v[b] = rotr32(v[b] ^ v[c], 12);    \
        v[a] = v[a] + v[b] + (y);          \
        v[d] = rotr32(v[d] ^ v[a], 8);     \
        v[c] = v[c] + v[d];                \
        v[b] = rotr32(v[b] ^ v[c], 7);     \
    } while (0)

/* RFC 7693 §3.2, the compression function F on message words m: h, byte counter t, final.
 * Always inlined with its rounds unrolled, so that a caller whose message words are mostly
 * known zeros (a form-1 MAC input is 16 bytes of a 64-byte block) gets those additions
 * folded away by the compiler. */
static inline __attribute__((always_inline)) void b2s_compress_words(uint32_t h[8],
                                                                     const uint32_t m[16],
                                                                     uint64_t t, int last) {
    uint32_t v[16];
    int i;
    for (i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = B2S_IV[i];
    }
    v[12] ^= (uint32_t)t;
    v[13] ^= (uint32_t)(t >> 32);
    if (last) v[14] = ~v[14];
#pragma GCC unroll 10
    for (i = 0; i < 10; i++) {
        const uint8_t *s = B2S_SIGMA[i];
        B2S_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2S_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2S_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2S_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2S_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2S_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2S_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2S_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* F on one 64-byte block. */
static void b2s_compress(uint32_t h[8], const uint8_t block[64], uint64_t t, int last) {
    uint32_t m[16];
    int i;
    for (i = 0; i < 16; i++) m[i] = load_le32(block + 4 * i);
    b2s_compress_words(h, m, t, last);
}

/* RFC 7693 §3.3: parameter block (digest length, key length, fanout 1, depth 1) into h. */
static void b2s_init(uint32_t h[8], size_t outlen, size_t keylen) {
    memcpy(h, B2S_IV, sizeof B2S_IV);
    h[0] ^= 0x01010000UL ^ ((uint32_t)keylen << 8) ^ (uint32_t)outlen;
}

static void b2s_output(const uint32_t h[8], uint8_t *out, size_t outlen) {
    size_t i;
    for (i = 0; i < outlen; i++) out[i] = (uint8_t)(h[i >> 2] >> (8 * (i & 3)));
}

/* Feed `in` after `t0` bytes already compressed (the key block, or nothing) and finish. */
static void b2s_tail(uint32_t h[8], uint64_t t0, const uint8_t *in, size_t inlen) {
    uint8_t block[64];
    uint64_t t = t0;
    while (inlen > 64) {
        t += 64;
        b2s_compress(h, in, t, 0);
        in += 64;
        inlen -= 64;
    }
    memset(block, 0, sizeof block);
    if (inlen) memcpy(block, in, inlen);
    t += inlen;
    b2s_compress(h, block, t, 1);
}

void pc_blake2s(uint8_t *out, size_t outlen, const uint8_t *key, size_t keylen,
                const uint8_t *in, size_t inlen) {
    uint32_t h[8];
    uint8_t block[64];
    b2s_init(h, outlen, keylen);
    if (keylen) {
        memset(block, 0, sizeof block);
        memcpy(block, key, keylen);
        if (inlen == 0) {
            b2s_compress(h, block, 64, 1); /* the key block is the last block */
        } else {
            b2s_compress(h, block, 64, 0);
            b2s_tail(h, 64, in, inlen);
        }
    } else {
        b2s_tail(h, 0, in, inlen); /* inlen 0: one all-zero block, t = 0, final */
    }
    b2s_output(h, out, outlen);
}

void pc_b2s_prekey(pc_b2s_key *k, const uint8_t *key, size_t keylen, size_t outlen) {
    uint8_t block[64];
    memset(k, 0, sizeof *k);
    b2s_init(k->h, outlen, keylen);
    memset(block, 0, sizeof block);
    memcpy(block, key, keylen);
    b2s_compress(k->h, block, 64, 0);
    k->keylen = (uint8_t)keylen;
    k->outlen = (uint8_t)outlen;
}

void pc_b2s_mac(const pc_b2s_key *k, const uint8_t *in, size_t inlen, uint8_t *out) {
    uint32_t h[8];
    memcpy(h, k->h, sizeof h);
    b2s_tail(h, 64, in, inlen);
    b2s_output(h, out, k->outlen);
}

void pc_b2s_mac16(pc_b2s_key *k, const uint8_t msg[16], uint8_t *out, int use_memo) {
    uint32_t h[8];
    if (use_memo && k->memo_ok && memcmp(k->memo_in, msg, 16) == 0) {
        memcpy(out, k->memo_out, k->outlen);
        return;
    }
    {
        /* the final block: the 16 message bytes, then zeros (specialised by inlining) */
        const uint32_t m[16] = {load_le32(msg), load_le32(msg + 4), load_le32(msg + 8),
                                load_le32(msg + 12)};
        memcpy(h, k->h, sizeof h);
        b2s_compress_words(h, m, 64 + 16, 1);
    }
    b2s_output(h, out, k->outlen);
    if (use_memo) {
        memcpy(k->memo_in, msg, 16);
        memcpy(k->memo_out, out, k->outlen);
        k->memo_ok = 1;
    }
}

/* Constant-time compare of n bytes. */
static int ct_equal(const uint8_t *a, const uint8_t *b, size_t n) {
    uint8_t d = 0;
    size_t i;
    for (i = 0; i < n; i++) d |= a[i] ^ b[i];
    return d == 0;
}

/* ---- receive checks --------------------------------------------------------------------- */

static const char *const REASON_NAMES[PC_NREASONS] = {
    "ok",
    "truncated",
    "not_ipv4",
    "bad_ip_header_length",
    "bad_ip_total_length",
    "bad_ip_checksum",
    "fragment",
    "bad_udp_length",
    "bad_version",
    "unknown_form",
    "bad_mac",
    "bad_check",
    "hop_limit_exceeded",
    "bad_field",
};

const char *pc_reason_name(int reason) {
    return reason >= 0 && reason < PC_NREASONS ? REASON_NAMES[reason] : "bad_field";
}

#include <stdio.h>
#define DETAIL(...)                                                  \
    do {                                                             \
        if (detail) snprintf(detail, detail_len, __VA_ARGS__);      \
    } while (0)

enum { VF_CIRCUIT = 0x11, VF_SERVICE = 0x12, CIRCUIT_SHIM_LEN = 16, SERVICE_SHIM_LEN = 9 };

int pc_frame(const uint8_t *p, size_t n, int verify_ip_checksum, long proto, long udp_port,
             pc_frame_t *f, char *detail, size_t detail_len) {
    unsigned b0, total, frag, ip_proto, ihl, off, vf, end;
    if (detail && detail_len) detail[0] = 0;
    if (n < 20) { /* before any field is looked at (§2.4: a 12-byte "version 12" is truncated) */
        DETAIL("%zu bytes is shorter than an IPv4 header", n);
        return PC_TRUNCATED;
    }
    b0 = p[0];
    total = load_be16(p + 2);
    frag = load_be16(p + 6);
    ip_proto = p[9];
    if (b0 == 0x45 && total == n && n >= 20) { /* the common case */
        ihl = 20;
    } else {
        if (b0 >> 4 != 4) {
            DETAIL("IP version %u", b0 >> 4);
            return PC_NOT_IPV4;
        }
        if ((b0 & 15) < 5) {
            DETAIL("IHL %u", b0 & 15);
            return PC_BAD_IP_HEADER_LENGTH;
        }
        ihl = (b0 & 15) << 2;
        if (ihl > n) {
            DETAIL("IPv4 header of %u bytes in %zu bytes", ihl, n);
            return PC_TRUNCATED;
        }
        if (total < ihl) {
            DETAIL("total length %u < header %u", total, ihl);
            return PC_BAD_IP_TOTAL_LENGTH;
        }
        if (total > n) {
            DETAIL("IPv4 total length %u but %zu bytes", total, n);
            return PC_TRUNCATED;
        }
    }
    if (verify_ip_checksum) {
        /* the header as a big-endian integer is 0 mod 0xFFFF iff its one's-complement sum
         * verifies (pcsock.wire.internet_checksum explains why) */
        uint64_t s = 0;
        unsigned i;
        for (i = 0; i < ihl; i += 2) s += load_be16(p + i);
        if (s % 0xFFFF) return PC_BAD_IP_CHECKSUM;
    }
    if (frag & 0x3FFF) {
        DETAIL("sites do not reassemble fragments");
        return PC_FRAGMENT;
    }
    f->len = total;
    f->ihl = (int)ihl;
    if ((long)ip_proto == proto) {
        off = ihl;
    } else if (ip_proto == 17 && total >= ihl + 8 && (long)load_be16(p + ihl + 2) == udp_port) {
        unsigned ulen = load_be16(p + ihl + 4);
        if (ulen != total - ihl) {
            DETAIL("UDP length %u, IP payload %u", ulen, total - ihl);
            return PC_BAD_UDP_LENGTH;
        }
        off = ihl + 8;
    } else {
        f->off = -1;
        f->vf = 0;
        return PC_OK;
    }
    if (total >= off + CIRCUIT_SHIM_LEN && p[off] == VF_CIRCUIT) {
        f->off = (int)off;
        f->vf = VF_CIRCUIT;
        return PC_OK;
    }
    if (total < off + 2) {
        DETAIL("shim header cut short");
        return PC_TRUNCATED;
    }
    vf = p[off];
    if (vf == VF_CIRCUIT) {
        end = off + CIRCUIT_SHIM_LEN;
    } else if (vf == VF_SERVICE) {
        end = off + SERVICE_SHIM_LEN;
    } else if (vf >> 4 != 1) {
        DETAIL("shim version %u", vf >> 4);
        return PC_BAD_VERSION;
    } else {
        DETAIL("shim form %u", vf & 15);
        return PC_UNKNOWN_FORM;
    }
    if (total < end) {
        DETAIL("form-%u shim needs %u bytes", vf & 15, end - off);
        return PC_TRUNCATED;
    }
    f->off = (int)off;
    f->vf = (int)vf;
    return PC_OK;
}

int pc_form1_offset(const uint8_t *p, size_t n, uint32_t site_addr, int verify_ip_checksum) {
    int o;
    if (n < 36) return 0;
    if (p[9] == 253) {
        o = 20;
    } else if (p[9] == 17 && n >= 44 && load_be16(p + 22) == 6253 &&
               load_be16(p + 24) == (unsigned)load_be16(p + 2) - 20) {
        o = 28;
    } else {
        return 0;
    }
    if (p[o] != VF_CIRCUIT || p[0] != 0x45 || load_be16(p + 2) != n ||
        load_be32(p + 16) != site_addr || (load_be16(p + 6) & 0x3FFF))
        return 0;
    if (verify_ip_checksum) {
        uint64_t s = 0;
        int i;
        for (i = 0; i < 20; i += 2) s += load_be16(p + i);
        if (s % 0xFFFF) return 0;
    }
    return o;
}

/* ---- the per-hop job -------------------------------------------------------------------- */

int pc_hop_verify(const uint8_t *b, const pc_frame_t *f, pc_b2s_key *in_key, int use_memo) {
    const uint8_t *s = b + f->off;
    uint8_t msg[16], tag[32];
    memcpy(msg, s, 12); /* shim bytes 0..11, then the IPv4 destination (§5.1) */
    memcpy(msg + 12, b + 16, 4);
    pc_b2s_mac16(in_key, msg, tag, use_memo);
    if (!ct_equal(tag, s + 12, 4)) return PC_BAD_MAC;
    if (s[2] == 0) return PC_HOP_LIMIT_EXCEEDED;
    return PC_OK;
}

/* pc_hop_plan with the outgoing hop limit given (form1_out's egress passes what the
 * ingress read, minus one). */
static void hop_plan(const uint8_t *b, const pc_frame_t *f, uint8_t hops, uint32_t out_label,
                     uint32_t dst, pc_b2s_key *out_key, const uint32_t *src, int use_memo,
                     pc_hop_plan_t *plan) {
    const uint8_t *s = b + f->off;
    uint8_t msg[16], tag[32];
    uint32_t old_src = load_be32(b + 12), old_dst = load_be32(b + 16);
    int64_t v;
    plan->src = src ? *src : old_src;
    plan->dst = dst;
    plan->label = out_label;
    plan->hops = hops;
    /* docs/protocol.md §5.3 (pcsock.wire.checksum_update): HC + m - m' mod 0xFFFF, a 32-bit
     * field being the sum of its halves mod 0xFFFF; always what a full recomputation gives
     * (RFC 1624 eqn. 3 except at its +-0 edge, where eqn. 3 would write 0xFFFF) */
    v = (int64_t)load_be16(b + 10) + old_src + old_dst - plan->src - plan->dst;
    v %= 0xFFFF;
    if (v < 0) v += 0xFFFF;
    plan->csum = (uint16_t)v;
    memcpy(msg, s, 12);
    msg[2] = plan->hops;
    store_be32(msg + 4, out_label);
    store_be32(msg + 12, dst);
    if (out_key) {
        pc_b2s_mac16(out_key, msg, tag, use_memo);
        memcpy(plan->tag, tag, 4);
    } else {
        memset(plan->tag, 0, 4);
    }
}

void pc_hop_plan(const uint8_t *b, const pc_frame_t *f, uint32_t out_label, uint32_t dst,
                 pc_b2s_key *out_key, const uint32_t *src, int use_memo, pc_hop_plan_t *plan) {
    hop_plan(b, f, (uint8_t)(b[f->off + 2] - 1), out_label, dst, out_key, src, use_memo, plan);
}

void pc_hop_apply(uint8_t *b, const pc_frame_t *f, const pc_hop_plan_t *plan) {
    uint8_t *s = b + f->off;
    store_be16(b + 10, plan->csum);
    store_be32(b + 12, plan->src);
    store_be32(b + 16, plan->dst);
    s[2] = plan->hops;
    store_be32(s + 4, plan->label);
    memcpy(s + 12, plan->tag, 4);
    if (f->off != f->ihl) { /* UDP mode: the shim changed, send no checksum (§2.2) */
        b[f->ihl + 6] = 0;
        b[f->ihl + 7] = 0;
    }
}

int pc_hop(uint8_t *b, const pc_frame_t *f, pc_b2s_key *in_key, uint32_t out_label,
           uint32_t dst, pc_b2s_key *out_key, const uint32_t *src, int use_memo) {
    pc_hop_plan_t plan;
    int r = pc_hop_verify(b, f, in_key, use_memo);
    if (r != PC_OK) return r;
    pc_hop_plan(b, f, out_label, dst, out_key, src, use_memo, &plan);
    pc_hop_apply(b, f, &plan);
    return PC_OK;
}

/* ======================================================================================== */
/* Part 2: the CPython module pcsock._accel                                                 */
/* ======================================================================================== */
#ifndef PC_ACCEL_NO_PYTHON

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

static PyObject *WireErrorType = NULL; /* pcsock.wire.WireError, given by _setup() */
static PyObject *s_ck = NULL;          /* "_ck": a HopKey's Key object */
static PyObject *s_in_key = NULL;
static PyObject *S_reason[PC_NREASONS];
static int g_use_memo = 1;

/* RFC 1071 checksum of an even-length header. */
static uint16_t ip_header_checksum(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    size_t i;
    for (i = 0; i + 1 < n; i += 2) s += load_be16(p + i);
    if (n & 1) s += (uint32_t)p[n - 1] << 8;
    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
    return (uint16_t)(~s & 0xFFFF);
}

/* Raise pcsock.wire.WireError(reason, detail). Returns NULL. */
static PyObject *wire_error(int reason, const char *detail) {
    PyObject *exc;
    if (WireErrorType == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pcsock._accel: _setup() was not called");
        return NULL;
    }
    exc = PyObject_CallFunction(WireErrorType, "Os", S_reason[reason], detail ? detail : "");
    if (exc != NULL) {
        PyErr_SetObject(WireErrorType, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* ---- Key: a pre-keyed BLAKE2s state ------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    pc_b2s_key k;
    uint8_t key[32];
} KeyObject;

static PyTypeObject KeyType;

static PyObject *Key_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"key", "digest_size", NULL};
    Py_buffer key;
    int digest_size = 4;
    KeyObject *self;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|i:Key", kwlist, &key, &digest_size))
        return NULL;
    if (key.len < 1 || key.len > 32 || digest_size < 1 || digest_size > 32) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "a BLAKE2s key is 1 to 32 bytes, digest 1 to 32");
        return NULL;
    }
    self = (KeyObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        pc_b2s_prekey(&self->k, key.buf, (size_t)key.len, (size_t)digest_size);
        memcpy(self->key, key.buf, (size_t)key.len);
    }
    PyBuffer_Release(&key);
    return (PyObject *)self;
}

static PyObject *Key_mac(KeyObject *self, PyObject *arg) {
    Py_buffer in;
    uint8_t out[32];
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0) return NULL;
    if (in.len == 16)
        pc_b2s_mac16(&self->k, in.buf, out, g_use_memo);
    else if (in.len == 0)
        pc_blake2s(out, self->k.outlen, self->key, self->k.keylen, NULL, 0);
    else
        pc_b2s_mac(&self->k, in.buf, (size_t)in.len, out);
    PyBuffer_Release(&in);
    return PyBytes_FromStringAndSize((const char *)out, self->k.outlen);
}

static PyObject *Key_repr(KeyObject *self) {
    return PyUnicode_FromFormat("<pcsock._accel.Key digest_size=%d>", self->k.outlen);
}

static PyMethodDef Key_methods[] = {
    {"mac", (PyCFunction)Key_mac, METH_O,
     "mac(data) -> bytes: BLAKE2s(key, digest_size) of data"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject KeyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pcsock._accel.Key",
    .tp_basicsize = sizeof(KeyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Key(key, digest_size=4): a pre-keyed BLAKE2s state (RFC 7693)",
    .tp_new = Key_new,
    .tp_methods = Key_methods,
    .tp_repr = (reprfunc)Key_repr,
};

/* pcsock.wire.HopKey and where its `_ck` slot lives in an instance (_register_hopkey). */
static PyTypeObject *HopKeyType = NULL;
static Py_ssize_t hopkey_ck_offset = -1;

/* The Key of a HopKey (its _ck attribute); new reference, or NULL with an exception. An
 * exact HopKey's slot is read directly, anything else through getattr. */
static KeyObject *hopkey_ck(PyObject *hopkey) {
    PyObject *ck;
    if (Py_IS_TYPE(hopkey, HopKeyType) && hopkey_ck_offset > 0) {
        ck = *(PyObject **)((char *)hopkey + hopkey_ck_offset);
        if (ck == NULL) {
            PyErr_SetString(PyExc_AttributeError, "_ck");
            return NULL;
        }
        Py_INCREF(ck);
    } else {
        ck = PyObject_GetAttr(hopkey, s_ck);
    }
    if (ck == NULL) return NULL;
    if (!PyObject_TypeCheck(ck, &KeyType)) {
        Py_DECREF(ck);
        PyErr_SetString(PyExc_TypeError, "a hop key's _ck is not a pcsock._accel.Key");
        return NULL;
    }
    return (KeyObject *)ck;
}

/* A value as the reference's struct 'I' field would take it: 0 ok, -1 out of range or not an
 * integer (no exception left set). */
static int as_u32(PyObject *o, uint32_t *out) {
    unsigned long long v;
    PyObject *idx;
    if (PyLong_Check(o)) {
        v = PyLong_AsUnsignedLongLong(o);
    } else if (o != Py_None && PyIndex_Check(o)) {
        idx = PyNumber_Index(o);
        if (idx == NULL) {
            PyErr_Clear();
            return -1;
        }
        v = PyLong_AsUnsignedLongLong(idx);
        Py_DECREF(idx);
    } else {
        return -1;
    }
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (v > 0xFFFFFFFFULL) return -1;
    *out = (uint32_t)v;
    return 0;
}

/* ---- a minimal fast-call argument parser ------------------------------------------------ */

/* Fill out[0..n) from positional args then keywords named in `names`; missing stay NULL. */
static int parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames, const char *const *names, int n, int required,
                      PyObject **out) {
    Py_ssize_t i, k;
    for (i = 0; i < n; i++) out[i] = NULL;
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments", fname, n);
        return -1;
    }
    for (i = 0; i < nargs; i++) out[i] = args[i];
    if (kwnames != NULL) {
        for (k = 0; k < PyTuple_GET_SIZE(kwnames); k++) {
            PyObject *kw = PyTuple_GET_ITEM(kwnames, k);
            const char *name = PyUnicode_AsUTF8(kw);
            int found = 0;
            if (name == NULL) return -1;
            for (i = 0; i < n; i++) {
                if (strcmp(name, names[i]) == 0) {
                    if (out[i] != NULL) {
                        PyErr_Format(PyExc_TypeError, "%s() got multiple values for '%s'",
                                     fname, name);
                        return -1;
                    }
                    out[i] = args[nargs + k];
                    found = 1;
                    break;
                }
            }
            if (!found) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%s'",
                             fname, name);
                return -1;
            }
        }
    }
    for (i = 0; i < required; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname,
                         names[i]);
            return -1;
        }
    }
    return 0;
}

static int opt_long(PyObject *o, long dflt, long *out) {
    if (o == NULL) {
        *out = dflt;
        return 0;
    }
    *out = PyLong_AsLong(o);
    if (*out == -1 && PyErr_Occurred()) {
        /* a value no packet field can equal (e.g. proto=10**30) matches nothing */
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            *out = -2;
            return 0;
        }
        return -1;
    }
    return 0;
}

static int opt_bool(PyObject *o, int dflt) { return o == NULL ? dflt : PyObject_IsTrue(o); }

/* The positional-only helpers' argument check: exactly `want` arguments, the first a
 * bytearray if `bytearray_first`. 0, or -1 with TypeError set. */
static int check_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                      Py_ssize_t want, int bytearray_first) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments", fname, want);
        return -1;
    }
    if (bytearray_first && !PyByteArray_CheckExact(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s() needs a bytearray", fname);
        return -1;
    }
    return 0;
}

/* ---- input bytes ------------------------------------------------------------------------ */

typedef struct {
    Py_buffer view;
    int have_view;
    const uint8_t *p;
    size_t n;
} input_t;

/* The bytes of `data`. A bytearray (or any other exporter) is held through a buffer export:
 * Python code that runs meanwhile (the circuit table's callback, a hop key's attribute) cannot
 * resize it under us. */
static int input_get(PyObject *data, input_t *in) {
    in->have_view = 0;
    if (PyBytes_CheckExact(data)) {
        in->p = (const uint8_t *)PyBytes_AS_STRING(data);
        in->n = (size_t)PyBytes_GET_SIZE(data);
    } else {
        if (PyObject_GetBuffer(data, &in->view, PyBUF_SIMPLE) < 0) return -1;
        in->have_view = 1;
        in->p = in->view.buf;
        in->n = (size_t)in->view.len;
    }
    return 0;
}

static void input_release(input_t *in) {
    if (in->have_view) PyBuffer_Release(&in->view);
}

/* The reference's private buffer: `data` itself if it is a bytearray of exactly the packet's
 * length, else a new bytearray of the packet's bytes. New reference. */
static PyObject *private_buf(PyObject *data, const input_t *in, size_t len) {
    if (PyByteArray_CheckExact(data) && len == in->n) {
        Py_INCREF(data);
        return data;
    }
    return PyByteArray_FromStringAndSize((const char *)in->p, (Py_ssize_t)len);
}

/* The receive checks on `data` with the optional arguments verify_ip_checksum (default
 * true), proto (253) and udp_port (6253): 0 with `in` held (release it), or -1 with the
 * exception (WireError for the packet's reason) set and nothing held. */
static int frame_input(PyObject *data, PyObject *verify_o, PyObject *proto_o, PyObject *port_o,
                       input_t *in, pc_frame_t *f) {
    char detail[96];
    long proto, udp_port;
    int verify, r;
    if ((verify = opt_bool(verify_o, 1)) < 0) return -1;
    if (opt_long(proto_o, 253, &proto) < 0 || opt_long(port_o, 6253, &udp_port) < 0) return -1;
    if (input_get(data, in) < 0) return -1;
    r = pc_frame(in->p, in->n, verify, proto, udp_port, f, detail, sizeof detail);
    if (r != PC_OK) {
        input_release(in);
        wire_error(r, detail);
        return -1;
    }
    return 0;
}

/* ---- frame(data, verify_ip_checksum, proto, udp_port) ----------------------------------- */

static PyObject *py_frame(PyObject *mod, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames) {
    static const char *const names[] = {"data", "verify_ip_checksum", "proto", "udp_port"};
    PyObject *a[4], *buf;
    input_t in;
    pc_frame_t f;
    (void)mod;
    if (parse_args("frame", args, nargs, kwnames, names, 4, 1, a) < 0) return NULL;
    if (frame_input(a[0], a[1], a[2], a[3], &in, &f) < 0) return NULL;
    buf = private_buf(a[0], &in, f.len);
    input_release(&in);
    if (buf == NULL) return NULL;
    return Py_BuildValue("(Niii)", buf, f.ihl, f.vf, f.off);
}

/* ---- the per-hop job on Python values ---------------------------------------------------- */

/* Steps 2-7 for Python route values, in the reference's order (pcsock.wire._hop): bad_mac,
 * hop_limit_exceeded, label/destination out of range, the out key (AttributeError if it is
 * not a HopKey), source out of range. Reads `b`; fills `plan`. 0 or -1 with an exception. */
static int hop_values(const uint8_t *b, const pc_frame_t *f, PyObject *in_key,
                      PyObject *out_label, PyObject *dst, PyObject *out_key, PyObject *src,
                      pc_hop_plan_t *plan) {
    KeyObject *kin, *kout;
    uint32_t label_v = 0, dst_v = 0, src_v = 0;
    int bad_ld, r;
    kin = hopkey_ck(in_key);
    if (kin == NULL) return -1;
    r = pc_hop_verify(b, f, &kin->k, g_use_memo);
    Py_DECREF(kin);
    if (r != PC_OK) {
        wire_error(r, "");
        return -1;
    }
    bad_ld = as_u32(out_label, &label_v) < 0 || as_u32(dst, &dst_v) < 0;
    if (bad_ld) {
        PyObject *msg = PyUnicode_FromFormat("label %R or address %R out of range", out_label,
                                             dst);
        if (msg == NULL) return -1;
        wire_error(PC_BAD_FIELD, PyUnicode_AsUTF8(msg));
        Py_DECREF(msg);
        return -1;
    }
    kout = hopkey_ck(out_key);
    if (kout == NULL) return -1;
    if (src != NULL && src != Py_None && as_u32(src, &src_v) < 0) {
        PyObject *msg = PyUnicode_FromFormat("source address %R out of range", src);
        Py_DECREF(kout);
        if (msg == NULL) return -1;
        wire_error(PC_BAD_FIELD, PyUnicode_AsUTF8(msg));
        Py_DECREF(msg);
        return -1;
    }
    pc_hop_plan(b, f, label_v, dst_v, &kout->k, (src != NULL && src != Py_None) ? &src_v : NULL,
                g_use_memo, plan);
    Py_DECREF(kout);
    return 0;
}

/* switch_hop(data, routes, src=None, *, verify_ip_checksum=True, proto=253, udp_port=6253) */
static PyObject *py_switch_hop(PyObject *mod, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    static const char *const names[] = {"data",  "routes", "src", "verify_ip_checksum",
                                        "proto", "udp_port"};
    PyObject *a[6], *label = NULL, *route = NULL, *seq = NULL, *out = NULL;
    input_t in;
    pc_frame_t f;
    pc_hop_plan_t plan;
    (void)mod;
    if (parse_args("switch_hop", args, nargs, kwnames, names, 6, 2, a) < 0) return NULL;
    if (frame_input(a[0], a[3], a[4], a[5], &in, &f) < 0) return NULL;
    if (f.vf != VF_CIRCUIT) {
        input_release(&in);
        Py_RETURN_NONE;
    }
    label = PyLong_FromUnsignedLong(pc_label(in.p, &f));
    if (label == NULL) goto done;
    route = PyObject_CallOneArg(a[1], label);
    if (route == NULL) goto done;
    if (route == Py_None) {
        out = Py_None;
        Py_INCREF(out);
        goto done;
    }
    seq = PySequence_Fast(route, "cannot unpack a non-iterable route");
    if (seq == NULL) goto done;
    if (PySequence_Fast_GET_SIZE(seq) != 4) {
        Py_ssize_t got = PySequence_Fast_GET_SIZE(seq);
        if (got > 4)
            PyErr_SetString(PyExc_ValueError, "too many values to unpack (expected 4)");
        else
            PyErr_Format(PyExc_ValueError, "not enough values to unpack (expected 4, got %zd)",
                         got);
        goto done;
    }
    {
        PyObject **items = PySequence_Fast_ITEMS(seq);
        if (hop_values(in.p, &f, items[0], items[1], items[2], items[3], a[2], &plan) < 0)
            goto done;
    }
    out = private_buf(a[0], &in, f.len);
    if (out == NULL) goto done;
    pc_hop_apply((uint8_t *)PyByteArray_AS_STRING(out), &f, &plan);
done:
    input_release(&in);
    Py_XDECREF(label);
    Py_XDECREF(route);
    Py_XDECREF(seq);
    return out;
}

/* switch_packet(buf, ihl, shim_off, in_key, out_label, dst, out_key, src): Packet.switch. */
static PyObject *py_switch_packet(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    pc_frame_t f;
    pc_hop_plan_t plan;
    PyObject *buf;
    Py_buffer view;
    (void)mod;
    if (check_args("switch_packet", args, nargs, 8, 1) < 0) return NULL;
    buf = args[0];
    f.len = (size_t)PyByteArray_GET_SIZE(buf);
    f.ihl = (int)PyLong_AsLong(args[1]);
    f.off = (int)PyLong_AsLong(args[2]);
    f.vf = VF_CIRCUIT;
    if (PyErr_Occurred()) return NULL;
    if (f.ihl < 20 || f.off < f.ihl || (size_t)f.off + 16 > f.len) {
        PyErr_SetString(PyExc_ValueError, "switch_packet(): not a framed form-1 packet");
        return NULL;
    }
    if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) return NULL;
    if (hop_values(view.buf, &f, args[3], args[4], args[5], args[6], args[7], &plan) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    pc_hop_apply(view.buf, &f, &plan);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* ---- the site pipeline's form-1 fast path ----------------------------------------------- */

/* form1_in(data, site_addr, verify_ip_checksum, circuits_get)
 * -> None (not the fast path's packet) or (circuit | None, shim offset, hop limit, mac_ok).
 * The eligibility test is pcsite_lite.pipeline's: bytes or bytearray, IPv4 without options,
 * total length = length, protocol 253 (shim at 20) or UDP to port 6253 with a consistent UDP
 * length (shim at 28), shim version 1 form 1, destination = the site, not a fragment, and the
 * header checksum if asked. mac_ok is the form-1 check under circuit.in_key. */
static PyObject *py_form1_in(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *data, *circuit, *in_key, *label, *res;
    const uint8_t *p;
    size_t n;
    unsigned long site_addr;
    uint8_t msg[16], check[4];
    int verify, o, hops, mac_ok = 0;
    (void)mod;
    if (check_args("form1_in", args, nargs, 4, 0) < 0) return NULL;
    data = args[0];
    if (PyBytes_CheckExact(data)) {
        p = (const uint8_t *)PyBytes_AS_STRING(data);
        n = (size_t)PyBytes_GET_SIZE(data);
    } else if (PyByteArray_CheckExact(data)) {
        p = (const uint8_t *)PyByteArray_AS_STRING(data);
        n = (size_t)PyByteArray_GET_SIZE(data);
    } else {
        Py_RETURN_NONE;
    }
    if (n < 36) Py_RETURN_NONE;
    site_addr = PyLong_AsUnsignedLong(args[1]);
    if (site_addr == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    verify = PyObject_IsTrue(args[2]);
    if (verify < 0) return NULL;
    /* (a site address beyond 32 bits matches no packet) */
    if (site_addr > 0xFFFFFFFFUL) Py_RETURN_NONE;
    o = pc_form1_offset(p, n, (uint32_t)site_addr, verify);
    if (!o) Py_RETURN_NONE;
    /* the MAC input and check, copied before any Python code runs (it could change `data`) */
    memcpy(msg, p + o, 12);
    memcpy(msg + 12, p + 16, 4);
    memcpy(check, p + o + 12, 4);
    hops = p[o + 2];
    label = PyLong_FromUnsignedLong(load_be32(p + o + 4));
    if (label == NULL) return NULL;
    circuit = PyObject_CallOneArg(args[3], label);
    Py_DECREF(label);
    if (circuit == NULL) return NULL;
    if (circuit != Py_None) {
        KeyObject *k;
        uint8_t tag[32];
        in_key = PyObject_GetAttr(circuit, s_in_key);
        if (in_key == NULL) {
            Py_DECREF(circuit);
            return NULL;
        }
        k = hopkey_ck(in_key);
        Py_DECREF(in_key);
        if (k == NULL) {
            Py_DECREF(circuit);
            return NULL;
        }
        pc_b2s_mac16(&k->k, msg, tag, g_use_memo);
        Py_DECREF(k);
        mac_ok = ct_equal(tag, check, 4);
    }
    res = PyTuple_New(4);
    if (res == NULL) {
        Py_DECREF(circuit);
        return NULL;
    }
    PyTuple_SET_ITEM(res, 0, circuit);
    PyTuple_SET_ITEM(res, 1, PyLong_FromLong(o));
    PyTuple_SET_ITEM(res, 2, PyLong_FromLong(hops));
    PyTuple_SET_ITEM(res, 3, PyBool_FromLong(mac_ok));
    return res;
}

/* form1_out(buf, shim_off, hop_limit, out_label, next_addr, out_key) -> bytes
 * pcsock.wire.form1_out: the pipeline's egress, in place on the bytearray `buf` (a form-1
 * packet addressed to the site, shim at shim_off: the IPv4 header length, or that plus 8 in
 * UDP mode). The hop's plan and apply (pc_hop_plan/pc_hop_apply, the same code as
 * switch_hop): IPv4 source := the destination it arrived with (the site), destination :=
 * next_addr, one incremental checksum update (read again: a service may have rewritten the
 * payload), hop limit, label, the check under out_key (a HopKey, or None for a zero check),
 * no outer UDP checksum in UDP mode. Returns bytes(buf). Values were range-checked when the
 * circuit was installed. */
static PyObject *py_form1_out(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *buf;
    KeyObject *kout = NULL;
    uint8_t *b;
    Py_ssize_t n;
    long o, hops;
    unsigned long label, addr;
    uint32_t site;
    pc_frame_t f;
    pc_hop_plan_t plan;
    (void)mod;
    if (check_args("form1_out", args, nargs, 6, 1) < 0) return NULL;
    buf = args[0];
    o = PyLong_AsLong(args[1]);
    hops = PyLong_AsLong(args[2]);
    label = PyLong_AsUnsignedLong(args[3]);
    addr = PyLong_AsUnsignedLong(args[4]);
    if (PyErr_Occurred()) return NULL;
    if (hops < 0 || hops > 255 || label > 0xFFFFFFFFUL || addr > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "form1_out(): bad arguments");
        return NULL;
    }
    if (args[5] != Py_None) { /* before anything is read (Python code may run) */
        kout = hopkey_ck(args[5]);
        if (kout == NULL) return NULL;
    }
    n = PyByteArray_GET_SIZE(buf);
    b = (uint8_t *)PyByteArray_AS_STRING(buf);
    f.ihl = n >= 20 ? (b[0] & 15) * 4 : 0;
    f.off = (int)o;
    if (f.ihl < 20 || (o != f.ihl && o != f.ihl + 8) || n < o + 16) {
        Py_XDECREF(kout);
        PyErr_SetString(PyExc_ValueError, "form1_out(): bad arguments");
        return NULL;
    }
    f.len = (size_t)n;
    f.vf = b[o];
    site = load_be32(b + 16); /* the site's address, where the packet arrived */
    hop_plan(b, &f, (uint8_t)hops, (uint32_t)label, (uint32_t)addr,
             kout == NULL ? NULL : &kout->k, &site, g_use_memo, &plan);
    Py_XDECREF(kout);
    pc_hop_apply(b, &f, &plan);
    return PyBytes_FromStringAndSize((const char *)b, n);
}

/* ---- build-and-seal ---------------------------------------------------------------------- */

/* build_circuit(src, dst, label, key, payload, metadata, orig_src, next_proto, hop_limit, ttl,
 *               tos, ident, udp, sport, dport, proto) -> bytearray
 * pcsock.wire.build_circuit_packet after its argument checks (all integers in range, key a
 * HopKey or None): IPv4 (DF, checksum) / [UDP, checksum 0] / form-1 shim sealed under key
 * (check zero if None) / payload. */
static PyObject *py_build_circuit(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    unsigned long v[16];
    int i, udp;
    Py_buffer pl;
    size_t hdr, total;
    PyObject *out;
    uint8_t *b, *s;
    (void)mod;
    if (check_args("build_circuit", args, nargs, 16, 0) < 0) return NULL;
    for (i = 0; i < 16; i++) {
        if (i == 3 || i == 4 || i == 12) continue;
        v[i] = PyLong_AsUnsignedLong(args[i]);
        if (v[i] == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    }
    udp = PyObject_IsTrue(args[12]);
    if (udp < 0) return NULL;
    if (PyObject_GetBuffer(args[4], &pl, PyBUF_SIMPLE) < 0) return NULL;
    hdr = 20 + (udp ? 8 : 0) + 16;
    total = hdr + (size_t)pl.len;
    if (total > 0xFFFF) {
        PyBuffer_Release(&pl);
        return wire_error(PC_BAD_FIELD, "packet exceeds the IPv4 maximum");
    }
    out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL) {
        PyBuffer_Release(&pl);
        return NULL;
    }
    b = (uint8_t *)PyByteArray_AS_STRING(out);
    b[0] = 0x45;
    b[1] = (uint8_t)v[10];
    store_be16(b + 2, (uint16_t)total);
    store_be16(b + 4, (uint16_t)v[11]);
    store_be16(b + 6, 0x4000);
    b[8] = (uint8_t)v[9];
    b[9] = (uint8_t)(udp ? 17 : v[15]);
    store_be16(b + 10, 0);
    store_be32(b + 12, (uint32_t)v[0]);
    store_be32(b + 16, (uint32_t)v[1]);
    store_be16(b + 10, ip_header_checksum(b, 20));
    if (udp) {
        store_be16(b + 20, (uint16_t)v[13]);
        store_be16(b + 22, (uint16_t)v[14]);
        store_be16(b + 24, (uint16_t)(total - 20));
        store_be16(b + 26, 0);
    }
    s = b + hdr - 16;
    s[0] = VF_CIRCUIT;
    s[1] = (uint8_t)v[7];
    s[2] = (uint8_t)v[8];
    s[3] = (uint8_t)v[5];
    store_be32(s + 4, (uint32_t)v[2]);
    store_be32(s + 8, (uint32_t)v[6]);
    if (args[3] == Py_None) {
        memset(s + 12, 0, 4);
    } else {
        KeyObject *k = hopkey_ck(args[3]);
        uint8_t msg[16], tag[32];
        if (k == NULL) {
            PyBuffer_Release(&pl);
            Py_DECREF(out);
            return NULL;
        }
        memcpy(msg, s, 12);
        store_be32(msg + 12, (uint32_t)v[1]);
        pc_b2s_mac16(&k->k, msg, tag, g_use_memo);
        Py_DECREF(k);
        memcpy(s + 12, tag, 4);
    }
    if (pl.len) memcpy(b + hdr, pl.buf, (size_t)pl.len);
    PyBuffer_Release(&pl);
    return out;
}

/* ---- Sender: a circuit's datagrams straight to the kernel -------------------------------- */

#define SENDER_PREFIX_MAX 64
#define SENDER_BATCH 64

typedef struct {
    PyObject_HEAD
    int fd;
    int ip_header; /* raw-IP mode: the prefix starts with a 20-byte IPv4 header */
    uint16_t ident;
    struct sockaddr_in to;
    size_t prefix_len;
    uint8_t prefix[SENDER_PREFIX_MAX];
    unsigned long long sent;
} SenderObject;

static PyTypeObject SenderType;

static PyObject *Sender_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "addr", "port", "prefix", "ip_header", "ident", NULL};
    int fd, port, ip_header = 0, ident = 0;
    unsigned long addr;
    Py_buffer prefix;
    SenderObject *self;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ikiy*|pi:Sender", kwlist, &fd, &addr, &port,
                                     &prefix, &ip_header, &ident))
        return NULL;
    if (prefix.len < 8 || prefix.len > SENDER_PREFIX_MAX || addr > 0xFFFFFFFFUL || port < 0 ||
        port > 0xFFFF || (ip_header && prefix.len < 28)) {
        PyBuffer_Release(&prefix);
        PyErr_SetString(PyExc_ValueError, "Sender: bad prefix, address or port");
        return NULL;
    }
    self = (SenderObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->fd = fd;
        self->ip_header = ip_header;
        self->ident = (uint16_t)ident;
        memset(&self->to, 0, sizeof self->to);
        self->to.sin_family = AF_INET;
        self->to.sin_port = htons((uint16_t)port);
        self->to.sin_addr.s_addr = htonl((uint32_t)addr);
        self->prefix_len = (size_t)prefix.len;
        memcpy(self->prefix, prefix.buf, (size_t)prefix.len);
    }
    PyBuffer_Release(&prefix);
    return (PyObject *)self;
}

/* Write this datagram's prefix into `out`: inner UDP length (the prefix's last 8 bytes are the
 * application's UDP header), and in raw-IP mode total length, identification and checksum. */
static int sender_prefix(SenderObject *self, uint8_t *out, size_t payload_len) {
    size_t total = self->prefix_len + payload_len;
    if (8 + payload_len > 0xFFFF || (self->ip_header && total > 0xFFFF)) return -1;
    memcpy(out, self->prefix, self->prefix_len);
    store_be16(out + self->prefix_len - 4, (uint16_t)(8 + payload_len));
    if (self->ip_header) {
        self->ident = (uint16_t)(self->ident + 1);
        store_be16(out + 2, (uint16_t)total);
        store_be16(out + 4, self->ident);
        store_be16(out + 10, 0);
        store_be16(out + 10, ip_header_checksum(out, 20));
    }
    return 0;
}

/* After EAGAIN (a socket with a timeout is non-blocking): wait until the socket can take a
 * datagram. 0 to try again, -1 with an exception set (a signal handler raised, or poll
 * failed). */
static int wait_writable(int fd) {
    struct pollfd pfd;
    int r;
    pfd.fd = fd;
    pfd.events = POLLOUT;
    pfd.revents = 0;
    Py_BEGIN_ALLOW_THREADS
    r = poll(&pfd, 1, -1);
    Py_END_ALLOW_THREADS
    if (r >= 0) return 0;
    if (errno == EINTR) return PyErr_CheckSignals();
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

/* One datagram; block: wait while the socket buffer is full (else raise BlockingIOError, the
 * datagram not sent and its IPv4 identification not used). */
static PyObject *sender_send(SenderObject *self, PyObject *payload, int block) {
    Py_buffer pl;
    uint8_t head[SENDER_PREFIX_MAX];
    struct iovec iov[2];
    struct msghdr msg;
    ssize_t r;
    if (PyObject_GetBuffer(payload, &pl, PyBUF_SIMPLE) < 0) return NULL;
    if (sender_prefix(self, head, (size_t)pl.len) < 0) {
        PyBuffer_Release(&pl);
        return wire_error(PC_BAD_FIELD, "datagram too large");
    }
    iov[0].iov_base = head;
    iov[0].iov_len = self->prefix_len;
    iov[1].iov_base = pl.buf;
    iov[1].iov_len = (size_t)pl.len;
    memset(&msg, 0, sizeof msg);
    msg.msg_name = &self->to;
    msg.msg_namelen = sizeof self->to;
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        r = sendmsg(self->fd, &msg, 0);
        Py_END_ALLOW_THREADS
        if (r >= 0) break;
        if (errno == EINTR) {
            if (PyErr_CheckSignals() < 0) goto fail;
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (!block) {
                if (self->ip_header) self->ident = (uint16_t)(self->ident - 1);
                PyErr_SetFromErrno(PyExc_OSError); /* BlockingIOError */
                goto fail;
            }
            if (wait_writable(self->fd) < 0) goto fail;
            continue;
        }
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    self->sent++;
    r = pl.len;
    PyBuffer_Release(&pl);
    return PyLong_FromSsize_t(r);
fail:
    PyBuffer_Release(&pl);
    return NULL;
}

static PyObject *Sender_send(SenderObject *self, PyObject *payload) {
    return sender_send(self, payload, 1);
}

/* send_nowait(payload): as send, for an event loop: BlockingIOError instead of waiting. */
static PyObject *Sender_send_nowait(SenderObject *self, PyObject *payload) {
    return sender_send(self, payload, 0);
}

/* send_many(payloads) -> count: every payload as its own datagram, up to 64 per sendmmsg(2)
 * call. On an error, the datagrams before it were sent and the error is raised. */
static PyObject *Sender_send_many(SenderObject *self, PyObject *payloads) {
    PyObject *seq;
    Py_ssize_t n, i, done = 0;
    Py_buffer bufs[SENDER_BATCH];
    uint8_t heads[SENDER_BATCH][SENDER_PREFIX_MAX];
    struct iovec iov[SENDER_BATCH][2];
    struct mmsghdr msgs[SENDER_BATCH];
    seq = PySequence_Fast(payloads, "send_many() needs a sequence of payloads");
    if (seq == NULL) return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    while (done < n) {
        int batch = (int)(n - done < SENDER_BATCH ? n - done : SENDER_BATCH);
        int got = 0, sent = 0, r;
        uint16_t ident0 = self->ident;
        for (i = 0; i < batch; i++) {
            PyObject *item = PySequence_Fast_GET_ITEM(seq, done + i);
            if (PyObject_GetBuffer(item, &bufs[i], PyBUF_SIMPLE) < 0) goto fail_release;
            got++;
            if (sender_prefix(self, heads[i], (size_t)bufs[i].len) < 0) {
                wire_error(PC_BAD_FIELD, "datagram too large");
                goto fail_release;
            }
            iov[i][0].iov_base = heads[i];
            iov[i][0].iov_len = self->prefix_len;
            iov[i][1].iov_base = bufs[i].buf;
            iov[i][1].iov_len = (size_t)bufs[i].len;
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_name = &self->to;
            msgs[i].msg_hdr.msg_namelen = sizeof self->to;
            msgs[i].msg_hdr.msg_iov = iov[i];
            msgs[i].msg_hdr.msg_iovlen = 2;
        }
        while (sent < batch) {
            Py_BEGIN_ALLOW_THREADS
            r = sendmmsg(self->fd, msgs + sent, (unsigned)(batch - sent), 0);
            Py_END_ALLOW_THREADS
            if (r > 0) {
                sent += r;
                continue;
            }
            if (r < 0 && errno == EINTR) {
                if (PyErr_CheckSignals() < 0) goto fail_sent;
                continue;
            }
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                if (wait_writable(self->fd) < 0) goto fail_sent;
                continue;
            }
            if (r == 0) errno = EIO; /* cannot happen for a non-empty batch */
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail_sent;
        }
        for (i = 0; i < got; i++) PyBuffer_Release(&bufs[i]);
        self->sent += (unsigned long long)batch;
        done += batch;
        continue;
    fail_sent:
        self->sent += (unsigned long long)sent;
        for (i = 0; i < got; i++) PyBuffer_Release(&bufs[i]);
        Py_DECREF(seq);
        return NULL;
    fail_release:
        self->ident = ident0;
        for (i = 0; i < got; i++) PyBuffer_Release(&bufs[i]);
        Py_DECREF(seq);
        return NULL;
    }
    Py_DECREF(seq);
    return PyLong_FromSsize_t(n);
}

static PyObject *Sender_get_sent(SenderObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->sent);
}

static PyObject *Sender_get_ident(SenderObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(self->ident);
}

static PyMethodDef Sender_methods[] = {
    {"send", (PyCFunction)Sender_send, METH_O,
     "send(payload) -> len(payload): one datagram (prefix + payload, one sendmsg)"},
    {"send_nowait", (PyCFunction)Sender_send_nowait, METH_O,
     "send_nowait(payload) -> len(payload): as send; BlockingIOError when the socket is full"},
    {"send_many", (PyCFunction)Sender_send_many, METH_O,
     "send_many(payloads) -> count: one datagram each, batched with sendmmsg"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Sender_getset[] = {
    {"sent", (getter)Sender_get_sent, NULL, "datagrams the kernel took", NULL},
    {"ident", (getter)Sender_get_ident, NULL, "the last IPv4 identification (raw-IP mode)",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SenderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pcsock._accel.Sender",
    .tp_basicsize = sizeof(SenderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sender(fd, addr, port, prefix, ip_header=False, ident=0): a circuit's sealed "
              "prefix (shim + the application's UDP header, after an IPv4 header in raw-IP "
              "mode) sent ahead of each payload with sendmsg/sendmmsg, without a copy",
    .tp_new = Sender_new,
    .tp_methods = Sender_methods,
    .tp_getset = Sender_getset,
};

/* ---- module ------------------------------------------------------------------------------ */

static PyObject *py_setup(PyObject *mod, PyObject *wire_error_type) {
    (void)mod;
    Py_XSETREF(WireErrorType, Py_NewRef(wire_error_type));
    Py_RETURN_NONE;
}

/* _register_hopkey(HopKey): remember the class and the offset of its `_ck` slot (a member
 * descriptor of __slots__), so the hop reads a hop key's C state without a getattr. */
static PyObject *py_register_hopkey(PyObject *mod, PyObject *cls) {
    PyObject *d;
    (void)mod;
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "_register_hopkey() needs a class");
        return NULL;
    }
    d = PyObject_GetAttr(cls, s_ck);
    if (d == NULL) return NULL;
    if (Py_IS_TYPE(d, &PyMemberDescr_Type) &&
        ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX) {
        Py_XSETREF(HopKeyType, (PyTypeObject *)Py_NewRef(cls));
        hopkey_ck_offset = ((PyMemberDescrObject *)d)->d_member->offset;
    }
    Py_DECREF(d);
    Py_RETURN_NONE;
}

static PyObject *py_blake2s(PyObject *mod, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"data", "key", "digest_size", NULL};
    Py_buffer data, key = {0};
    int digest_size = 32;
    uint8_t out[32];
    (void)mod;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|y*i:blake2s", kwlist, &data, &key,
                                     &digest_size))
        return NULL;
    if (key.len > 32 || digest_size < 1 || digest_size > 32) {
        PyBuffer_Release(&data);
        if (key.obj) PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "key up to 32 bytes, digest 1 to 32 bytes");
        return NULL;
    }
    pc_blake2s(out, (size_t)digest_size, key.obj ? key.buf : NULL, key.obj ? (size_t)key.len : 0,
               data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    if (key.obj) PyBuffer_Release(&key);
    return PyBytes_FromStringAndSize((const char *)out, digest_size);
}

static PyObject *py_set_memo(PyObject *mod, PyObject *arg) {
    int old = g_use_memo, v = PyObject_IsTrue(arg);
    (void)mod;
    if (v < 0) return NULL;
    g_use_memo = v;
    return PyBool_FromLong(old);
}

static PyMethodDef module_methods[] = {
    {"_setup", (PyCFunction)py_setup, METH_O, "_setup(WireError): the exception to raise"},
    {"_register_hopkey", (PyCFunction)py_register_hopkey, METH_O,
     "_register_hopkey(HopKey): read hop keys' _ck slot directly"},
    {"blake2s", (PyCFunction)(void (*)(void))py_blake2s, METH_VARARGS | METH_KEYWORDS,
     "blake2s(data, key=b'', digest_size=32) -> bytes (RFC 7693)"},
    {"set_memo", (PyCFunction)py_set_memo, METH_O,
     "set_memo(flag) -> old flag: use the keys' last-MAC memo (default on)"},
    {"frame", (PyCFunction)(void (*)(void))py_frame, METH_FASTCALL | METH_KEYWORDS,
     "frame(data, verify_ip_checksum=True, proto=253, udp_port=6253) -> (buf, ihl, vf, off)"},
    {"switch_hop", (PyCFunction)(void (*)(void))py_switch_hop, METH_FASTCALL | METH_KEYWORDS,
     "switch_hop(data, routes, src=None, *, verify_ip_checksum=True, proto=253, "
     "udp_port=6253): pcsock.wire.switch_hop"},
    {"switch_packet", (PyCFunction)(void (*)(void))py_switch_packet, METH_FASTCALL,
     "switch_packet(buf, ihl, off, in_key, label, dst, out_key, src): Packet.switch"},
    {"form1_in", (PyCFunction)(void (*)(void))py_form1_in, METH_FASTCALL,
     "form1_in(data, site_addr, verify_ip_checksum, circuits_get): the pipeline's ingress"},
    {"form1_out", (PyCFunction)(void (*)(void))py_form1_out, METH_FASTCALL,
     "form1_out(buf, off, hop_limit, label, addr, out_key) -> bytes: the pipeline's egress"},
    {"build_circuit", (PyCFunction)(void (*)(void))py_build_circuit, METH_FASTCALL,
     "build_circuit(...): pcsock.wire.build_circuit_packet after its checks"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT, "pcsock._accel",
    "The PacketCloud codec accelerator: BLAKE2s (RFC 7693), the per-hop job and the sender's "
    "build-and-seal in C, behind pcsock.wire (the pure-Python reference).",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__accel(void) {
    PyObject *m;
    int i;
    if (PyType_Ready(&KeyType) < 0 || PyType_Ready(&SenderType) < 0) return NULL;
    m = PyModule_Create(&accel_module);
    if (m == NULL) return NULL;
    s_ck = PyUnicode_InternFromString("_ck");
    s_in_key = PyUnicode_InternFromString("in_key");
    if (s_ck == NULL || s_in_key == NULL) return NULL;
    for (i = 0; i < PC_NREASONS; i++) {
        S_reason[i] = PyUnicode_InternFromString(REASON_NAMES[i]);
        if (S_reason[i] == NULL) return NULL;
    }
    Py_INCREF(&KeyType);
    if (PyModule_AddObject(m, "Key", (PyObject *)&KeyType) < 0) return NULL;
    Py_INCREF(&SenderType);
    if (PyModule_AddObject(m, "Sender", (PyObject *)&SenderType) < 0) return NULL;
    return m;
}

#endif /* PC_ACCEL_NO_PYTHON */
