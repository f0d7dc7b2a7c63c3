/* Per-token Arrow's mixture weights on CPUs, one call per projection: for each routed row, scores
   |x . v_c| over its candidates (v_c read in place from the pool; c competes only where its prototype
   offset is >= 0), top_k of them, softmax(top / temperature); writes each (row, candidate) entry's
   weight, 0 for the unchosen. The torch twin (kernels/torch/arrow.py arrow_weights) takes ~15 small
   torch calls per projection for what is a few thousand multiply-adds per row. */
#include <math.h>
#include <stdint.h>

#include "bf16.h"

#define MAX_CANDIDATES 64

#define ARROW_WEIGHTS(NAME, T, LOAD)                                                                 \
    int NAME(const T *x, int64_t ldx, const T *pool, int64_t d_in, const int64_t *proto_off,        \
             int64_t R, int64_t C, const int64_t *rows, const int64_t *cand_slots,                  \
             const int64_t *cand_entries, const int64_t *top_k, const float *inv_temp, float *w) { \
        if (C > MAX_CANDIDATES) return -1;                                                          \
        for (int64_t r = 0; r < R; r++) {                                                           \
            const T *xr = x + rows[r] * ldx;                                                        \
            float s[MAX_CANDIDATES];                                                                \
            int chosen[MAX_CANDIDATES];                                                             \
            for (int64_t c = 0; c < C; c++) {                                                       \
                const int64_t slot = cand_slots[r * C + c];                                         \
                const int64_t off = slot >= 0 ? proto_off[slot] : -1;                               \
                chosen[c] = 0;                                                                      \
                s[c] = -INFINITY;                                                                   \
                if (off < 0) continue;                                                              \
                const T *v = pool + off;                                                            \
                float acc = 0.f;                                                                    \
                for (int64_t k = 0; k < d_in; k++) acc += LOAD(xr[k]) * LOAD(v[k]);                 \
                s[c] = fabsf(acc);                                                                  \
            }                                                                                       \
            float top = -INFINITY;                                                                  \
            for (int64_t j = 0; j < top_k[r]; j++) { /* first of the largest, as torch.topk ties */ \
                int64_t best = -1;                                                                  \
                for (int64_t c = 0; c < C; c++)                                                     \
                    if (!chosen[c] && s[c] > -INFINITY && (best < 0 || s[c] > s[best])) best = c;   \
                if (best < 0) break;                                                                \
                chosen[best] = 1;                                                                   \
                if (j == 0) top = s[best];                                                          \
            }                                                                                       \
            float sum = 0.f, e[MAX_CANDIDATES];                                                     \
            for (int64_t c = 0; c < C; c++) {                                                       \
                e[c] = chosen[c] ? expf((s[c] - top) * inv_temp[r]) : 0.f;                          \
                sum += e[c];                                                                        \
            }                                                                                       \
            for (int64_t c = 0; c < C; c++) {                                                       \
                const int64_t entry = cand_entries[r * C + c];                                      \
                if (entry >= 0) w[entry] = sum > 0.f ? e[c] / sum : 0.f;                            \
            }                                                                                       \
        }                                                                                           \
        return 0;                                                                                   \
    }

#define LOAD_F32(v) (v)

ARROW_WEIGHTS(arrow_weights_f32, float, LOAD_F32)
ARROW_WEIGHTS(arrow_weights_bf16, uint16_t, bf16_to_f32)
