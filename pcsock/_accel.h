/* pcsock/_accel.h: the C-level interface of the PacketCloud codec accelerator.
 *
 * Everything here is plain C (no Python): keyed BLAKE2s written from RFC 7693, the receive
 * checks of docs/protocol.md §2.4 and the per-hop job of §5.3. pcsock/_accel.c implements
 * it and also wraps it for Python (pcsock._accel); a C worker loop can include this header
 * and compile pcsock/_accel.c with -DPC_ACCEL_NO_PYTHON to get the same functions without
 * the Python glue.
 *
 * The pure-Python reference is pcsock/wire.py; tests/wire/test_accel_differential.py checks
 * that both give byte-identical output and the same drop reasons.
 */
#ifndef PCSOCK_ACCEL_H
#define PCSOCK_ACCEL_H

#include <stddef.h>
#include <stdint.h>

/* ---- BLAKE2s (RFC 7693) ---------------------------------------------------------------- */

/* A pre-keyed BLAKE2s state: the chaining value after the key block (RFC 7693 §3.3, the key
 * padded to one 64-byte block and compressed first), for one digest size. A form-1 check is
 * then one compression of the 16-byte MAC input. The memo remembers the last MAC input and
 * its digest (all packets of one circuit hop with the same metadata and hop limit carry the
 * same check, docs/protocol.md §5.1): a repeat costs a 16-byte compare. Not thread-safe: one
 * key per thread, or the GIL. */
typedef struct {
    uint32_t h[8];
    uint8_t keylen;
    uint8_t outlen;
    uint8_t memo_ok;
    uint8_t memo_in[16];
    uint8_t memo_out[32];
} pc_b2s_key;

/* One-shot BLAKE2s: outlen 1..32, keylen 0..32 (key may be NULL if keylen is 0). */
void pc_blake2s(uint8_t *out, size_t outlen, const uint8_t *key, size_t keylen,
                const uint8_t *in, size_t inlen);
/* Prepare a pre-keyed state (keylen 1..32, outlen 1..32). */
void pc_b2s_prekey(pc_b2s_key *k, const uint8_t *key, size_t keylen, size_t outlen);
/* BLAKE2s(key, outlen) of a 16-byte message, through the key's memo if use_memo. */
void pc_b2s_mac16(pc_b2s_key *k, const uint8_t msg[16], uint8_t *out, int use_memo);
/* BLAKE2s(key, outlen) of a message of 1 or more bytes (an empty message makes the key
 * block the last block: use pc_blake2s). */
void pc_b2s_mac(const pc_b2s_key *k, const uint8_t *in, size_t inlen, uint8_t *out);

/* ---- receive checks (docs/protocol.md §2.4) -------------------------------------------- */

/* Drop reasons, the tokens of pcsock.wire.REASONS (pc_reason_name gives the token). */
enum pc_reason {
    PC_OK = 0,
    PC_TRUNCATED,
    PC_NOT_IPV4,
    PC_BAD_IP_HEADER_LENGTH,
    PC_BAD_IP_TOTAL_LENGTH,
    PC_BAD_IP_CHECKSUM,
    PC_FRAGMENT,
    PC_BAD_UDP_LENGTH,
    PC_BAD_VERSION,
    PC_UNKNOWN_FORM,
    PC_BAD_MAC,
    PC_BAD_CHECK,
    PC_HOP_LIMIT_EXCEEDED,
    PC_BAD_FIELD,
    PC_NREASONS
};
const char *pc_reason_name(int reason);

/* What pc_frame found: the packet is the first `len` bytes (the IPv4 total length), the IPv4
 * header is `ihl` bytes, the shim (if any) starts at `off` with version/form byte `vf` (0 and
 * off -1 for a plain IPv4 packet). The shim is complete (16 bytes for form 1, 9 for form 2). */
typedef struct {
    size_t len;
    int ihl;
    int off;
    int vf;
} pc_frame_t;

/* Every receive check of §2.4, in the order of pcsock.wire._frame. Returns PC_OK or a
 * reason; `detail` (may be NULL) receives a short human-readable explanation. */
int pc_frame(const uint8_t *p, size_t n, int verify_ip_checksum, long proto, long udp_port,
             pc_frame_t *f, char *detail, size_t detail_len);

/* ---- the per-hop job (docs/protocol.md §5.3) ------------------------------------------- */

/* Steps 2-7 on a framed form-1 packet, in three parts so that a caller can check its own
 * route values between them in the reference's order (pcsock.wire._hop):
 *   pc_hop_verify  verify the check under in_key (PC_BAD_MAC), refuse hop limit 0
 *                  (PC_HOP_LIMIT_EXCEEDED); reads only;
 *   pc_hop_plan    compute what the hop writes: out_label, hop limit - 1, destination (and
 *                  source unless src is NULL) with the incremental IPv4 checksum update
 *                  (RFC 1624 eqn. 3), the check under out_key (NULL: zero); reads only;
 *   pc_hop_apply   write the plan (and zero the outer UDP checksum in UDP mode).
 * pc_hop does all three; nothing is written unless it returns PC_OK. */
typedef struct {
    uint16_t csum;
    uint32_t src;
    uint32_t dst;
    uint32_t label;
    uint8_t hops;
    uint8_t tag[4];
} pc_hop_plan_t;

int pc_hop_verify(const uint8_t *b, const pc_frame_t *f, pc_b2s_key *in_key, int use_memo);
void pc_hop_plan(const uint8_t *b, const pc_frame_t *f, uint32_t out_label, uint32_t dst,
                 pc_b2s_key *out_key, const uint32_t *src, int use_memo, pc_hop_plan_t *plan);
void pc_hop_apply(uint8_t *b, const pc_frame_t *f, const pc_hop_plan_t *plan);
int pc_hop(uint8_t *b, const pc_frame_t *f, pc_b2s_key *in_key, uint32_t out_label,
           uint32_t dst, pc_b2s_key *out_key, const uint32_t *src, int use_memo);

/* The pipeline's form-1 fast path eligibility (pcsite_lite.pipeline): IPv4 without options,
 * total length = n, protocol 253 (shim at 20) or UDP to port 6253 with a consistent UDP length
 * (shim at 28), shim version 1 form 1, destination = site_addr, not a fragment, and the IPv4
 * header checksum if verify_ip_checksum. Returns the shim offset, or 0 (not that packet). */
int pc_form1_offset(const uint8_t *p, size_t n, uint32_t site_addr, int verify_ip_checksum);

/* The label of a framed form-1 packet. */
static inline uint32_t pc_label(const uint8_t *b, const pc_frame_t *f) {
    const uint8_t *s = b + f->off + 4;
    return (uint32_t)s[0] << 24 | (uint32_t)s[1] << 16 | (uint32_t)s[2] << 8 | s[3];
}

#endif /* PCSOCK_ACCEL_H */
