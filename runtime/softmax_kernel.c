/* The softmax decode's inner loop in one pass (runtime/outputs.py loads it with ctypes; without
 * it, the same sums run in NumPy and OpenCV): for each of n positions, the exp-table values of
 * its c codes summed (the normalizer), and each positive class's value over it.
 *
 * codes: n x c uint8 (int8 codes by their bit pattern), row-major; table: 256 float32,
 * exp(scale * (code - largest code)); pos: k class indices; probs: n float32, the positive
 * set's sum (at most 1); stack: n x k float32 or NULL. Plain C, no Python API: nothing to hold,
 * so ctypes releases the GIL and the caller's threads share the positions.
 */
#include <stddef.h>
#include <stdint.h>

/* Indices are size_t: Python builds with -fwrapv, under which 32-bit index arithmetic must wrap
 * and cannot fold into addressing (twice as slow here). */
void softmax_positive(const uint8_t *codes, int64_t n, int32_t c, const float *table,
                      const int32_t *pos, int32_t k, float *probs, float *stack) {
    const size_t nc = (size_t)c, nk = (size_t)k;
    for (size_t i = 0; i < (size_t)n; i++) {
        const uint8_t *q = codes + i * nc;
        /* four partial sums: four lookups in flight instead of one chain of adds */
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        size_t j = 0;
        for (; j + 4 <= nc; j += 4) {
            s0 += table[q[j]];
            s1 += table[q[j + 1]];
            s2 += table[q[j + 2]];
            s3 += table[q[j + 3]];
        }
        for (; j < nc; j++) s0 += table[q[j]];
        const float inv = 1.0f / ((s0 + s1) + (s2 + s3));
        float p = 0.0f;
        for (size_t m = 0; m < nk; m++) {
            const float v = table[q[pos[m]]] * inv;
            if (stack) stack[i * nk + m] = v;
            p += v;
        }
        probs[i] = p < 1.0f ? p : 1.0f; /* float32 rounding of a sum of many classes */
    }
}
