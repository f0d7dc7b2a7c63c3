/* Per-token Arrow's mixture weights on CPUs, one call per projection: for each routed row, scores
   |x . v_c| over its candidates (v_c read in place from the pool; c competes only where its prototype
   offset is >= 0), top_k of them, softmax(top / temperature); writes each (row, candidate) entry's
   weight, 0 for the unchosen; arrow_apply then adds the chosen candidates' deltas too, in the same call.
   Rows with levels (> 0), at a projection some but not all of their candidates target: scores are
   |cos(x, v_c)| / level_c and the base model competes at 1 with a zero delta (kernels/arrow_rows.py).
   The offset tables are read in place, column views of the step's (slots, L, M) tables (stride ld_off).
   The torch twin takes ~15 small torch calls per projection for what is a few thousand multiply-adds
   per row, and computes every candidate's delta. */
#include <math.h>
#include <stdint.h>

#include "bf16.h"

#define MAX_CANDIDATES 64
#define MAX_FEATURES 65536 /* x row and output accumulator on the stack: 256 KiB each */
#define MAX_RANK 256

/* w[c] for one routed row: |x . v_c| over its candidates, top_k, softmax(top * inv_temp); 0 = not chosen.
   With levels where the candidates' targets differ here: |cos| / level, and the base (index C) at 1. */
#define ROW_WEIGHTS(NAME, T, LOAD)                                                                   \
    static void NAME(const T *xr, const T *pool, int64_t d_in, const int64_t *proto_off, int64_t ld_off, \
                     const int64_t *slots, const float *levels, int64_t C, int64_t top_k,           \
                     float inv_temp, float *w) {                                                    \
        float s[MAX_CANDIDATES + 1];                                                                \
        int chosen[MAX_CANDIDATES + 1];                                                             \
        int present = 0, real = 0;                                                                  \
        for (int64_t c = 0; c < C; c++) {                                                           \
            const int64_t off = slots[c] >= 0 ? proto_off[slots[c] * ld_off] : -1;                  \
            chosen[c] = 0;                                                                          \
            s[c] = -INFINITY;                                                                       \
            real += slots[c] >= 0;                                                                  \
            if (off < 0) continue;                                                                  \
            present++;                                                                              \
            const T *v = pool + off;                                                                \
            float acc = 0.f;                                                                        \
            for (int64_t k = 0; k < d_in; k++) acc += LOAD(xr[k]) * LOAD(v[k]);                     \
            s[c] = fabsf(acc);                                                                      \
        }                                                                                           \
        int64_t n = C;                                                                              \
        if (levels != 0 && levels[0] > 0.f && present > 0 && present < real) {                      \
            float xx = 0.f;                                                                         \
            for (int64_t k = 0; k < d_in; k++) xx += LOAD(xr[k]) * LOAD(xr[k]);                     \
            const float inv_norm = xx > 0.f ? 1.f / sqrtf(xx) : 0.f;                                \
            for (int64_t c = 0; c < C; c++)                                                         \
                if (s[c] > -INFINITY) s[c] = s[c] * inv_norm / levels[c];                           \
            s[C] = 1.f;                                                                             \
            chosen[C] = 0;                                                                          \
            n = C + 1;                                                                              \
        }                                                                                           \
        float top = -INFINITY;                                                                      \
        for (int64_t j = 0; j < top_k; j++) { /* the first of equal scores, as torch.topk */        \
            int64_t best = -1;                                                                      \
            for (int64_t c = 0; c < n; c++)                                                         \
                if (!chosen[c] && s[c] > -INFINITY && (best < 0 || s[c] > s[best])) best = c;       \
            if (best < 0) break;                                                                    \
            chosen[best] = 1;                                                                       \
            if (j == 0) top = s[best];                                                              \
        }                                                                                           \
        float sum = 0.f, e[MAX_CANDIDATES + 1];                                                     \
        for (int64_t c = 0; c < n; c++) {                                                           \
            e[c] = chosen[c] ? expf((s[c] - top) * inv_temp) : 0.f;                                 \
            sum += e[c];                                                                            \
        }                                                                                           \
        for (int64_t c = 0; c < C; c++) w[c] = sum > 0.f ? e[c] / sum : 0.f; /* the base's share: no delta */ \
    }

