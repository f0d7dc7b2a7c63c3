/* Every decoder layer of a step in one call: the same C kernels the model's Python path calls
   (quant_matmul.c, elementwise.c, paged_attention.c, lora.c, arrow.c, dora.c), in the same order on the same buffers, driven
   from here instead of ~15 Python calls a layer. At one decode row those calls cost more than the
   arithmetic. The kernels live in their own libraries, built with their own flags, so they come in as
   function pointers and compute exactly what they compute when Python calls them. */
#include <stdint.h>
#include <string.h>

typedef int (*matmul_fn)(const float *, int64_t, const uint8_t *, int64_t, float *, int64_t, int64_t, int64_t,
                         int64_t, int64_t, int64_t, int64_t, int64_t);
typedef void (*norm_fn)(float *, int64_t, const float *, int64_t, const float *, float *, int64_t, int64_t,
                        int64_t, float, int64_t);
typedef void (*rotary_fn)(float *, int64_t, int64_t, int64_t, float *, int64_t, int64_t, int64_t, const float *,
                          const float *, int64_t, int64_t, int64_t, int64_t);
typedef int (*store_fn)(const float *, int64_t, const float *, int64_t, float *, float *, int64_t, int64_t, int64_t,
                        int64_t, const int64_t *, int64_t, int64_t);
typedef int (*attend_fn)(const float *, const float *, const float *, int64_t, const int32_t *, int64_t,
                         const int32_t *, float *, int64_t, int64_t, int64_t, int64_t, int64_t, float, int64_t);
typedef int (*prefill_fn)(const float *, const float *, const float *, int64_t, int64_t, const int32_t *, int64_t,
                          int64_t, const int32_t *, const int32_t *, float *, int64_t, int64_t, int64_t, int64_t,
                          int64_t, int64_t, float, int64_t);
typedef int (*lora_fn)(const float *, int64_t, float *, int64_t, const float *, int64_t, int64_t, int64_t,
                       const int64_t *, const int64_t *, const float *, const int64_t *, const int64_t *,
                       const int64_t *, int64_t, int64_t, int64_t, const float *);
typedef int (*arrow_fn)(const float *, int64_t, float *, int64_t, const float *, int64_t, int64_t, const int64_t *,
                        const int64_t *, const int64_t *, int64_t, const int32_t *, const float *, int64_t, int64_t,
                        const int64_t *, const int64_t *, const float *, const int64_t *, const float *, int64_t);
typedef int (*dora_fn)(float *, int64_t, const float *, int64_t, int64_t, const int32_t *, const int64_t *, int64_t);
typedef void (*silu_mul_fn)(const float *, int64_t, const float *, int64_t, float *, int64_t, int64_t, int64_t,
                            int64_t);

struct kernels {
    matmul_fn matmul;
    norm_fn norm;
    rotary_fn rotary;
    store_fn store;
    attend_fn attend;
    prefill_fn prefill;
    lora_fn lora;
    silu_mul_fn silu_mul;
    arrow_fn arrow;
    dora_fn dora;
};

enum { QKV, O, GATE_UP, DOWN, N_MATS };
enum { N_MODULES = 7 }; /* q, k, v, o, gate, up, down: server/adapters/types.py MODULES */

struct layer { /* fixed for the model */
    const uint8_t *w[N_MATS];
    int64_t ws[N_MATS], type[N_MATS];
    const float *norm_in, *norm_post;
    int64_t lora_wrapped; /* bit m: module m is wrapped for LoRA */
};

struct cache { /* fixed for an engine's KV cache: one layer's pages */
    float *k, *v;
};

struct step {
    int64_t T, D, H, kvh, hd, inter, num_threads, gemv_rows; /* gemv_rows: quant_matmul.py GEMV_MAX_ROWS */
    float eps, scale;
    float *x;                 /* (T, D) residual stream, updated in place */
    const float *cos, *sin;   /* (T, hd) */
    const int64_t *slots;     /* (T,) KV slot of each token */
    /* the first P tokens are S prefill chunks (paged_prefill's arguments), the other T - P decode rows */
    int64_t P, S, p_table_stride, p_max_blocks;
    const int32_t *p_tables, *p_cu, *p_ctx;
    const int32_t *tables;    /* (T - P, table_stride) */
    const int32_t *ctx;       /* (T - P,) */
    int64_t table_stride, page_stride, slot_stride, bs, num_pages;
    float *h, *qkv, *q, *attn, *o, *gu, *act, *down; /* scratch */
    /* LoRA rows (n_groups 0: none), as lora.c takes them; offsets (slots, layers, N_MODULES). A mixture's
       groups share token rows (rows are its entries' token rows), so lora.c then runs on lora_threads = 1. */
    int64_t n_groups, n_layers, lora_threads;
    const int64_t *rows, *table, *group_slots, *a_off, *b_off;
    const float *scales, *pool;
    const int64_t *targeted; /* (n_layers,) bit m: some slot targets module m there (LoRAStep.targeted) */
    /* per-token Arrow rows (ar_R 0: none), as arrow.c takes them; proto_off (slots, layers, N_MODULES) */
    int64_t ar_R, ar_C;
    const int64_t *proto_off, *ar_rows, *ar_cand_slots, *ar_top_k;
    const int32_t *ar_ranks;
    const float *ar_scalings, *ar_levels, *ar_inv_temp;
    /* DoRA rows (scale_off NULL: none): dora.c's rescale; scale_off (slots, layers, N_MODULES) */
    const int32_t *row_slots; /* (T,) */
    const int64_t *scale_off;
};

