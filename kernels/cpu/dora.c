/* DoRA rescale for CPUs: out[t][o] *= pool[scale_off[slot(t)] + o] for every row whose slot has a scale.

   One call per wrapped projection; the twin's index_select/mul per group costs more in dispatch than
   the multiply itself on decode steps. One thread: T * out multiplies are a sliver of the step's
   matmuls, not worth waking a thread team for. */
#include <stdint.h>

#include "bf16.h"

/* row_slots (T,) int32, -1 = base-only; offs: slot s's scale offset at offs[s * offs_stride], < 0 = none */
#define DORA_RESCALE(NAME, T, LOAD, STORE)                                                          \
    int NAME(T *out, int64_t ldo, const T *pool, int64_t d_out, int64_t n_rows,                     \
             const int32_t *row_slots, const int64_t *offs, int64_t offs_stride) {      \
        for (int64_t t = 0; t < n_rows; t++) {                                                      \
            const int32_t s = row_slots[t];                                                         \
            if (s < 0) continue;                                                                    \
            const int64_t off = offs[(int64_t)s * offs_stride];                                     \
            if (off < 0) continue;                                                                  \
            T *row = out + t * ldo;                                                                 \
            const T *scale = pool + off;                                                            \
            for (int64_t o = 0; o < d_out; o++) row[o] = STORE(LOAD(row[o]) * LOAD(scale[o]));      \
        }                                                                                           \
        return 0;                                                                                   \
    }

#define ID(v) (v)

DORA_RESCALE(dora_rescale_f32, float, ID, ID)
DORA_RESCALE(dora_rescale_bf16, uint16_t, bf16_to_f32, f32_to_bf16)
