/* A matrix product that reads a weight's kept rows where they lie (gatedssl's real-skipping pass, small maps).

   A gated block keeps a different set of channels for every input. PyTorch must first copy the kept rows of a
   weight (index_select) and then multiply, reading those bytes from memory twice and writing them once; at batch 1
   on small maps that copy costs as much as the product. This kernel reads each kept row once.

   Compiled at first use by gather_gemm.py (cc -O3 -march=native); fp32, one thread. The vector type is GCC's and
   Clang's generic 64-byte vector: AVX-512 where the CPU has it, pairs of AVX2 or quads of NEON registers elsewhere.
*/
#include <stdint.h>

typedef float vec __attribute__((vector_size(64), aligned(4)));
#define LOAD(p) (*(const vec *)(p))
#define STORE(p, v) (*(vec *)(p) = (v))
#define LANES 16

static inline float sum_lanes(vec v) {
  float s = 0.f;
  for (int i = 0; i < LANES; i++) s += v[i];
  return s;
}

/* out[p, m] = bias[rows[m]] + sum_k a[p, k] * w[rows[m], k]: a convolution whose kept OUTPUT channels are rows of
   its weight (conv1 of a block). Tiles of 6 positions x 4 kept rows, each a dot product along k. */
void gather_dots(const float *a, int64_t lda, const float *w, int64_t ldw, const int64_t *rows, int64_t kept,
                 const float *bias, float *out, int64_t ldo, int64_t positions, int64_t depth) {
  enum { TP = 6, TM = 4 }; /* 24 accumulators: the most that leave registers for 4 rows of w and one of a (tuned here) */
  const int64_t whole = depth - depth % LANES;
  for (int64_t m0 = 0; m0 < kept; m0 += TM) {
    const int64_t tm = kept - m0 < TM ? kept - m0 : TM;
    const float *wr[TM];
    for (int q = 0; q < TM; q++) wr[q] = w + rows[m0 + (q < tm ? q : 0)] * ldw; /* a short tile repeats its first row */
    for (int64_t p0 = 0; p0 < positions; p0 += TP) {
      const int64_t tp = positions - p0 < TP ? positions - p0 : TP;
      const float *ar[TP];
      for (int r = 0; r < TP; r++) ar[r] = a + (p0 + (r < tp ? r : 0)) * lda;
      vec acc[TP][TM];
      for (int r = 0; r < TP; r++)
        for (int q = 0; q < TM; q++) acc[r][q] = (vec){0};
      for (int64_t k = 0; k < whole; k += LANES) {
        const vec w0 = LOAD(wr[0] + k), w1 = LOAD(wr[1] + k), w2 = LOAD(wr[2] + k), w3 = LOAD(wr[3] + k);
        for (int r = 0; r < TP; r++) {
          const vec x = LOAD(ar[r] + k);
          acc[r][0] += x * w0;
          acc[r][1] += x * w1;
          acc[r][2] += x * w2;
          acc[r][3] += x * w3;
        }
      }
      for (int r = 0; r < tp; r++)
        for (int q = 0; q < tm; q++) {
          float s = sum_lanes(acc[r][q]) + (bias ? bias[rows[m0 + q]] : 0.f);
          for (int64_t k = whole; k < depth; k++) s += ar[r][k] * wr[q][k];
          out[(p0 + r) * ldo + m0 + q] = s;
        }
    }
  }
}