/* LoRALinear.add_delta's order at one wrapped projection: lora.c, then arrow.c, then dora.c's rescale
   (the plan drives bias-free projections only, so there is no bias to take out first) */
static int lora(const struct kernels *k, const struct step *s, int64_t layer, int module, const float *x,
                int64_t ldx, float *out, int64_t ldo, int64_t d_in, int64_t d_out) {
    const int64_t at = layer * N_MODULES + module, stride = s->n_layers * N_MODULES;
    int st = k->lora(x, ldx, out, ldo, s->pool, d_in, d_out, s->n_groups, s->rows, s->table, s->scales,
                     s->group_slots, s->a_off + at, s->b_off + at, stride, INT64_MAX, s->lora_threads, NULL);
    if (st) return st;
    if (s->ar_R && (st = k->arrow(x, ldx, out, ldo, s->pool, d_in, d_out, s->proto_off + at, s->a_off + at,
                                  s->b_off + at, stride, s->ar_ranks, s->ar_scalings, s->ar_R, s->ar_C, s->ar_rows,
                                  s->ar_cand_slots, s->ar_levels, s->ar_top_k, s->ar_inv_temp, s->num_threads)))
        return -100 + st;
    if (s->scale_off && (st = k->dora(out, ldo, s->pool, d_out, s->T, s->row_slots, s->scale_off + at, stride)))
        return -200 + st;
    return 0;
}

/* 0, or the failing kernel's status (matmul -1..-4 as quant_matmul.c, -10 + store's, -20 + decode attention's,
   -30 + lora's, -130 + arrow's, -230 + dora's, -40 + prefill attention's), with the layer in *failed_layer */
int run_layers(const struct kernels *k, const struct layer *layers, const struct cache *caches, int64_t n_layers,
                  const struct step *s, int64_t *failed_layer) {
    const int64_t T = s->T, D = s->D, nq = s->H * s->hd, nkv = s->kvh * s->hd, nqkv = nq + 2 * nkv, I = s->inter;
    const int64_t width[N_MATS] = {nqkv, D, 2 * I, D}, depth[N_MATS] = {D, nq, D, I};
    for (int64_t l = 0; l < n_layers; l++) {
        const struct layer *L = layers + l;
        const int lw = s->targeted ? (int)(L->lora_wrapped & s->targeted[l]) : 0;
        int st = 0;
        *failed_layer = l;
#define MATMUL(M, X, OUT) k->matmul(X, depth[M], L->w[M], L->ws[M], OUT, width[M], T, width[M], depth[M], L->type[M], -1, s->gemv_rows, s->num_threads)
        k->norm(s->x, D, NULL, 0, L->norm_in, s->h, D, T, D, s->eps, s->num_threads);
        if ((st = MATMUL(QKV, s->h, s->qkv))) return st;
        const int64_t part_col[3] = {0, nq, nq + nkv}, part_width[3] = {nq, nkv, nkv};
        for (int m = 0; m < 3; m++)
            if ((lw >> m & 1) && (st = lora(k, s, l, m, s->h, D, s->qkv + part_col[m], nqkv, D, part_width[m])))
                return -30 + st;
        float *kk = s->qkv + nq, *vv = s->qkv + nq + nkv;
        k->rotary(s->qkv, nqkv, s->hd, s->H, kk, nqkv, s->hd, s->kvh, s->cos, s->sin, s->hd, T, s->hd, s->num_threads);
        if ((st = k->store(kk, nqkv, vv, nqkv, caches[l].k, caches[l].v, s->page_stride, s->slot_stride, s->bs,
                           s->num_pages, s->slots, T, nkv)))
            return -10 + st;
        for (int64_t t = 0; t < T; t++) memcpy(s->q + t * nq, s->qkv + t * nqkv, sizeof(float) * (size_t)nq);
        if (s->P && (st = k->prefill(s->q, caches[l].k, caches[l].v, s->page_stride, s->num_pages, s->p_tables,
                                     s->p_table_stride, s->p_max_blocks, s->p_cu, s->p_ctx, s->attn, s->P, s->S, s->H,
                                     s->kvh, s->hd, s->bs, s->scale, s->num_threads)))
            return -40 + st;
        if (T > s->P && (st = k->attend(s->q + s->P * nq, caches[l].k, caches[l].v, s->page_stride, s->tables,
                                        s->table_stride, s->ctx, s->attn + s->P * nq, T - s->P, s->H, s->kvh, s->hd,
                                        s->bs, s->scale, s->num_threads)))
            return -20 + st;
        if ((st = MATMUL(O, s->attn, s->o))) return st;
        if ((lw >> 3 & 1) && (st = lora(k, s, l, 3, s->attn, nq, s->o, D, nq, D))) return -30 + st;
        k->norm(s->x, D, s->o, D, L->norm_post, s->h, D, T, D, s->eps, s->num_threads);
        if ((st = MATMUL(GATE_UP, s->h, s->gu))) return st;
        for (int m = 4; m < 6; m++)
            if ((lw >> m & 1) && (st = lora(k, s, l, m, s->h, D, s->gu + (m - 4) * I, 2 * I, D, I))) return -30 + st;
        k->silu_mul(s->gu, 2 * I, s->gu + I, 2 * I, s->act, I, T, I, s->num_threads);
        if ((st = MATMUL(DOWN, s->act, s->down))) return st;
        if ((lw >> 6 & 1) && (st = lora(k, s, l, 6, s->act, I, s->down, D, I, D))) return -30 + st;
        for (int64_t i = 0; i < T * D; i++) s->x[i] += s->down[i];
#undef MATMUL
    }
    return 0;
}