/* The weights of every (row, candidate) entry: w_out[cand_entries[r, c]]. */
#define ARROW_WEIGHTS(NAME, ROW, T)                                                                  \
    int NAME(const T *x, int64_t ldx, const T *pool, int64_t d_in, const int64_t *proto_off, int64_t ld_off, \
             int64_t R, int64_t C, const int64_t *rows, const int64_t *cand_slots,                  \
             const int64_t *cand_entries, const float *levels, const int64_t *top_k, const float *inv_temp, \
             float *w_out) {                                                                        \
        if (C > MAX_CANDIDATES) return -1;                                                          \
        for (int64_t r = 0; r < R; r++) {                                                           \
            float w[MAX_CANDIDATES];                                                                \
            ROW(x + rows[r] * ldx, pool, d_in, proto_off, ld_off, cand_slots + r * C, levels ? levels + r * C : 0, C, \
                top_k[r], inv_temp[r], w);                                                          \
            for (int64_t c = 0; c < C; c++)                                                         \
                if (cand_entries[r * C + c] >= 0) w_out[cand_entries[r * C + c]] = w[c];            \
        }                                                                                           \
        return 0;                                                                                   \
    }

/* Fused: weights, then out[row] += sum over chosen c of w_c * scale_c * B_c (A_c x) read in place from
   the pool. Rows go in blocks of ROWS (a prefill chunk's rows share their candidates): the rows of a block
   that chose the same slot in candidate column c share every read of its A and B, and each row still
   sums its candidates in column order. Blocks hold disjoint rows, so threads write disjoint rows. */
