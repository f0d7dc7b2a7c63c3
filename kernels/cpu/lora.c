/* Grouped LoRA for CPUs: out[row] += scale_g * B_g (A_g x[row]) for the rows of each adapter group.

   The torch twin pays two GEMM calls per group (~10 us each for a 1-row group, mostly dispatch);
   here one call walks every group, on the OpenMP pool torch already loaded (same libgomp), and
   reads each factor once per row, straight from the pool. A (r, d_in) and B (d_out, r) are
   row-major at their pool offsets; both inner loops are contiguous dot products, vectorised by the
   compiler (reassociation allowed, NaN semantics kept). */
#include <stdint.h>

#include "bf16.h"

#define MAX_IN 65536 /* x rows on the stack: at most 256 KiB */
#define ROWS 8       /* rows of a group that share each read of A and B, when 8 x rows fit the 256 KiB */
#define MAX_RANK 256

/* rows (n,): token row of each grouped row; table (G, 3): group g owns rows[start:end] and has rank r;
   slots (G,): its slot, whose A and B start at pool offsets a_off[slot * off_stride], b_off[...] (< 0: none;
   the offsets are one (layer, module)'s column of the step's (slots, layers, modules) table, read in place).
   Groups with more than max_rows rows are skipped: a GEMM per group (the torch twin) serves them better.
   row_w (T,) or NULL: each row's delta weight; a row of weight 0 is skipped (per-token Arrow's entries of
   unchosen candidates), so only the chosen candidates' factors are read. */
#define LORA_APPLY(NAME, T, LOAD, STORE_ADD)                                                        \
    int NAME(const T *x, int64_t ldx, T *out, int64_t ldo, const T *pool, int64_t d_in,             \
             int64_t d_out, int64_t n_groups, const int64_t *rows, const int64_t *table,           \
             const float *scales, const int64_t *slots, const int64_t *a_off, const int64_t *b_off,\
             int64_t off_stride, int64_t max_rows,                                                  \
             int64_t num_threads, const float *row_w) {                                            \
        if (d_in > MAX_IN) return -1;                                                              \
        for (int64_t g = 0; g < n_groups; g++)                                                     \
            if (table[3 * g + 2] > MAX_RANK) return -2;                                            \
        /* a row belongs to one group, so groups write disjoint rows of out */                     \
        _Pragma("omp parallel for schedule(dynamic, 1) num_threads(num_threads) if (n_groups > 1)") \
        for (int64_t g = 0; g < n_groups; g++) {                                                   \
            const int64_t start = table[3 * g], end = table[3 * g + 1], r = table[3 * g + 2];      \
            const int64_t ao = a_off[slots[g] * off_stride], bo = b_off[slots[g] * off_stride];    \
            if (ao < 0 || bo < 0 || end - start > max_rows) continue;                              \
            const T *A = pool + ao, *B = pool + bo;                                                \
            /* ROWS rows at a time share every row of A and B read (prefill chunks: many rows per group) */ \
            const int64_t rt = d_in * ROWS <= MAX_IN ? ROWS : 1;                                   \
            for (int64_t i0 = start; i0 < end; i0 += rt) {                                          \
                float xf[rt][d_in], y[ROWS][MAX_RANK], w[ROWS];                                    \
                int64_t at[ROWS];                                                                  \
                int n = 0;                                                                         \
                for (int64_t i = i0; i < end && i < i0 + rt; i++) {                                \
                    w[n] = row_w ? row_w[rows[i]] * scales[g] : scales[g];                         \
                    if (w[n] == 0.f) continue;                                                     \
                    const T *xr = x + rows[i] * ldx;                                               \
                    for (int64_t k = 0; k < d_in; k++) xf[n][k] = LOAD(xr[k]);                     \
                    at[n++] = rows[i];                                                             \
                }                                                                                  \
                for (int64_t j = 0; j < r; j++) {                                                  \
                    const T *a = A + j * d_in;                                                     \
                    for (int q = 0; q < n; q++) {                                                  \
                        float s = 0.f;                                                             \
                        for (int64_t k = 0; k < d_in; k++) s += LOAD(a[k]) * xf[q][k];             \
                        y[q][j] = s * w[q];                                                        \
                    }                                                                              \
                }                                                                                  \
                for (int64_t o = 0; o < d_out; o++) {                                              \
                    const T *b = B + o * r;                                                        \
                    for (int q = 0; q < n; q++) {                                                  \
                        float s = 0.f;                                                             \
                        for (int64_t j = 0; j < r; j++) s += LOAD(b[j]) * y[q][j];                 \
                        STORE_ADD(out[at[q] * ldo + o], s);                                        \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        return 0;                                                                                  \
    }

#define LOAD_F32(v) (v)
#define ADD_F32(dst, s) ((dst) += (s))
#define ADD_BF16(dst, s) ((dst) = f32_to_bf16(bf16_to_f32(dst) + (s)))

LORA_APPLY(lora_apply_f32, float, LOAD_F32, ADD_F32)
LORA_APPLY(lora_apply_bf16, uint16_t, bf16_to_f32, ADD_BF16)