#define ROWS 8
#define ARROW_APPLY(NAME, ROW, T, LOAD, STORE)                                                       \
    int NAME(const T *x, int64_t ldx, T *out, int64_t ldo, const T *pool, int64_t d_in,             \
             int64_t d_out, const int64_t *proto_off, const int64_t *a_off, const int64_t *b_off,   \
             int64_t ld_off,                                                                        \
             const int32_t *ranks, const float *scalings, int64_t R, int64_t C,                     \
             const int64_t *rows, const int64_t *cand_slots, const float *levels,                   \
             const int64_t *top_k, const float *inv_temp, int64_t num_threads) {                    \
        if (C > MAX_CANDIDATES || d_in > MAX_FEATURES || d_out > MAX_FEATURES) return -1;            \
        /* x rows and accumulators on the stack: at most 2 * MAX_FEATURES floats a block, as one row before */ \
        const int64_t rt = (d_in + d_out) * ROWS <= 2 * MAX_FEATURES ? ROWS : 1;                    \
        const int64_t n_blocks = (R + rt - 1) / rt;                                                 \
        _Pragma("omp parallel for schedule(dynamic, 1) num_threads(num_threads) if (n_blocks > 1)") \
        for (int64_t blk = 0; blk < n_blocks; blk++) {                                              \
            const int64_t r0 = blk * rt, n = R - r0 < rt ? R - r0 : rt;                             \
            float w[ROWS][MAX_CANDIDATES], xf[rt][d_in], acc[rt][d_out], y[ROWS][MAX_RANK], coef[ROWS]; \
            int members[ROWS];                                                                      \
            for (int64_t q = 0; q < n; q++) {                                                       \
                const T *xr = x + rows[r0 + q] * ldx;                                               \
                ROW(xr, pool, d_in, proto_off, ld_off, cand_slots + (r0 + q) * C, levels ? levels + (r0 + q) * C : 0, \
                    C, top_k[r0 + q], inv_temp[r0 + q], w[q]);                                      \
                for (int64_t k = 0; k < d_in; k++) xf[q][k] = LOAD(xr[k]);                          \
                for (int64_t o = 0; o < d_out; o++) acc[q][o] = 0.f;                                \
            }                                                                                       \
            for (int64_t c = 0; c < C; c++) {                                                       \
                int done[ROWS] = {0};                                                               \
                for (int64_t lead = 0; lead < n; lead++) { /* each distinct slot of column c once */  \
                    const int64_t slot = cand_slots[(r0 + lead) * C + c];                           \
                    if (done[lead]) continue;                                                       \
                    int m = 0;                                                                      \
                    for (int64_t q = lead; q < n; q++)                                              \
                        if (!done[q] && cand_slots[(r0 + q) * C + c] == slot) {                     \
                            done[q] = 1;                                                            \
                            if (w[q][c] != 0.f) members[m++] = (int)q;                              \
                        }                                                                           \
                    if (m == 0 || slot < 0 || a_off[slot * ld_off] < 0 || b_off[slot * ld_off] < 0) continue; \
                    const int64_t rank = ranks[slot] < MAX_RANK ? ranks[slot] : MAX_RANK;           \
                    const T *A = pool + a_off[slot * ld_off], *B = pool + b_off[slot * ld_off];     \
                    for (int i = 0; i < m; i++) coef[i] = w[members[i]][c] * scalings[slot];        \
                    for (int64_t j = 0; j < rank; j++) {                                            \
                        const T *a = A + j * d_in;                                                  \
                        for (int i = 0; i < m; i++) {                                               \
                            const float *xq = xf[members[i]];                                       \
                            float s = 0.f;                                                          \
                            for (int64_t k = 0; k < d_in; k++) s += LOAD(a[k]) * xq[k];             \
                            y[i][j] = s * coef[i];                                                  \
                        }                                                                           \
                    }                                                                               \
                    if (m > 1 && rank * d_out <= MAX_FEATURES) { /* B^T once, then axpys along o */    \
                        float bt[rank * d_out];                                                     \
                        for (int64_t o = 0; o < d_out; o++)                                         \
                            for (int64_t j = 0; j < rank; j++) bt[j * d_out + o] = LOAD(B[o * rank + j]); \
                        for (int i = 0; i < m; i++) {                                               \
                            float *ai = acc[members[i]];                                            \
                            for (int64_t j = 0; j < rank; j++) {                                    \
                                const float yj = y[i][j], *bj = bt + j * d_out;                     \
                                for (int64_t o = 0; o < d_out; o++) ai[o] += bj[o] * yj;            \
                            }                                                                       \
                        }                                                                           \
                        continue;                                                                   \
                    }                                                                               \
                    for (int64_t o = 0; o < d_out; o++) {                                           \
                        const T *b = B + o * rank;                                                  \
                        for (int i = 0; i < m; i++) {                                               \
                            float s = 0.f;                                                          \
                            for (int64_t j = 0; j < rank; j++) s += LOAD(b[j]) * y[i][j];           \
                            acc[members[i]][o] += s;                                                \
                        }                                                                           \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
            for (int64_t q = 0; q < n; q++) {                                                       \
                T *orow = out + rows[r0 + q] * ldo;                                                 \
                for (int64_t o = 0; o < d_out; o++) orow[o] = STORE(LOAD(orow[o]) + acc[q][o]);     \
            }                                                                                       \
        }                                                                                           \
        return 0;                                                                                   \
    }

#define LOAD_F32(v) (v)
#define STORE_F32(v) (v)

ROW_WEIGHTS(row_weights_f32, float, LOAD_F32)
ROW_WEIGHTS(row_weights_bf16, uint16_t, bf16_to_f32)
ARROW_WEIGHTS(arrow_weights_f32, row_weights_f32, float)
ARROW_WEIGHTS(arrow_weights_bf16, row_weights_bf16, uint16_t)
ARROW_APPLY(arrow_apply_f32, row_weights_f32, float, LOAD_F32, STORE_F32)
ARROW_APPLY(arrow_apply_bf16, row_weights_bf16, uint16_t, bf16_to_f32, f32_to_bf16)
